"""Errors of the screening client; each says what to do about it.

Every error is raised ``from`` the ``tritonclient`` exception that caused it.
"""
from __future__ import annotations

# Must equal predilect.serving.backends.REJECTED_PREFIX (a test checks it); duplicated so the
# client does not import the serving package.
REJECTED_PREFIX = "image rejected: "


class PredilectClientError(Exception):
    """Base of every error raised by ``predilect.client``."""


class ServerUnavailableError(PredilectClientError):
    """No Triton server answers at the address."""


class ModelNotReadyError(PredilectClientError):
    """The server answers, but the screening model is not loaded or not ready."""


class IncompatibleModelError(PredilectClientError):
    """The served model does not describe itself as a Predilect screening model."""


class ImageRejectedError(PredilectClientError, ValueError):
    """The server rejected the payload; ``cause`` names why (not an image, truncated, ...)."""

    def __init__(self, message: str, *, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class DeadlineExceededError(PredilectClientError, TimeoutError):
    """No answer within the deadline."""
