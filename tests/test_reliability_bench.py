"""The arithmetic and probes of ``predilect bench overload / soak / large`` (the runs themselves are
benchmarks, not tests: docs/RELIABILITY.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from predilect.benchmarks import reliability
from predilect.benchmarks.reliability import ANSWERED, FAILED, REFUSED, TIMED_OUT, Outcome
from predilect.client.errors import DeadlineExceededError, PredilectClientError, ServerBusyError


def test_percentile_interpolates_when_between_ranks() -> None:
    assert reliability.percentile([], 0.5) is None
    assert reliability.percentile([3.0], 0.99) == 3.0
    assert reliability.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)
    assert reliability.percentile([4.0, 1.0, 3.0, 2.0], 1.0) == 4.0


def test_summarise_counts_only_answers_and_refusals_in_time_when_measuring_share() -> None:
    outcomes = [
        Outcome(due_s=0.0, end_s=0.5, kind=ANSWERED),
        Outcome(due_s=1.0, end_s=1.1, kind=REFUSED, attempts=3),
        Outcome(due_s=2.0, end_s=4.5, kind=ANSWERED),  # answered, but late
        Outcome(due_s=3.0, end_s=3.2, kind=TIMED_OUT),  # quick, but not an answer or a refusal
    ]
    summary = reliability.summarise(outcomes, within_s=2.0)
    assert summary.counts == {ANSWERED: 2, REFUSED: 1, TIMED_OUT: 1, FAILED: 0}
    assert summary.ended_within_share == pytest.approx(0.5)
    assert summary.answered_p50_s == pytest.approx(1.5) and summary.refused_p50_s == pytest.approx(0.1)
    assert summary.attempts_mean == pytest.approx(1.5)


def test_classify_names_the_outcome_when_given_client_errors() -> None:
    assert reliability.classify(None) == ANSWERED
    assert reliability.classify(ServerBusyError("busy")) == REFUSED
    assert reliability.classify(DeadlineExceededError("late")) == TIMED_OUT
    assert reliability.classify(PredilectClientError("internal")) == FAILED


def test_shm_bytes_counts_allocated_blocks_of_the_prefix_when_files_are_sparse(tmp_path: Path) -> None:
    (tmp_path / "predilect_1_a_x").write_bytes(b"\1" * 65536)
    with (tmp_path / "predilect_1_a_sparse").open("wb") as f:
        f.truncate(64 * 1024 * 1024)  # apparent 64 MB, nothing held
    (tmp_path / "other").write_bytes(b"\1" * 65536)
    held = reliability.shm_bytes("predilect_1_a_", tmp_path)
    assert 65536 <= held < 1024 * 1024


def test_process_tree_rss_counts_this_process_group_when_alive() -> None:
    rss = reliability.process_tree_rss_bytes(os.getpgrp())
    assert rss > 10 * 1024 * 1024
    assert reliability.process_tree_rss_bytes(2**22 + 12345) == 0


@pytest.mark.parametrize("sub", ["overload", "soak", "large"])
def test_bench_reliability_exits_2_naming_make_demo_when_no_model(sub, tmp_path, capsys) -> None:
    from predilect.benchmarks.bench_cli import main

    assert main([sub, "--onnx", str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err
    assert "missing.onnx" in err and "make demo" in err and "Traceback" not in err
