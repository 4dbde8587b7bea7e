"""The serving contract: every name that crosses a process, file or package boundary.

Standard library only, so every layer imports it, the thin client included. Nothing else in
the code base spells these strings (``tests/test_contract.py`` greps for them):

* the model repository: ensemble and step names, tensor names, file names;
* config parameters: what the ensemble advertises to clients and what each backend reads;
* metadata keys carried by checkpoints and exported ONNX models;
* the kinds of error the server's own steps send (``error_message`` / ``parse_error_message``), eye codes, and
  the schema versions of records.
"""

from __future__ import annotations

import re

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
ATTENTION = "ATTENTION"
"""FP32 [batch, C, g, g]: the exported model's optional second output, each disease's predilection
attention over the g x g token grid of the model input (rows sum to 1 over the grid)."""
QUALITY = "QUALITY"
"""FP32 [1, 1 + len(QUALITY_REASONS)] per request: the quality score in [0, 1] (gradable when >= 0.5),
then one 0/1 flag per reason in ``QUALITY_REASONS`` order (1: that check failed)."""
QUALITY_MEASURES_TENSOR = "QUALITY_MEASURES"
"""FP32 [1, len(QUALITY_MEASURES)] per request: the gradability measures behind QUALITY, in
``QUALITY_MEASURES`` order (journals keep them; ``predilect drift`` compares them with the reference)."""
FINDINGS = "FINDINGS"
"""BOOL [1, C] per request: the server's positive findings (probability >= the disease's threshold),
all false for an ungradable image."""
REFERRAL = "REFERRAL"
"""INT32 [1, 1] per request: the decision, an index into ``DECISIONS``."""
FIELD_BOX = "FIELD_BOX"
"""FP32 [1, 4] per request: the square the model screened (the cropped field of view) in the photograph's
normalised coordinates (left, top, right, bottom; x right, y down): where HEATMAPS lie on the photograph."""
HEATMAPS = "HEATMAPS"
"""FP32 [1, C, g, g] per request, on request only: each positive finding's attention map over the model
input (the field-of-view square), zero for diseases that are not findings."""

# The GPU profile (DALI + TensorRT) adds one step before DALI and two tensors after it.
VALIDATE_MODEL = "validate_image"
"""GPU profile: the Python-backend step that rejects bad payloads per request before DALI."""
VALID_IMAGE = "VALID_IMAGE"
"""UINT8 [1, n_bytes]: the IMAGE bytes that passed ``validate_image``, unchanged."""
FOV_EXTENT = "FOV_EXTENT"
"""FP32 [batch, 2]: the square the DALI step crops, (side, side) in source pixels, measured on the host
(``predilect.preprocess.field``): the field of view's diameter, scaled to the model's field angle."""
FRAME_EXTENT = "FRAME_EXTENT"
"""FP32 [batch, 2]: width and height in pixels of the photograph the DALI step decoded (EXIF orientation
applied): with ``FOV_EXTENT``, what ``postprocess`` places ``FIELD_BOX`` from."""
QUALITY_SQUARE = "QUALITY_SQUARE"
"""UINT8 [batch, 3, Q, Q]: the field-of-view square the DALI step cropped, resized to the quality calibration's
side Q (``PreprocessCfg.quality_size``), as colour planes: what ``postprocess`` grades. Only in a repository
whose model input has another side (``quality_size != size``); otherwise PIXELS is graded."""
PLAN_FILENAME = "model.plan"
"""The serialized TensorRT engine in ``classifier/1/`` (Triton's default for ``tensorrt_plan``)."""
DALI_FILENAME = "dali.py"
"""The DALI backend's autoserialized pipeline definition in ``preprocess/1/``."""
DALI_PARAMS_FILENAME = "dali_params.json"
"""Beside ``dali.py``: the PreprocessCfg and pipeline knobs it is derived from."""
ENGINE_BUILD_FILENAME = "engine_build.json"
"""In ``classifier/`` of a GPU repository: how the container builds the engine from ``model.onnx``."""
REFERENCE_ONNX_FILENAME = "reference.onnx"
"""In ``classifier/`` of a GPU repository: the FP32 export the accuracy gate compares the engine with."""
GATE_SET_FILENAME = "gate_set.npz"
"""In ``classifier/`` of a GPU repository: held-out pixels and labels for the engine's accuracy gate."""
DECODER_GATE_SET_FILENAME = "decoder_gate_set.npz"
"""In ``preprocess/`` of a GPU repository whose served decoder is not the training one: the encoded gate images
(and labels) the decoder gate compares the two decoders on, again on the serving GPU."""
ENGINE_SIDECAR_SCHEMA = "predilect.engine.v1"
"""Schema of the JSON written beside every serialized engine."""
PROFILES = ("cpu", "gpu")
"""``predilect assemble --profile``: Python-backend CPU models, or DALI + TensorRT on the GPU."""

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
# The stage-1 (pretraining) checkpoint: the whole UOPSL model, never served.
PRETRAIN_FORMAT = "predilect.pretrain.v1"
KEY_UOPSL_CFG = "predilect.uopsl"
KEY_TOKENIZER = "predilect.tokenizer"
KEY_TRAINING = "predilect.training_run"
"""The options of the run that wrote a checkpoint (stage, ablation flags, held-out categories)."""
LOOP_STATE_FORMAT = "predilect.loop_state.v1"
"""Format of a training run's resumable state (``run_dir/state.pt``, written by ``predilect.training.loop``)."""

SERVED_KEYS = (KEY_CATALOG, KEY_PREPROCESS, KEY_MODEL_NAME, KEY_MODEL_VERSION, KEY_MODEL_CFG)
"""The metadata_props every exported model carries."""
DISCOVERY_KEYS = (KEY_CATALOG, KEY_PREPROCESS, KEY_MODEL_NAME, KEY_MODEL_VERSION)
"""The ensemble parameters a client reads at connect ("model discovery"); ``assemble`` needs them."""

KEY_HEATMAP = "predilect.heatmap"
"""Which map ``HEATMAPS`` holds (one of ``HEATMAP_KINDS``): an ensemble parameter of a repository that serves
heatmaps and whose model says which (``ModelCfg.heatmap``), so a caption can say what a reader sees."""
HEATMAP_KINDS = ("attention", "evidence")
"""``attention``: the predilection attention over the token grid (mean over a disease's sites); ``evidence``:
that attention times each token's contribution to the disease's logit, clipped at 0."""

KEY_RULES = "predilect.rules"
"""The referral rules (``predilect.referral.ReferralRules`` JSON): per-disease thresholds and referral
levels, and the gradability thresholds; config parameter of the ensemble and of the steps applying them."""
KEY_RULES_DIGEST = "predilect.rules_digest"
KEY_CATALOG_DIGEST = "predilect.catalog_digest"
RULES_KEYS = (KEY_RULES, KEY_RULES_DIGEST, KEY_CATALOG_DIGEST)
"""The ensemble parameters a client reads at connect beside ``DISCOVERY_KEYS`` (result schema 2)."""

KEY_REFERENCE = "predilect.reference"
"""The model's reference distributions (``predilect.drift.Reference`` JSON): histograms of every quality
measure and disease probability and the ungradable share on held-out images, written by ``predilect assemble
--reference-manifest``; a parameter of the ensemble (``predilect drift`` reads it) and of the steps that
export shift metrics (their histogram buckets)."""
REQUEST_CAMERA = "predilect.camera"
"""Optional request parameter (string): the camera that took the photograph (a DICOM Manufacturer and model,
or what the caller names), the ``camera`` label of the served shift metrics."""
REQUEST_FIELD_ANGLE_DEG = "predilect.field_angle_deg"
"""Optional request parameter (number, degrees): the camera's field angle, the retinal angle its field of
view's diameter spans (a DICOM instance's Horizontal Field of View (0022,000C); the device's published
field). Preprocessing scales the crop so that the model's square spans the model's own field angle
(``PreprocessCfg.field_angle_deg``): a wide-field photograph is cut to its posterior pole, a narrow one
placed on black at the scale the model was trained at. Without it, the field is taken as the model's."""

# Backend parameters, read by the Python-backend models at initialize.
KEY_DECODE_THREADS = "predilect.decode_threads"
KEY_ORT_THREADS = "predilect.ort_threads"
KEY_QUANTIZATION = "predilect.quantization"
"""ONNX metadata of an INT8 model: the JSON report of the accuracy gate it passed against FP32."""
KEY_SERVED_DECODER = "predilect.served_decoder"
"""The decoder a repository's ``preprocess`` step runs (``PreprocessCfg.decoder`` names), where it may differ from
the one the checkpoint was trained with (``KEY_PREPROCESS``): the GPU profile serves ``dali_mixed`` (nvJPEG).
A parameter of the GPU profile's ``preprocess`` model and a key of its ``dali_params.json``."""
KEY_DECODER_GATE = "predilect.decoder_gate"
"""Beside ``KEY_SERVED_DECODER``: the JSON report of the decoder gate the substitution passed (the served decoder's,
or its CPU twin's, probabilities against the training decoder's on the gate images)."""

# --------------------------------------------------------------------------- errors and records

# The kind of an error the server's own steps send, machine-readable in the one place a Triton error
# response carries anything: its message (an error response has no outputs or parameters). The message
# is ``error_message(kind, detail)``, the tag ``[predilect-error <kind>]`` then the detail for people;
# clients classify on the kind ``parse_error_message`` reads, never on the detail. Errors Triton itself
# produces carry no tag: classify those by their gRPC status code.
ERROR_IMAGE_REJECTED = "image_rejected"
"""The payload is not a screenable image (not a JPEG or PNG, truncated, too small, no field of view, ...):
sent with INVALID_ARGUMENT; the input itself is bad and resending it cannot help."""
ERROR_REQUEST_TOO_LARGE = "request_too_large"
"""The request was larger than the server's limit and was refused unread (INVALID_ARGUMENT, from the
request-size front): resending the same input cannot help."""
ERROR_KINDS = (ERROR_IMAGE_REJECTED, ERROR_REQUEST_TOO_LARGE)
_ERROR_TAG = "[predilect-error {}] "
_ERROR_TAG_PATTERN = re.compile(r"\[predilect-error ([a-z_]+)\] ")


def error_message(kind: str, detail: str) -> str:
    """The message of an error response of kind ``kind`` (one of ``ERROR_KINDS``): its tag, then ``detail``."""
    if kind not in ERROR_KINDS:
        raise ValueError(f"error kind must be one of {ERROR_KINDS}, got {kind!r}")
    return _ERROR_TAG.format(kind) + detail


def parse_error_message(message: str) -> tuple[str, str] | None:
    """``(kind, detail)`` of an error message ``error_message`` wrote, wherever in ``message`` Triton put
    it (an ensemble prefixes the step's message with its own name); None for a message without the tag,
    i.e. one Triton or gRPC produced. A kind this version does not know is returned as it is."""
    found = _ERROR_TAG_PATTERN.search(message)
    return None if found is None else (found.group(1), message[found.end() :])


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

RESULT_SCHEMA_VERSION = "2"
"""Version of the screening-result, journal-record and exam-result JSON written by the client
(2: gradability, server-side referral decision, rules and catalog digests, heatmaps)."""

# --------------------------------------------------------------------------- screening decisions

QUALITY_REASONS = (
    "focus",
    "underexposed",
    "overexposed",
    "field_of_view",
    "artefact",
    "wrong_image_type",
    "too_small",
    "monochrome",
)
"""The gradability checks, in the order of their flags in ``QUALITY``: ``too_small`` is a field of view
too few pixels across to grade; ``monochrome`` a red-free or greyscale photograph, which a colour model
does not screen (``predilect.quality``)."""
QUALITY_MEASURES = (
    "field_px",
    "field_visible",
    "field_offset",
    "masked",
    "unlit",
    "blur",
    "exposure",
    "saturated",
    "glare",
    "haze",
    "dust",
    "chroma",
    "redness",
)
"""What the gradability step measures on each photograph, in the order of ``QUALITY_MEASURES_TENSOR``
(``predilect.quality`` defines each): what shift monitoring compares with the model's reference."""
DECISIONS = ("ungradable", "no_referral", "refer_routine", "refer_urgent")
"""Per-image decisions, indexed by ``REFERRAL``: ungradable (no disease decision), no referable finding,
refer routinely, refer urgently (the most urgent referral among the positive findings)."""
EXAM_OUTCOMES = ("refer_urgent", "refer_routine", "recall", "no_referral", "incomplete")
"""Per-exam (patient) outcomes: referable when any eye is; recall for re-photography when an eye is
ungradable and no eye is referable; incomplete when an image failed and nothing else decides."""


def parse_eye(value: str) -> str:
    """The canonical eye code ("R" or "L") of a laterality as manifests and DICOM spell it.

    Accepts R/L, right/left and OD/OS in any case; raises ValueError naming the accepted
    spellings otherwise.
    """
    code = _EYE_ALIASES.get(value.strip().upper())
    if code is None:
        raise ValueError(f"eye must be one of R/L, right/left or OD/OS, got {value!r}")
    return code
