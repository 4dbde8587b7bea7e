"""``ScreeningClient``: screens fundus photographs on the Triton ``fundus_screen`` ensemble.

At connect the client reads the ensemble's config parameters (catalog with ids, names and
thresholds; model name and version): this is the only source of labels and thresholds.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Union

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from predilect.catalog import Catalog
from predilect.client.errors import (
    REJECTED_PREFIX,
    DeadlineExceededError,
    ImageRejectedError,
    IncompatibleModelError,
    ModelNotReadyError,
    PredilectClientError,
    ServerUnavailableError,
)
from predilect.client.results import ScreeningResult

ImageInput = Union[bytes, bytearray, memoryview, str, os.PathLike]

_IMAGE = "IMAGE"
_PROBABILITIES = "PROBABILITIES"
_REQUIRED_PARAMETERS = ("catalog", "preprocess", "model_name", "model_version")


@dataclass(frozen=True)
class ServedModelInfo:
    """What the server says about the model it screens with."""

    catalog: Catalog
    model_name: str
    model_version: str
    preprocess: dict[str, Any]


def _status(error: InferenceServerException) -> str:
    return str(error.status() or "").rsplit(".", 1)[-1]  # "StatusCode.UNAVAILABLE" -> "UNAVAILABLE"


def _translate(error: InferenceServerException, *, url: str, model_name: str, timeout_s: float | None
               ) -> PredilectClientError:
    """The client error for a tritonclient error, with a message that says what to do."""
    status, message = _status(error), str(error.message() or error)
    if REJECTED_PREFIX in message:
        cause = message.split(REJECTED_PREFIX, 1)[1]
        return ImageRejectedError(f"the server rejected the image: {cause}; send the bytes of a colour "
                                  "fundus photograph (JPEG or PNG)", cause=cause)
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceededError(f"no answer from {url} within {timeout_s} s; raise timeout_s or check "
                                     "the server's load")
    lowered = message.lower()
    if status == "NOT_FOUND" or "unknown model" in lowered or "not ready" in lowered or "not found" in lowered:
        return ModelNotReadyError(f"model {model_name!r} is not ready on {url}: {message}; wait for the server "
                                  "to finish loading it or check the model name")
    if status == "UNAVAILABLE":
        return ServerUnavailableError(f"no Triton server answers at {url} ({message}); start one with "
                                      "`predilect serve` or check the address")
    return PredilectClientError(f"request to {url} failed ({status or 'no status'}): {message}")


def _served_info(config: Any, *, model_name: str, url: str) -> ServedModelInfo:
    """Model discovery: the catalog and identity from the ensemble's config parameters."""
    params = {key: value.string_value for key, value in config.parameters.items()}
    missing = [key for key in _REQUIRED_PARAMETERS if not params.get(key)]
    if missing:
        raise IncompatibleModelError(f"model {model_name!r} on {url} lacks config parameters {missing}; is it a "
                                     "Predilect repository made by `predilect assemble`?")
    try:
        catalog = Catalog.from_json(params["catalog"])
        preprocess = json.loads(params["preprocess"])
    except (ValueError, KeyError, TypeError) as e:
        raise IncompatibleModelError(f"model {model_name!r} on {url} serves an unreadable catalog: {e}") from e
    outputs = {o.name: list(o.dims) for o in config.output}
    if outputs.get(_PROBABILITIES) != [len(catalog)] or _IMAGE not in {i.name for i in config.input}:
        raise IncompatibleModelError(f"model {model_name!r} on {url} does not take {_IMAGE} and return "
                                     f"{_PROBABILITIES} [{len(catalog)}]; its outputs are {outputs}")
    return ServedModelInfo(catalog=catalog, model_name=params["model_name"],
                           model_version=params["model_version"], preprocess=preprocess)


def _payload(image: ImageInput) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        data = Path(image).read_bytes()
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    else:
        raise TypeError(f"image must be bytes or a path, got {type(image).__name__}")
    return np.frombuffer(data, dtype=np.uint8)


class ScreeningClient:
    """Client of the ``fundus_screen`` ensemble over gRPC; thread-safe, a context manager.

    Args:
        url: ``host:port`` of Triton's gRPC endpoint.
        model_name: the ensemble to call.
        timeout_s: default deadline of every call, in seconds.
    """

    def __init__(self, url: str = "localhost:8001", *, model_name: str = "fundus_screen",
                 timeout_s: float = 30.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.url = url
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._client: grpcclient.InferenceServerClient | None = None
        self._served: ServedModelInfo | None = None
        self._lock = threading.Lock()

    def connect(self) -> "ScreeningClient":
        """Check the server and the model, and discover the catalog; idempotent."""
        self._connection()
        return self

    def _connection(self) -> tuple[grpcclient.InferenceServerClient, ServedModelInfo]:
        with self._lock:
            if self._client is None or self._served is None:
                client = grpcclient.InferenceServerClient(self.url)
                try:
                    served = self._discover(client)
                except BaseException:
                    client.close()
                    raise
                self._client, self._served = client, served
            return self._client, self._served

    def _discover(self, client: grpcclient.InferenceServerClient) -> ServedModelInfo:
        try:
            if not client.is_server_live(client_timeout=self.timeout_s):
                raise ServerUnavailableError(f"the Triton server at {self.url} is not live; check `predilect serve`")
            if not client.is_model_ready(self.model_name, client_timeout=self.timeout_s):
                raise ModelNotReadyError(f"model {self.model_name!r} is not ready on {self.url}; wait for the "
                                         "server to finish loading it or check the model name")
            config = client.get_model_config(self.model_name, client_timeout=self.timeout_s).config
        except InferenceServerException as e:
            raise _translate(e, url=self.url, model_name=self.model_name, timeout_s=self.timeout_s) from e
        return _served_info(config, model_name=self.model_name, url=self.url)

    @property
    def served(self) -> ServedModelInfo:
        """The discovered catalog and model identity (connects if needed)."""
        return self._connection()[1]

    @property
    def catalog(self) -> Catalog:
        return self.served.catalog

    def screen(self, image: ImageInput, *, timeout_s: float | None = None) -> ScreeningResult:
        """Screen one fundus photograph, given as encoded bytes (JPEG/PNG) or a file path.

        Raises ``ImageRejectedError`` when the server rejects the payload,
        ``DeadlineExceededError`` past the deadline (``timeout_s``, default the client's).
        """
        client, served = self._connection()
        payload = _payload(image)
        deadline = self.timeout_s if timeout_s is None else timeout_s
        request = grpcclient.InferInput(_IMAGE, [1, payload.size], "UINT8")
        request.set_data_from_numpy(payload[np.newaxis])
        start = time.perf_counter()
        try:
            response = client.infer(self.model_name, [request],
                                   outputs=[grpcclient.InferRequestedOutput(_PROBABILITIES)],
                                   client_timeout=deadline)
        except InferenceServerException as e:
            raise _translate(e, url=self.url, model_name=self.model_name, timeout_s=deadline) from e
        latency_s = time.perf_counter() - start
        probabilities = response.as_numpy(_PROBABILITIES)
        if probabilities is None or probabilities.shape != (1, len(served.catalog)):
            shape = None if probabilities is None else probabilities.shape
            raise IncompatibleModelError(f"{self.model_name!r} on {self.url} returned {_PROBABILITIES} of shape "
                                         f"{shape}, expected (1, {len(served.catalog)})")
        return ScreeningResult.from_probabilities(
            probabilities[0].tolist(), served.catalog, model_name=served.model_name,
            model_version=served.model_version, latency_s=latency_s)

    def close(self) -> None:
        """Close the gRPC channel; a later call reconnects."""
        with self._lock:
            client, self._client, self._served = self._client, None, None
        if client is not None:
            client.close()

    def __enter__(self) -> "ScreeningClient":
        return self.connect()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
