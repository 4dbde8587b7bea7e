"""Per-camera screening results: rows, pooled comparisons over models, the paired recipe difference,
and `predilect bench cameras` end to end through the real tritonserver."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from predilect.manifest import Record
from predilect.training.by_camera import (
    CameraEvaluationError,
    Screened,
    camera_rows,
    compare_cameras,
    format_rows,
    paired_difference,
    pooled_auroc,
    splits_of,
)

IDS = ["dr", "amd"]
SPLIT = {"desk": "seen", "phone": "seen", "handheld": "held_out", "grey": "held_out"}
CAPTURE = {"desk": "colour", "phone": "colour", "handheld": "colour", "grey": "red_free"}


def _screened(noise: dict[str, float], *, seed: int = 0, eyes: int = 40) -> Screened:
    """Every eye photographed by every camera; a camera's scores are the truth plus its own noise."""
    rng = np.random.default_rng(seed)
    truth = np.stack([np.arange(eyes) % 2, (np.arange(eyes) // 2) % 2], axis=1).astype(float)
    records, scores, gradable = [], [], []
    for camera in SPLIT:
        for e in range(eyes):
            labels = frozenset(d for d, t in zip(IDS, truth[e], strict=True) if t)
            extra = {"camera": camera, "capture": CAPTURE[camera]}
            records.append(Record(Path(f"/x/{e}_{camera}.jpg"), labels, f"P{e // 2}", "RL"[e % 2], "test", extra))
            scores.append(truth[e] + rng.normal(0, noise.get(camera, 0.3), 2))
            gradable.append(camera != "grey" and e % 4 != 0)
    return Screened(records, np.array(scores), np.array(gradable), IDS)


def test_camera_rows_report_auroc_for_colour_and_screened_as_colour_for_red_free_when_screened():
    rows = {r.camera: r for r in camera_rows(_screened({"handheld": 5.0}), splits_of(SPLIT))}
    assert [r.split for r in rows.values()] == ["seen", "seen", "held_out", "held_out"]
    assert rows["desk"].macro_auroc is not None and rows["desk"].macro_auroc > 0.9
    assert rows["handheld"].macro_auroc is not None and rows["handheld"].macro_auroc < rows["desk"].macro_auroc
    assert rows["grey"].macro_auroc is None and rows["grey"].screened_as_colour == 0
    assert rows["desk"].gradable == 30 and rows["desk"].images == 40
    assert any("screened as colour 0/40" in line for line in format_rows(list(rows.values())))


def test_pooled_auroc_leaves_red_free_out_when_split_pooled():
    screened = _screened({"handheld": 0.01})
    assert pooled_auroc(screened, splits_of(SPLIT), "held_out") > 0.99  # the red-free camera scored nothing


def test_compare_cameras_finds_the_held_out_gap_when_a_camera_is_worse():
    runs = [_screened({"handheld": 3.0}, seed=s) for s in range(3)]
    comparison = compare_cameras(runs, splits_of(SPLIT), resamples=200)
    assert comparison.models == 3 and comparison.eyes == 40 and comparison.patients == 20
    gap = comparison.gap["handheld"]
    assert gap.value < -0.1 and gap.high < 0 and not comparison.met("handheld")
    assert set(comparison.gap) == {"handheld"} and comparison.screened_as_colour["grey"] == (0, 120)
    assert comparison.seen_reference.low <= comparison.seen_reference.value <= comparison.seen_reference.high
    assert len(comparison.per_model["desk"]) == 3
    json.dumps(comparison.to_dict())


def test_compare_cameras_meets_the_target_when_held_out_cameras_match_the_seen():
    runs = [_screened({}, seed=s) for s in range(3)]
    comparison = compare_cameras(runs, splits_of(SPLIT), resamples=200)
    assert comparison.met("handheld") and abs(comparison.gap["handheld"].value) < 0.03


def test_compare_cameras_refuses_when_cameras_saw_different_eyes():
    screened = _screened({})
    keep = [i for i, r in enumerate(screened.records) if not (r.extra["camera"] == "phone" and r.patient_id == "P0")]
    partial = Screened([screened.records[i] for i in keep], screened.scores[keep], screened.gradable[keep], IDS)
    with pytest.raises(CameraEvaluationError, match="same test eyes"):
        compare_cameras([partial], splits_of(SPLIT))


def test_paired_difference_is_zero_when_recipes_score_alike_and_negative_when_worse():
    same = [_screened({}, seed=1)]
    zero = paired_difference(same, same, ["desk", "phone"], resamples=100)
    assert zero.value == 0.0 and zero.low == 0.0 and zero.high == 0.0
    worse = [_screened({"desk": 3.0, "phone": 3.0}, seed=1)]
    assert paired_difference(worse, same, ["desk", "phone"], resamples=100).high < 0


@pytest.mark.usefixtures("tritonserver")  # the command starts its own
def test_bench_cameras_serves_each_checkpoint_and_reports_every_camera_when_run(pipeline, tmp_path):
    from predilect.benchmarks.cameras_cli import main
    from predilect.training.phantom import generate
    from predilect.training.phantom.cameras import PROFILES

    phantom = generate(
        tmp_path / "zoo", preset="zoo", count=8, oct_count=0, test_fraction=0.25, max_side=200, render_height=96
    ).parent
    ckpt = str(pipeline.checkpoint)
    rc = main(
        [
            "--phantom",
            str(phantom),
            "--checkpoint",
            f"a={ckpt}",
            "--checkpoint",
            f"a={ckpt}",
            "--checkpoint",
            f"b={ckpt}",
            "--out",
            str(tmp_path / "out"),
            "--name",
            "run",
            "--workdir",
            str(tmp_path / "work"),
            "--resamples",
            "50",
        ]
    )
    assert rc == 0
    result = json.loads((tmp_path / "out" / "run.json").read_text())
    group = result["groups"]["a"]
    assert group["models"] == 2 and set(group["splits"]) == set(PROFILES)
    assert set(group["screened_as_colour"]) == {"redfree_desk", "redfree_handheld"}
    assert result["difference"]["seen"]["value"] == 0.0  # the same checkpoint under two names
    assert len(list((tmp_path / "work").glob("*/screened.jsonl"))) == 1  # served once, used three times
    report = (tmp_path / "out" / "run.md").read_text()
    assert "handheld_50_lowres" in report and "within 0.03" in report
