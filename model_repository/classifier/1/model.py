"""Triton Python-backend entry point of the `classifier` model; the code lives in the predilect package."""

from predilect.serving.backends.classifier import TritonPythonModel  # noqa: F401
