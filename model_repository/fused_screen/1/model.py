"""Triton Python-backend entry point of the `fused_screen` model; the code lives in the predilect package."""

from predilect.serving.backends.fused import TritonPythonModel  # noqa: F401
