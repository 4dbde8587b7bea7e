"""predilect.client: the thin gRPC client of the screening service.

Depends only on tritonclient[grpc], numpy, pydantic and the standard library (plus the
stdlib-only ``predilect.catalog``); DICOM support (pydicom, highdicom, pynetdicom) comes
from the optional ``[dicom]`` extra and is imported only when DICOM is used. Labels,
thresholds and the model version come from the server ("model discovery")::

    from predilect.client import ScreeningClient

    with ScreeningClient("localhost:8001", auth_token=token) as client:
        result = client.screen("fundus.jpg")
        for item in client.screen_many(paths, max_in_flight=16):
            ...
"""

from __future__ import annotations

from predilect.client.aio import AsyncScreeningClient
from predilect.client.errors import (
    DeadlineExceededError,
    DicomSupportMissingError,
    ImageRejectedError,
    IncompatibleModelError,
    InputError,
    ModelNotReadyError,
    PredilectClientError,
    ServerUnavailableError,
    UnsupportedDicomError,
)
from predilect.client.png import encode_png
from predilect.client.protocol import ServedModelInfo, TlsConfig
from predilect.client.results import ScreeningItem, ScreeningResult
from predilect.client.retry import NO_RETRIES, RetryBudget, RetryPolicy
from predilect.client.screening import ScreeningClient
from predilect.client.sr import structured_report

__all__ = [
    "NO_RETRIES",
    "AsyncScreeningClient",
    "DeadlineExceededError",
    "DicomSupportMissingError",
    "ImageRejectedError",
    "IncompatibleModelError",
    "InputError",
    "ModelNotReadyError",
    "PredilectClientError",
    "RetryBudget",
    "RetryPolicy",
    "ScreeningClient",
    "ScreeningItem",
    "ScreeningResult",
    "ServedModelInfo",
    "ServerUnavailableError",
    "TlsConfig",
    "UnsupportedDicomError",
    "encode_png",
    "structured_report",
]
