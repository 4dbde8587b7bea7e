"""`predilect bench` smoke tests: the short sweep writes its report, Locust runs distributed.

Locust (and its gevent monkey-patching) runs only in subprocesses started by the bench.
"""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    from predilect.catalog import DEFAULT_CATALOG
    from predilect.preprocess import PreprocessCfg
    from predilect.training.checkpoint import save_checkpoint
    from predilect.training.model import FundusClassifier, ModelCfg

    torch.manual_seed(0)
    model = FundusClassifier(ModelCfg(num_diseases=len(DEFAULT_CATALOG), image_size=PreprocessCfg().size))
    path = tmp_path_factory.mktemp("bench-checkpoint") / "model.safetensors"
    save_checkpoint(path, model.eval(), preprocess=PreprocessCfg(), catalog=DEFAULT_CATALOG)
    return path


def test_bench_writes_report_with_plots_when_run_quick(tmp_path, tiny_onnx, tiny_checkpoint):
    from predilect.benchmarks.bench_cli import main

    out = tmp_path / "results"
    rc = main(
        [
            "--quick",
            "--onnx",
            str(tiny_onnx),
            "--checkpoint",
            str(tiny_checkpoint),
            "--out-dir",
            str(out),
            "--name",
            "smoke",
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    assert rc == 0
    text = (out / "smoke.md").read_text()
    assert "Headline" in text and "machine:" in text and "command:" in text
    for plot in ("throughput", "latency", "breakdown"):
        assert (out / f"smoke-{plot}.png").stat().st_size > 0
    results = json.loads((out / "smoke.json").read_text())
    assert [p["users"] for p in results["sweeps"]["triton"]] == [1, 2]
    assert [p["users"] for p in results["sweeps"]["fastapi_torch"]] == [1, 2]
    assert results["inprocess"]["images_per_s"] > 0


def test_locust_distributed_writes_csv_when_master_and_one_worker(tmp_path, triton_server, fundus_jpeg):
    from predilect.benchmarks.locust_runner import run_locust_distributed
    from predilect.benchmarks.payloads import write_list
    from predilect.serving.server import free_port

    image = tmp_path / "fundus.jpg"
    image.write_bytes(fundus_jpeg(3))
    prefix = tmp_path / "csv" / "dist"
    result = run_locust_distributed(
        "TritonGrpcUser",
        triton_server.grpc_url,
        users=2,
        run_time_s=4,
        images_list=write_list([image], tmp_path / "images.txt"),
        csv_prefix=prefix,
        workers=1,
        master_port=free_port(),
    )
    assert Path(f"{prefix}_stats.csv").is_file()
    assert result.requests > 0 and result.failures == 0
