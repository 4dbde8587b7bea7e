"""Triton Python-backend entry point of the GPU profile's `validate_image` model; the code lives in predilect."""

from predilect.serving.backends.validate import TritonPythonModel  # noqa: F401
