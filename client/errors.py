"""Errors of the screening client; each says what to do about it.

Errors caused by a gRPC call are raised ``from`` the ``tritonclient`` exception that caused
it; ``attempts`` counts the calls made (retries included) before giving up.
"""

from __future__ import annotations


class PredilectClientError(Exception):
    """Base of every error raised by ``predilect.client``."""

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


class ServerUnavailableError(PredilectClientError):
    """No Triton server answers at the address (after the retries the policy allows)."""


class ModelNotReadyError(PredilectClientError):
    """The server answers, but the screening model is not loaded or not ready."""


class IncompatibleModelError(PredilectClientError):
    """The served model does not describe itself as a Predilect screening model."""


class ImageRejectedError(PredilectClientError, ValueError):
    """The server rejected the payload; ``cause`` names why (not an image, truncated, ...). Never retried."""

    def __init__(self, message: str, *, cause: str, attempts: int = 1) -> None:
        super().__init__(message, attempts=attempts)
        self.cause = cause


class DeadlineExceededError(PredilectClientError, TimeoutError):
    """No answer within the deadline."""


class InputError(PredilectClientError, ValueError):
    """A local input cannot be turned into a request (unreadable file, wrong array shape, ...)."""


class UnsupportedDicomError(InputError):
    """A DICOM instance the client does not screen (SOP class, transfer syntax, pixel format)."""


class DicomSupportMissingError(PredilectClientError, ImportError):
    """A DICOM input was given but the optional ``[dicom]`` extra is not installed."""
