"""predilect.client: the thin gRPC client of the screening service.

Depends only on tritonclient[grpc], numpy, pydantic and the standard library (plus the
stdlib-only ``predilect.catalog``); labels, thresholds and the model version come from the
server ("model discovery"), nothing is hard-coded::

    from predilect.client import ScreeningClient

    with ScreeningClient("localhost:8001") as client:
        result = client.screen("fundus.jpg")
        print(result.positive, result.to_json())
"""
from __future__ import annotations

from predilect.client.errors import (
    DeadlineExceededError,
    ImageRejectedError,
    IncompatibleModelError,
    ModelNotReadyError,
    PredilectClientError,
    ServerUnavailableError,
)
from predilect.client.results import ScreeningResult
from predilect.client.screening import ScreeningClient, ServedModelInfo

__all__ = [
    "DeadlineExceededError",
    "ImageRejectedError",
    "IncompatibleModelError",
    "ModelNotReadyError",
    "PredilectClientError",
    "ScreeningClient",
    "ScreeningResult",
    "ServedModelInfo",
    "ServerUnavailableError",
]
