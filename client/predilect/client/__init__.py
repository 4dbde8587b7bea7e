"""predilect.client: the thin gRPC client of the screening service.

Depends only on tritonclient[grpc], numpy, pydantic and the standard library (plus the
stdlib-only ``predilect.catalog``); DICOM support (pydicom, highdicom, pynetdicom) comes
from the optional ``[dicom]`` extra and is imported only when DICOM is used. Labels,
thresholds and the model version come from the server ("model discovery")::

    from predilect.client import ScreeningClient

    with ScreeningClient(DEFAULT_URL, auth_token=token) as client:
        result = client.screen("fundus.jpg")
        for item in client.screen_many(paths, max_in_flight=16):
            ...

``ScreeningClient`` (blocking; also under gevent) and ``AsyncScreeningClient`` (asyncio) are two
faces of one core (``predilect.client.core``) and behave alike. ``JournalRecord`` is the record
``predilect screen`` and the DICOM gateway write; ``is_final`` tells a bad input from a failure
a later run may not meet.
"""

from __future__ import annotations

from predilect.client.aio import AsyncScreeningClient
from predilect.client.errors import (
    AuthenticationError,
    ClientConfigError,
    DeadlineExceededError,
    DicomSupportMissingError,
    ImageRejectedError,
    IncompatibleModelError,
    InputError,
    ModelNotReadyError,
    PredilectClientError,
    ServerBusyError,
    ServerNotFoundError,
    ServerUnavailableError,
    UnsupportedDicomError,
    is_final,
)
from predilect.client.protocol import ServedModelInfo, TlsConfig
from predilect.client.records import JournalRecord
from predilect.client.results import ScreeningItem, ScreeningResult
from predilect.client.retry import NO_RETRIES, RetryBudget, RetryPolicy
from predilect.client.screening import ScreeningClient
from predilect.client.settings import DEFAULT_MODEL, DEFAULT_TIMEOUT_S, DEFAULT_URL
from predilect.png import encode_png

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_URL",
    "NO_RETRIES",
    "AsyncScreeningClient",
    "AuthenticationError",
    "ClientConfigError",
    "DeadlineExceededError",
    "DicomSupportMissingError",
    "ImageRejectedError",
    "IncompatibleModelError",
    "InputError",
    "JournalRecord",
    "ModelNotReadyError",
    "PredilectClientError",
    "RetryBudget",
    "RetryPolicy",
    "ScreeningClient",
    "ScreeningItem",
    "ScreeningResult",
    "ServedModelInfo",
    "ServerBusyError",
    "ServerNotFoundError",
    "ServerUnavailableError",
    "TlsConfig",
    "UnsupportedDicomError",
    "encode_png",
    "is_final",
]
