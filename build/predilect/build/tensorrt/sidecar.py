"""The JSON written beside every serialized engine: what it was built from, for and on.

An engine only runs on the TensorRT version and GPU architecture it was built with, so the
sidecar records both (and the cache key derived from them), the precision, the optimisation
profile's shapes, the catalog digest of the model it serves and the accuracy gate's report.
The container entrypoint reuses an engine only when its sidecar matches the host; any frontend
that writes a plan (ONNX parser, Torch-TensorRT) writes the same sidecar.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from predilect.build.tensorrt.engine_cache import atomic_write
from predilect.contract import ENGINE_SIDECAR_SCHEMA

_SUFFIX = ".json"  # model.plan -> model.plan.json
FRONTENDS = ("onnx", "torch")
"""How a plan was built: TensorRT's ONNX parser (``engine``) or Torch-TensorRT (``torch_engine``)."""
TORCH_PRECISIONS = ("fp32", "fp16", "bf16")
"""What the torch frontend builds; int8 / fp8 need the Q/DQ the onnx frontend inserts."""
TORCH_LOWERINGS = ("auto", "qdp")
"""How the torch frontend lowers the custom op: a plugin generated from it, or the ONNX route's QDP plugin."""


@dataclass(frozen=True)
class TensorShapes:
    """One engine input or output: name, dtype and (for inputs) the profile's min/opt/max shapes."""

    name: str
    dtype: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]


@dataclass(frozen=True)
class EngineSidecar:
    """What a plan was built from, for and on."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    precision: str  # fp32 | fp16 | bf16 | int8 | fp8 (from the ONNX types, not a builder flag)
    frontend: str  # "onnx" (TensorRT's parser) or "torch" (Torch-TensorRT)
    onnx_sha256: str  # onnx: the ONNX built from; torch: the FP32 ONNX the gate compared against
    catalog_digest: str
    model_name: str
    model_version: str
    plugin: bool
    inputs: tuple[TensorShapes, ...]
    outputs: tuple[TensorShapes, ...]
    gate: dict[str, Any] = field(default_factory=dict)
    schema: str = ENGINE_SIDECAR_SCHEMA
    checkpoint_sha256: str = ""  # torch: the checkpoint compiled; onnx: ""

    @property
    def key(self) -> str:
        return engine_key(self.compute_capability, self.tensorrt_version)

    @property
    def max_batch(self) -> int:
        return self.inputs[0].max_shape[0]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EngineSidecar:
        data = json.loads(text)
        if data.get("schema") != ENGINE_SIDECAR_SCHEMA:
            raise ValueError(f"engine sidecar schema {data.get('schema')!r}, expected {ENGINE_SIDECAR_SCHEMA!r}")
        for kind in ("inputs", "outputs"):
            data[kind] = tuple(
                TensorShapes(**{**t, **{k: tuple(t[k]) for k in ("min_shape", "opt_shape", "max_shape")}})
                for t in data[kind]
            )
        return cls(**data)


def timing_cache_name(gpu_name: str) -> str:
    """The timing cache's file name under an engine key: per GPU model, since TensorRT refuses timings of
    another device (two cards of one compute capability differ in clocks and memory)."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    return f"timing-{slug}.cache"


def engine_key(compute_capability: str, tensorrt_version: str) -> str:
    """Cache key of an engine: ``sm90-trt10.9.0.34`` (plans are tied to both)."""
    return f"sm{compute_capability.replace('.', '')}-trt{tensorrt_version}"


def sidecar_path(engine_path: Path) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    return Path(engine_path).with_name(Path(engine_path).name + _SUFFIX)


def write_sidecar(engine_path: Path, sidecar: EngineSidecar) -> Path:
    """Write ``engine_path``'s sidecar whole (``engine_cache.atomic_write``); returns its path."""
    path = sidecar_path(engine_path)
    atomic_write(path, sidecar.to_json().encode("utf-8"))
    return path


def read_sidecar(engine_path: Path) -> EngineSidecar:
    return EngineSidecar.from_json(sidecar_path(engine_path).read_text(encoding="utf-8"))
