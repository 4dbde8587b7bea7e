"""`predilect bench`: the quick run writes its report, Locust runs distributed, sub-benchmarks run small.

Locust (and its gevent monkey-patching) runs only in subprocesses started by the bench. The quick
run with every stack (FastAPI + PyTorch, BentoML, the other layout) is the bench lane's; `make test`
runs it on the Triton stack alone.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

# What `predilect bench --quick` runs at each size: its extra options and the stacks it then measures.
QUICK_RUNS = {
    "triton": (["--no-baseline", "--no-bento", "--no-layouts", "--no-int8"], {"triton"}),
    "every-stack": ([], {"triton", "fastapi_torch", "bentoml", "triton_split"}),
}


@dataclass(frozen=True)
class QuickBench:
    rc: int
    out: Path
    stacks: set[str]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    from predilect.catalog import DEFAULT_CATALOG
    from predilect.models.checkpoint import save_checkpoint
    from predilect.models.classifier import FundusClassifier, ModelCfg
    from predilect.preprocess import PreprocessCfg

    torch.manual_seed(0)
    model = FundusClassifier(ModelCfg(num_diseases=len(DEFAULT_CATALOG), image_size=PreprocessCfg().size))
    path = tmp_path_factory.mktemp("bench-checkpoint") / "model.safetensors"
    save_checkpoint(path, model.eval(), preprocess=PreprocessCfg(), catalog=DEFAULT_CATALOG)
    return path


@pytest.fixture(scope="module", params=["triton", pytest.param("every-stack", marks=pytest.mark.bench)])
def quick_bench(request, tritonserver, tmp_path_factory, tiny_onnx, tiny_checkpoint) -> QuickBench:
    """`predilect bench --quick` on the tiny model (it starts its own tritonserver)."""
    from predilect.benchmarks.bench_cli import main

    extra, stacks = QUICK_RUNS[request.param]
    tmp = tmp_path_factory.mktemp(f"bench-{request.param}")
    argv = ["--quick", "--onnx", str(tiny_onnx), "--checkpoint", str(tiny_checkpoint), *extra]
    rc = main([*argv, "--out", str(tmp / "results"), "--name", "smoke", "--workdir", str(tmp / "work")])
    return QuickBench(rc, tmp / "results", stacks)


def test_bench_writes_report_with_plots_when_run_quick(quick_bench: QuickBench) -> None:
    assert quick_bench.rc == 0
    out = quick_bench.out
    text = (out / "smoke.md").read_text()
    assert "Headline" in text and "machine:" in text and "command:" in text
    for plot in ("throughput", "latency", "breakdown"):
        assert (out / f"smoke-{plot}.png").stat().st_size > 0
    results = json.loads((out / "smoke.json").read_text())
    sweeps = results["sweeps"]
    assert set(sweeps) == quick_bench.stacks
    for stack in {"triton", "fastapi_torch", "bentoml"} & quick_bench.stacks:
        assert [p["users"] for p in sweeps[stack]] == [1, 2]
    if "triton_split" in quick_bench.stacks:
        assert [p["users"] for p in sweeps["triton_split"]] == [2]  # the other layout, headline point
    assert all(p["error_rate"] == 0 for points in sweeps.values() for p in points)
    assert results["inprocess"]["images_per_s"] > 0
    assert results["preprocessing"]["served_equals_previous"] is True
    # The report says only what the run measured: payload and tensor sizes come from the run.
    assert f"mean {results['payloads']['camera']['mean_bytes'] / 1000:.0f} kB" in text
    assert "0.5 MB" not in text and "600 KB" not in text


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


def test_run_locust_finishes_and_writes_stats_when_64_users_screen(tmp_path, monkeypatch, triton_server, fundus_jpeg):
    """A high-concurrency point runs to completion: the Locust process leaves after writing its statistics
    instead of risking gRPC's gevent teardown deadlock (experiments/2026-12-07-locust-64-users)."""
    from predilect.benchmarks import locust_runner
    from predilect.benchmarks.payloads import write_list

    images = []
    for k in range(4):
        images.append(tmp_path / f"fundus{k}.jpg")
        images[-1].write_bytes(fundus_jpeg(k))
    monkeypatch.setattr(locust_runner, "_GRACE_S", 30)  # a 44 s limit on a 4 s point
    prefix = tmp_path / "csv" / "u64"
    result = locust_runner.run_locust(
        "TritonGrpcUser",
        triton_server.grpc_url,
        users=64,
        run_time_s=4,
        images_list=write_list(images, tmp_path / "images.txt"),
        csv_prefix=prefix,
        request_timeout_s=10.0,
    )
    assert Path(f"{prefix}_stats.csv").is_file()
    assert result.users == 64 and result.requests > 0


def test_bench_decoders_reports_floor_ratio_and_bootstrap_when_run_small(tmp_path, pipeline):
    from predilect.cli import main

    out = tmp_path / "results"
    argv = ["bench", "decoders", "--manifest", str(pipeline.manifest), "--checkpoint", str(pipeline.checkpoint)]
    argv += ["--images", "4", "--repeats", "1", "--resamples", "50", "--out", str(out), "--name", "dec"]
    assert main(argv) == 0
    results = json.loads((out / "dec.json").read_text())
    timings = results["timings"]
    assert timings["served_equals_previous"] is True and timings["served_over_floor"] > 0
    assert set(results["auroc"]["macro_auroc"]) == {"pil_draft", "dali_cpu"}
    ci = results["auroc"]["vs_pil_draft"]["dali_cpu"]
    assert ci["low"] <= ci["value"] <= ci["high"] and ci["resamples"] == 50
    text = (out / "dec.md").read_text()
    assert "load average" in text and "paired bootstrap" in text and f"{timings['served_over_floor']:.2f}x" in text


@pytest.mark.parametrize("sub", ["decoders", "sweep", "baseline-server", "serving"])
def test_bench_dispatches_sub_command_when_named(sub, capsys):
    from predilect.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", sub, "--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert "predilect bench" in usage and sub in usage.splitlines()[0]


def test_bench_decoders_retrains_one_model_per_decoder_when_asked(tmp_path, phantom_manifest):
    from predilect.benchmarks.decoders_cli import main

    out = tmp_path / "results"
    argv = ["--manifest", str(phantom_manifest), "--checkpoint", str(tmp_path / "none.safetensors"), "--no-auroc"]
    argv += ["--images", "2", "--repeats", "1", "--retrain", "--retrain-epochs", "1", "--resamples", "20"]
    argv += ["--retrain-set", "loop.batch_size=4", "--retrain-set", "data.preprocess.size=64"]
    assert main([*argv, "--out", str(out), "--name", "retrained"]) == 0
    retrained = json.loads((out / "retrained.json").read_text())["retrained"]
    assert set(retrained["macro_auroc"]) == {"pil_draft", "dali_cpu"}
    from predilect.training.finetune import FinetuneRun
    from predilect.training.pretrain import PretrainRun

    for decoder, stages in retrained["train_configs"].items():
        for run in (PretrainRun.model_validate(stages["pretrain"]), FinetuneRun.model_validate(stages["finetune"])):
            assert run.loop.epochs == 1 and run.loop.batch_size == 4 and run.data.preprocess.decoder == decoder
    ci = retrained["vs_pil_draft"]["dali_cpu"]
    assert ci["low"] <= ci["value"] <= ci["high"]
    assert "one model trained per decoder" in (out / "retrained.md").read_text()


def test_report_writes_plots_when_no_request_completed(tmp_path):
    from predilect.benchmarks import report

    nan = float("nan")
    empty = {"users": 1, "requests": 0, "failures": 0, "requests_per_s": 0.0, "error_rate": 0.0}
    empty |= {"p50_ms": nan, "p90_ms": nan, "p99_ms": nan, "loadgen_cpu_cores": 0.1}
    results = {
        "date": "today",
        "command": "predilect bench --quick",
        "machine": {"description": "2 cores"},
        "setup": {"model_version": "1+x", "onnx": "m.onnx", "decoder": "pil_draft", "serving_options": "defaults"}
        | {"locust_version": "2", "seconds_per_point": 3, "headline_users": 1, "cores": 2},
        "payloads": {"camera": {"label": "2 rendered JPEGs", "mean_bytes": 1000.0}},
        "sweeps": {report.STACK_TRITON: [empty], report.STACK_BASELINE: [empty]},
    }
    path = report.write_report(results, tmp_path, "empty")
    assert "| 1 | 0.0 | nan |" in path.read_text() and (tmp_path / "empty-latency.png").stat().st_size > 0


def test_run_locust_raises_locust_run_error_when_it_outlasts_its_limit(tmp_path, monkeypatch, fundus_jpeg):
    import time

    from predilect.benchmarks import locust_runner

    images = tmp_path / "images.txt"
    (tmp_path / "a.jpg").write_bytes(fundus_jpeg(0))
    images.write_text(str(tmp_path / "a.jpg") + "\n")
    monkeypatch.setattr(locust_runner, "_GRACE_S", -19)  # a 1 s limit against a 20 s run: a stalled generator
    start = time.monotonic()
    with pytest.raises(locust_runner.LocustRunError, match="did not finish within 1 s"):
        locust_runner.run_locust(
            "TritonGrpcUser",
            "127.0.0.1:9",
            users=1,
            run_time_s=20,
            images_list=images,
            csv_prefix=tmp_path / "csv" / "stalled",
            request_timeout_s=0.0,
        )
    assert time.monotonic() - start < 15  # stopped at its limit, not waited for


def test_sweep_table_says_no_measurement_when_point_failed():
    from typing import Any

    from predilect.benchmarks.report import _sweep_table

    nan = float("nan")
    point: dict[str, Any] = {
        "users": 64,
        "requests": 0,
        "failures": 0,
        "requests_per_s": nan,
        "p50_ms": nan,
        "p90_ms": nan,
    }
    point |= {"p99_ms": nan, "failed": "locust (64 users) did not finish within 230 s; it was stopped"}
    point |= {"load_before": (1.0, 1.0, 1.0), "load_after": (2.0, 1.0, 1.0)}
    rows = _sweep_table([point])
    assert rows[-1].startswith("| 64 | no measurement: locust (64 users) did not finish within 230 s")
    assert "1.0 / 2.0" in rows[-1]
