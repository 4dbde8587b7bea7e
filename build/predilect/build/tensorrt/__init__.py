"""TensorRT path: the fused predilection-attention kernel as a TensorRT AOT plugin.

``onnx_rewrite`` folds the exported attention head into one ``predilect.PredilectionAttention``
node, ``plugin`` compiles the Triton kernel for it, ``engine`` builds the engine. Only
``plugin.register_plugin`` and ``engine`` need the ``tensorrt`` package.
"""
