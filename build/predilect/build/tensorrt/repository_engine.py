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
from pathlib import Path

import numpy as np

from predilect import contract
from predilect.build.tensorrt.engine import EngineCfg, GateData, build_engine, gpu_identity
from predilect.build.tensorrt.engine_cache import atomic_write, cached_plan
from predilect.build.tensorrt.plugin import import_tensorrt
from predilect.build.tensorrt.sidecar import engine_key, read_sidecar, sidecar_path, timing_cache_name
from predilect.build.tensorrt.versions import check_served_tensorrt


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
    """``classifier/1/model.plan`` for this host; returns ``(path, built)`` (False: reused from the cache).

    Replicas sharing ``cache_dir`` build each plan once: ``engine_cache.cached_plan`` holds the plan
    folder's lock while it checks and builds, and every file is written through a unique temporary
    name and a rename. The timing cache is kept per GPU model (``sidecar.timing_cache_name``).
    """
    trt = import_tensorrt()
    check_served_tensorrt(trt.__version__)
    classifier = _classifier(repository)
    onnx_path = classifier / contract.TRITON_VERSION / contract.ONNX_FILENAME
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    gpu_name, capability = gpu_identity()
    folder = cached_engine_dir(cache_dir, capability=capability, tensorrt_version=trt.__version__, onnx_sha256=sha)
    cached = folder / contract.PLAN_FILENAME
    timing = Path(cache_dir) / engine_key(capability, trt.__version__) / timing_cache_name(gpu_name)
    cfg = engine_cfg(repository, timing_cache=timing)

    def reusable(plan: Path) -> bool:
        if not sidecar_path(plan).is_file():
            return False
        sidecar = read_sidecar(plan)
        return sidecar.onnx_sha256 == sha and sidecar.max_batch >= cfg.max_batch and sidecar.plugin == cfg.use_plugin

    def build(plan: Path) -> None:
        build_engine(onnx_path, plan, cfg, gate=gate_data(repository))

    built = cached_plan(cached, reusable=reusable, build=build)
    install_plan(cached, classifier / contract.TRITON_VERSION / contract.PLAN_FILENAME)
    return classifier / contract.TRITON_VERSION / contract.PLAN_FILENAME, built


def install_plan(cached: Path, target: Path) -> None:
    """Copy a cached plan and its sidecar into a repository (the sidecar first, each whole)."""
    atomic_write(sidecar_path(target), sidecar_path(cached).read_bytes())
    atomic_write(target, Path(cached).read_bytes())
