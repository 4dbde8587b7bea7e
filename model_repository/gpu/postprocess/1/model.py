"""Triton Python-backend entry point of the GPU profile's `postprocess` model; the code lives in predilect."""

from predilect.serving.backends.fov_postprocess import TritonPythonModel  # noqa: F401
