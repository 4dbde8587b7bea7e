"""The serving contract: every name that crosses a process, file or package boundary.

Standard library only, so every layer imports it, the thin client included. Nothing else in
the code base spells these strings (``tests/test_contract.py`` greps for them):

* the model repository: ensemble and step names, tensor names, file names;
* config parameters: what the ensemble advertises to clients and what each backend reads;
* metadata keys carried by checkpoints and exported ONNX models;
* the message prefix of a rejected image, eye codes, and the schema versions of records.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- model repository

ENSEMBLE = "fundus_screen"
"""The model clients call: image bytes in, per-disease probabilities out."""

PREPROCESS_MODEL = "preprocess"
CLASSIFIER_MODEL = "classifier"
POSTPROCESS_MODEL = "postprocess"
FUSED_MODEL = "fused_screen"
"""CPU profile, fused layout: preprocess + classifier + sigmoid in one Python-backend model."""
TRITON_VERSION = "1"
"""The one version directory of every served model."""
ONNX_FILENAME = "model.onnx"
DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT = 8000, 8001, 8002
"""Triton's own default ports; ``predilect serve`` and the client default to them."""
CONFIG_FILENAME = "config.pbtxt"

# Tensors: the ensemble's input and output, and the two inner ones between its steps.
IMAGE = "IMAGE"
"""UINT8 [1, n_bytes] per request: the encoded JPEG or PNG, nothing else."""
PIXELS = "PIXELS"
"""FP32 [batch, 3, S, S]: the preprocessed image, the exported model's input."""
LOGITS = "LOGITS"
"""FP32 [batch, C]: the exported model's output, one logit per catalog disease."""
PROBABILITIES = "PROBABILITIES"
"""FP32 [1, C] per request: sigmoid of the logits, in catalog order."""

# --------------------------------------------------------------------------- keys

# One key per fact, the same in checkpoint metadata, ONNX metadata_props and the ensemble's
# config parameters: the catalog written at training is read back under the same name by
# export, ``assemble``, the backends and the client.
KEY_FORMAT = "predilect.format"
KEY_MODEL_CFG = "predilect.model"
KEY_PREPROCESS = "predilect.preprocess"
KEY_CATALOG = "predilect.catalog"
KEY_MODEL_NAME = "predilect.model_name"
KEY_MODEL_VERSION = "predilect.model_version"
KEY_METRICS = "predilect.metrics"
CHECKPOINT_FORMAT = "predilect.checkpoint.v1"

SERVED_KEYS = (KEY_CATALOG, KEY_PREPROCESS, KEY_MODEL_NAME, KEY_MODEL_VERSION, KEY_MODEL_CFG)
"""The metadata_props every exported model carries."""
DISCOVERY_KEYS = (KEY_CATALOG, KEY_PREPROCESS, KEY_MODEL_NAME, KEY_MODEL_VERSION)
"""The ensemble parameters a client reads at connect ("model discovery"); ``assemble`` needs them."""

# Backend parameters, read by the Python-backend models at initialize.
KEY_DECODE_THREADS = "predilect.decode_threads"
KEY_ORT_THREADS = "predilect.ort_threads"
KEY_QUANTIZATION = "predilect.quantization"
"""ONNX metadata of an INT8 model: the JSON report of the accuracy gate it passed against FP32."""

# --------------------------------------------------------------------------- errors and records

REJECTED_PREFIX = "image rejected: "
"""Prefix of the error message of a request whose payload was refused (INVALID_ARGUMENT)."""

AUTH_KEY = "predilect-auth-token"
"""The key of the screening token: ``tritonserver --grpc-restricted-protocol=health,metadata,model-config,
inference:<AUTH_KEY>=<token>`` (and ``--http-restricted-api=...`` for HTTP, which checks the header
``<AUTH_KEY>`` itself). A restricted call without it fails with UNAVAILABLE "This protocol is restricted"."""
GRPC_AUTH_HEADER = "triton-grpc-protocol-" + AUTH_KEY
"""The gRPC metadata header Triton compares with the token (it prefixes gRPC keys with ``triton-grpc-protocol-``)."""
AUTH_TOKEN_ENV = "PREDILECT_AUTH_TOKEN"
"""The environment variable the command-line tools read the token from."""

RIGHT_EYE, LEFT_EYE = "R", "L"
EYES = (RIGHT_EYE, LEFT_EYE)
_EYE_ALIASES = {
    "R": RIGHT_EYE,
    "RIGHT": RIGHT_EYE,
    "OD": RIGHT_EYE,  # oculus dexter
    "L": LEFT_EYE,
    "LEFT": LEFT_EYE,
    "OS": LEFT_EYE,  # oculus sinister
}

RESULT_SCHEMA_VERSION = "1"
"""Version of the screening-result and journal-record JSON written by the client."""


def parse_eye(value: str) -> str:
    """The canonical eye code ("R" or "L") of a laterality as manifests and DICOM spell it.

    Accepts R/L, right/left and OD/OS in any case; raises ValueError naming the accepted
    spellings otherwise.
    """
    code = _EYE_ALIASES.get(value.strip().upper())
    if code is None:
        raise ValueError(f"eye must be one of R/L, right/left or OD/OS, got {value!r}")
    return code
