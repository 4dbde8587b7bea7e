"""predilect.serving: the Triton side of Predilect.

``configs`` defines the four served models (``preprocess`` -> ``classifier`` ->
``postprocess``, wired by the ``fundus_screen`` ensemble) as typed definitions rendered to
``config.pbtxt``; ``repository`` assembles a model repository from an exported ONNX model;
``backends`` holds the Python-backend models; ``server`` runs the real ``tritonserver``.
"""
