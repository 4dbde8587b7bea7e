"""Give a GPU model repository its engine: build it on this host, or reuse one built here before.

A ``predilect assemble --profile gpu`` repository carries ``classifier/1/model.onnx`` (already
in the requested precision), ``classifier/engine_build.json`` (profile and plugin choice),
``classifier/reference.onnx`` (the FP32 export) and ``classifier/gate_set.npz`` (held-out pixels
and labels). Engines are only valid for the TensorRT version and GPU architecture that built
them, so they are cached under ``<cache>/<sm..-trt..>/<onnx sha256>/model.plan`` and reused
when the sidecar matches; the container entrypoint calls ``ensure_engine`` before it starts
``tritonserver``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from predilect import contract
from predilect.build.tensorrt.engine import EngineCfg, GateData, build_engine, gpu_identity
from predilect.build.tensorrt.plugin import import_tensorrt
from predilect.build.tensorrt.sidecar import engine_key, read_sidecar, sidecar_path


def _classifier(repository: Path) -> Path:
    return Path(repository) / contract.CLASSIFIER_MODEL


def engine_cfg(repository: Path, *, timing_cache: Path | None = None) -> EngineCfg:
    """The build options ``assemble`` recorded (min 1, opt = preferred batch, max = max_batch_size)."""
    request = json.loads((_classifier(repository) / contract.ENGINE_BUILD_FILENAME).read_text(encoding="utf-8"))
    return EngineCfg(
        min_batch=request["min_batch"],
        opt_batch=request["opt_batch"],
        max_batch=request["max_batch"],
        use_plugin=request["use_plugin"],
        timing_cache=timing_cache,
    )


def gate_data(repository: Path) -> GateData:
    classifier = _classifier(repository)
    with np.load(classifier / contract.GATE_SET_FILENAME) as data:
        labels = data["labels"] if "labels" in data.files and data["labels"].size else None
        return GateData(
            pixels=data["pixels"].astype(np.float32),
            labels=labels,
            reference_onnx=classifier / contract.REFERENCE_ONNX_FILENAME,
        )


def cached_engine_dir(cache_dir: Path, *, capability: str, tensorrt_version: str, onnx_sha256: str) -> Path:
    return Path(cache_dir) / engine_key(capability, tensorrt_version) / onnx_sha256[:16]


def ensure_engine(repository: Path, cache_dir: Path) -> tuple[Path, bool]:
    """``classifier/1/model.plan`` for this host; returns ``(path, built)`` (False: reused from the cache)."""
    trt = import_tensorrt()
    classifier = _classifier(repository)
    onnx_path = classifier / contract.TRITON_VERSION / contract.ONNX_FILENAME
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    _, capability = gpu_identity()
    folder = cached_engine_dir(cache_dir, capability=capability, tensorrt_version=trt.__version__, onnx_sha256=sha)
    cached = folder / contract.PLAN_FILENAME
    cfg = engine_cfg(
        repository, timing_cache=Path(cache_dir) / engine_key(capability, trt.__version__) / "timing.cache"
    )
    built = False
    reusable = cached.is_file() and sidecar_path(cached).is_file()
    if reusable:
        sidecar = read_sidecar(cached)
        reusable = (
            sidecar.onnx_sha256 == sha and sidecar.max_batch >= cfg.max_batch and sidecar.plugin == cfg.use_plugin
        )
    if not reusable:
        build_engine(onnx_path, cached, cfg, gate=gate_data(repository))
        built = True
    target = classifier / contract.TRITON_VERSION / contract.PLAN_FILENAME
    shutil.copy2(cached, target)
    shutil.copy2(sidecar_path(cached), sidecar_path(target))
    return target, built
