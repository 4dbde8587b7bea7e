"""Errors of the screening client; each says what to do about it.

Errors caused by a gRPC call are raised ``from`` the ``tritonclient`` exception that caused
it; ``attempts`` counts the calls made (retries included) before giving up.

Two kinds matter to a batch run (``predilect screen``, the gateway): a *final* failure means
the input itself is bad -- the server rejected the image, or it cannot be read or turned into
a request -- and recording it is the end of that input; every other failure (server down,
deadline, model not ready, an internal server error, a refused token, ...) is *transient*: the
input is not recorded and a later run tries it again. ``is_final`` is the one definition.

Errors about what the user gave (an input, a TLS file, a token) are also
``predilect.errors.UserError``, so the ``predilect`` commands print them as one line.
"""

from __future__ import annotations

from predilect import contract
from predilect.errors import UserError


class PredilectClientError(Exception):
    """Base of every error raised by ``predilect.client``."""

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


class ClientConfigError(PredilectClientError, UserError, ValueError):
    """A client option that cannot work: an unreadable TLS file, an empty token, a bad value."""


class ServerUnavailableError(PredilectClientError):
    """No Triton server answers at the address (after the retries the policy allows)."""


class ServerNotFoundError(ServerUnavailableError):
    """The server's host name does not resolve (DNS): the address is wrong, or the name service is down."""


class ServerBusyError(ServerUnavailableError):
    """The server is at capacity and refused the request at once (its queue is full, or the request
    waited past the queue timeout). Retried within the budget; a batch run leaves the input for later."""


class AuthenticationError(PredilectClientError, UserError):
    """The server refused the call's credentials (token missing or wrong). Never retried."""


class ModelNotReadyError(PredilectClientError):
    """The server answers, but the screening model is not loaded or not ready."""


class IncompatibleModelError(PredilectClientError):
    """The served model does not describe itself as a Predilect screening model."""


class ImageRejectedError(PredilectClientError, UserError, ValueError):
    """The server rejected the payload. ``kind`` is the server's error kind (``contract.ERROR_KINDS``:
    ``ERROR_IMAGE_REJECTED``, ``ERROR_REQUEST_TOO_LARGE``), ``cause`` says why in words (not an image,
    truncated, ...). Never retried."""

    def __init__(
        self, message: str, *, cause: str, kind: str = contract.ERROR_IMAGE_REJECTED, attempts: int = 1
    ) -> None:
        super().__init__(message, attempts=attempts)
        self.cause = cause
        self.kind = kind


class DeadlineExceededError(PredilectClientError, TimeoutError):
    """No answer within the deadline."""


class InputError(PredilectClientError, UserError, ValueError):
    """A local input cannot be turned into a request (unreadable file, wrong array shape, ...)."""


class UnsupportedDicomError(InputError):
    """A DICOM instance the client does not screen (SOP class, transfer syntax, pixel format)."""


class DicomSupportMissingError(PredilectClientError, UserError, ImportError):
    """A DICOM input was given but the optional ``[dicom]`` extra is not installed."""


class ReportSupportMissingError(PredilectClientError, UserError, ImportError):
    """Heatmap overlays or an HTML report were asked for but the optional ``[report]`` extra is not installed."""


FINAL_ERRORS: tuple[type[PredilectClientError], ...] = (ImageRejectedError, InputError)
"""The failures that are the input's own: retrying it cannot help."""


def is_final(error: BaseException) -> bool:
    """True when ``error`` says the input itself is bad (record it and move on); False when a
    later run may succeed (server-side or configuration failures: leave the input unrecorded)."""
    return isinstance(error, FINAL_ERRORS)
