"""Triton Python-backend entry point of the `postprocess` model; the code lives in the predilect package."""

from predilect.serving.backends.postprocess import TritonPythonModel  # noqa: F401
