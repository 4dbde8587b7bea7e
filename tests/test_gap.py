"""`predilect bench gap`: the share arithmetic, the no-op stand-in's answer, and the no-op and front variants
serving one request through the real tritonserver."""

import math

import numpy as np
import pytest

from predilect.benchmarks import gap


def _measured(images_per_s: float, server_cpu_ms: float, loadgen_cpu_ms: float = 0.0) -> gap.Measured:
    return gap.Measured(images_per_s, server_cpu_ms, loadgen_cpu_ms)


def test_breakdown_parts_sum_to_gap_when_every_part_is_measured():
    # bound 250 images/s (4 ms/image), served 160 (6.25 ms/image): a gap of 2.25 ms per image.
    result = gap.breakdown(
        cores=2,
        bound_images_per_s=250.0,
        bound_cpu_ms_per_image=7.0,
        reference=_measured(160.0, server_cpu_ms=9.0, loadgen_cpu_ms=1.0),
        noop=_measured(600.0, server_cpu_ms=1.2, loadgen_cpu_ms=1.5),
    )
    assert result.gap_ms_per_image == pytest.approx(2.25)
    by_name = {p.name.split(" (")[0]: p for p in result.parts}
    assert by_name["load generator"].ms_per_image == pytest.approx(0.5)  # 1 ms CPU over 2 cores
    assert by_name["serving stack"].ms_per_image == pytest.approx(0.6)
    assert by_name["model step in the server, over the bound"].ms_per_image == pytest.approx((9.0 - 1.2 - 7.0) / 2)
    assert sum(p.ms_per_image for p in result.parts) == pytest.approx(2.25)
    assert sum(p.share for p in result.parts) == pytest.approx(1.0)
    assert by_name["load generator"].images_per_s_without == pytest.approx(1000.0 / (6.25 - 0.5))
    assert result.gap_images_per_s == pytest.approx(90.0) and result.served_over_bound == pytest.approx(0.64)


def test_breakdown_beside_says_front_cost_and_best_sweep_when_measured():
    result = gap.breakdown(
        cores=2,
        bound_images_per_s=200.0,
        bound_cpu_ms_per_image=10.0,
        reference=_measured(100.0, server_cpu_ms=12.0),
        noop=_measured(500.0, server_cpu_ms=1.0),
        front=_measured(80.0, server_cpu_ms=13.0),
        delays={"0 us": _measured(125.0, 12.0), "4000 us": _measured(90.0, 12.0)},
        instances={"1": _measured(95.0, 12.0)},
        repeat=_measured(104.0, 12.0),
    )
    beside = {p.name: p for p in result.beside}
    assert beside["nginx front, on top of the gap"].ms_per_image == pytest.approx(12.5 - 10.0)
    assert beside["nginx front, on top of the gap"].share == pytest.approx(2.5 / 5.0)
    assert beside["batcher delay, best swept"].ms_per_image == pytest.approx(10.0 - 8.0)
    assert "0 us" in beside["batcher delay, best swept"].says
    assert beside["instance count, best swept"].ms_per_image == 0.0  # none faster than the default
    assert beside["the run's noise"].ms_per_image == pytest.approx(10.0 - 1000.0 / 104.0)


def test_breakdown_share_is_nan_when_served_equals_bound():
    result = gap.breakdown(
        cores=2,
        bound_images_per_s=100.0,
        bound_cpu_ms_per_image=20.0,
        reference=_measured(100.0, 20.0),
        noop=_measured(400.0, 1.0),
    )
    assert result.gap_ms_per_image == 0.0 and all(math.isnan(p.share) for p in result.parts)


def test_measured_divides_cpu_by_served_requests_when_read_from_a_point():
    point = {"requests_per_s": 50.0, "server_cpu_s": 3.0, "loadgen_cpu_s": 0.5, "served_requests": 250}
    m = gap.Measured.of_point(point)
    assert (m.server_cpu_ms_per_image, m.loadgen_cpu_ms_per_image, m.ms_per_image) == (12.0, 2.0, 20.0)


def test_gap_points_sweep_neighbours_of_defaults_when_built():
    points = gap.gap_points(queue_delay_us=2000, instances=2)
    delays = [p.overrides["max_queue_delay_us"] for p in points if p.role == gap.DELAY]
    counts = [p.overrides["fused_instances"] for p in points if p.role == gap.INSTANCES]
    assert delays == [0, 1000, 4000] and counts == [1, 3]
    assert [p.role for p in points][:4] == [gap.REFERENCE, gap.FRONT, gap.NOOP, gap.NOOP_FRONT]
    assert points[-1].role == gap.REPEAT and not points[-1].overrides
    assert {(p.front, p.noop) for p in points if p.role in (gap.FRONT, gap.NOOP, gap.NOOP_FRONT)} == {
        (True, False),
        (False, True),
        (True, True),
    }


def test_constant_outputs_match_config_tensors_when_built():
    from predilect import contract
    from predilect.benchmarks.noop_backend import constant_outputs

    types = {"TYPE_FP32": np.float32, "TYPE_BOOL": np.bool_, "TYPE_INT32": np.int32}
    config = [
        {"name": contract.PROBABILITIES, "data_type": "TYPE_FP32", "dims": ["22"]},
        {"name": contract.FINDINGS, "data_type": "TYPE_BOOL", "dims": ["22"]},
        {"name": contract.REFERRAL, "data_type": "TYPE_INT32", "dims": ["1"]},
    ]
    answer = constant_outputs(config, types.__getitem__)
    assert answer[contract.PROBABILITIES].shape == (1, 22) and answer[contract.PROBABILITIES].dtype == np.float32
    assert answer[contract.FINDINGS].dtype == np.bool_ and not answer[contract.FINDINGS].any()
    assert answer[contract.REFERRAL].tolist() == [[contract.DECISIONS.index("no_referral")]]
    with pytest.raises(ValueError, match="variable dimension"):
        constant_outputs([{"name": "X", "data_type": "TYPE_FP32", "dims": ["-1"]}], types.__getitem__)


def test_stage_table_puts_bound_beside_served_steps_when_given_both():
    from predilect import contract
    from predilect.benchmarks.report import stage_table

    bound = {"preprocess_ms_per_image": 4.0, "infer_ms_per_image": 3.0, "batch_size": 8}
    fused = {"model": contract.FUSED_MODEL, "requests": 80, "executions": 10, "queue_ms": 5.0, "compute_input_ms": 0.5}
    fused |= {"compute_infer_ms": 64.0, "compute_output_ms": 1.0, "mean_batch": 8.0, "request_ms": 71.0}
    ensemble = {**fused, "model": contract.ENSEMBLE, "mean_batch": 1.0, "request_ms": 72.0}
    rows = stage_table(bound, [("16 users", {"triton_times": [ensemble, fused]})])
    assert rows[2].startswith("| (a) bound, one worker: preprocess + grade 4.0, inference + decision 3.0 |")
    assert "| 7.0 |" in rows[2]
    assert rows[3] == f"| 16 users: {contract.ENSEMBLE} (ensemble) | | | | | | | 72.0 |"
    assert rows[4] == f"| 16 users: {contract.FUSED_MODEL} | 5.0 | 0.50 | 64.0 | 1.00 | 8.0 | 8.0 | 71.0 |"


@pytest.mark.parametrize(("front", "noop"), [(False, True), (True, False)], ids=["noop-direct", "model-front"])
def test_gap_variant_serves_one_request_when_assembled(tmp_path, tritonserver, tiny_onnx, fundus_jpeg, front, noop):
    from predilect import contract
    from predilect.benchmarks.sweep import front_limit_bytes, noop_repository
    from predilect.benchmarks.triton_stats import interval_times, snapshot
    from predilect.client import ScreeningClient
    from predilect.serving.configs import ServingOptions
    from predilect.serving.repository import assemble

    options = ServingOptions(fused_instances=1)
    repository = (noop_repository if noop else assemble)(tiny_onnx, tmp_path / "repo", options)
    assert (repository / contract.FUSED_MODEL / contract.TRITON_VERSION / contract.ONNX_FILENAME).is_file() != noop
    limit = front_limit_bytes() if front else None
    with tritonserver.on_free_ports(
        model_repository=repository, log_path=tmp_path / "triton.log", max_request_bytes=limit, startup_timeout_s=180
    ) as server:
        assert server.fronted == front and (server.front_pid is not None) == front
        before = snapshot(server.inner_grpc_url)
        with ScreeningClient(server.grpc_url, timeout_s=60) as client:
            result = client.screen(fundus_jpeg(0))
        times = {t.model: t for t in interval_times(before, snapshot(server.inner_grpc_url))}
    assert times[contract.FUSED_MODEL].requests == 1 and times[contract.ENSEMBLE].request_ms > 0
    if noop:
        assert result.decision == "no_referral" and set(result.scores.values()) == {0.0}
    else:
        assert result.gradable in (True, False) and len(result.scores) > 0
