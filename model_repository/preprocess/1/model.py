"""Triton Python-backend entry point of the `preprocess` model; the code lives in the predilect package."""

from predilect.serving.backends.preprocess import TritonPythonModel  # noqa: F401
