"""Triton Python-backend entry point of the `validate_image` model (GPU profile); the code lives in the predilect package."""

from predilect.serving.backends.validate import TritonPythonModel  # noqa: F401
