"""Session fixtures for the whole path: tiny phantom -> trained checkpoint -> ONNX ->
assembled repository -> the real tritonserver. Shared by the training and end-to-end tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pipeline:
    manifest: Path
    checkpoint: Path
    onnx: Path
    repository: Path
    workdir: Path


@pytest.fixture(scope="session")
def phantom_manifest(tmp_path_factory) -> Path:
    from predilect.training.phantom import generate

    out = tmp_path_factory.mktemp("phantom")
    return generate(out, count=40, oct_count=24, seed=7, width=1024, height=768, workers=2)


@pytest.fixture(scope="session")
def pipeline(phantom_manifest, tmp_path_factory) -> Pipeline:
    import torch

    from predilect.build.export import export_onnx
    from predilect.serving.configs import ServingOptions
    from predilect.serving.repository import assemble
    from predilect.training.train import runs, train

    torch.set_num_threads(2)
    work = tmp_path_factory.mktemp("pipeline")
    checkpoint = work / "checkpoint" / "model.safetensors"
    small = ["data.preprocess.size=64", "model.widths=[8, 16, 32]", "loop.batch_size=8"]
    first, second = runs(
        phantom_manifest,
        oct_manifest=phantom_manifest.with_name("oct_manifest.csv"),
        common=small,
        pretrain=["loop.epochs=1", "data.oct.size=64", "pretrain.context_length=32"],
        finetune=["loop.epochs=2", "finetune.freeze_sites_epochs=1"],
    )
    train(first, second, checkpoint, cache_dir=work / "cache")
    onnx_path = work / "onnx" / "model.onnx"
    export_onnx(checkpoint, onnx_path)
    # Unbounded queues: these tests check answers, not overload (tests/test_overload.py does that).
    repository = assemble(
        onnx_path,
        work / "model_repository",
        ServingOptions(max_batch_size=8, layout="split", max_queue_size=0, queue_timeout_us=0),
    )
    return Pipeline(phantom_manifest, checkpoint, onnx_path, repository, work)


@pytest.fixture(scope="session")
def pipeline_server(tritonserver, pipeline):
    with tritonserver.on_free_ports(model_repository=pipeline.repository) as server:
        yield server
