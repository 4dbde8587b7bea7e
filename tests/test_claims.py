"""The grid's statistics: many-resample AUROC, the intervals that include the seed, the verdict rule,
per-camera rows and a zero-shot score chosen without the held-out labels."""

import numpy as np
import pytest

from predilect.metrics import auroc, t_interval, weighted_auroc
from predilect.training.claims import GridScores, Resampled, compare, verdict
from predilect.training.grid_report import choose_zero_shot_score


def test_weighted_auroc_equals_auroc_of_repeated_rows_when_weights_are_counts():
    rng = np.random.default_rng(0)
    y, s = rng.random(60) < 0.3, np.round(rng.random(60), 1)  # ties included
    w = rng.integers(0, 3, size=(4, 60))
    got = weighted_auroc(y, s, w)
    for r in range(4):
        rows = np.repeat(np.arange(60), w[r])
        assert got[r] == pytest.approx(auroc(y[rows], s[rows]))
    assert np.isnan(weighted_auroc(y, s, (~y)[None].astype(float)))[0]  # no positive left


def test_t_interval_matches_students_t_when_three_values():
    interval = t_interval(np.array([1.0, 2.0, 3.0]))
    assert interval.value == 2.0 and interval.high - 2.0 == pytest.approx(4.303 / np.sqrt(3))


def _grid(effects: dict[int, float], *, n: int = 240, cameras: bool = False) -> GridScores:
    rng = np.random.default_rng(1)
    labels = (rng.random((n, 3)) < 0.3).astype(np.float32)
    probs = {}
    for seed, effect in effects.items():
        noise = np.random.default_rng(10 + seed).normal(size=(n, 3))
        probs[("b", seed)] = labels * 0.5 + noise
        probs[("a", seed)] = labels * (0.5 + effect) + noise
    cams = np.array(["x", "y", "z"] * (n // 3)) if cameras else np.array([""] * n)
    return GridScores(
        ids=["p", "q", "r"],
        labels=labels,
        groups=np.arange(n) // 2,
        cameras=cams,
        seen_cameras=frozenset({"x", "y"}),
        oct_visible=["p"],
        probs=probs,
    )


def test_compare_establishes_difference_when_every_seed_agrees():
    found = compare(Resampled(_grid({0: 1.0, 1: 1.1, 2: 0.9}), resamples=200), "a", "b", rows="all", classes="all")
    assert found is not None and found.value > 0 and found.verdict == "established"
    assert found.seeds_and_patients.low > 0 and found.between_seeds.low > 0


def test_compare_does_not_establish_difference_when_one_seed_carries_it():
    found = compare(Resampled(_grid({0: 1.5, 1: 0.0, 2: 0.0}), resamples=200), "a", "b", rows="all", classes="all")
    assert found is not None and found.value > 0
    assert found.patients.low > 0  # the models are reliably different on these patients ...
    assert found.verdict == "not established"  # ... but the seeds do not agree


def test_compare_reports_one_seed_and_camera_rows_when_asked():
    resampled = Resampled(_grid({0: 1.0}, cameras=True), resamples=50)
    found = compare(resampled, "a", "b", rows="held_out", classes="oct_visible")
    assert found is not None and found.verdict == "one seed"
    assert int(resampled.grid.rows("held_out").sum()) == 80 and int(resampled.grid.rows("seen").sum()) == 160
    assert compare(resampled, "a", "missing", rows="all", classes="all") is None


def test_verdict_is_established_against_when_intervals_below_zero():
    from predilect.metrics import Interval

    below = Interval(-0.05, -0.08, -0.02)
    assert verdict(below, below, 5) == "established against"
    assert verdict(below, Interval(-0.05, -0.1, 0.01), 5) == "not established"


def test_zero_shot_score_chosen_on_trained_val_when_held_out_labels_differ():
    y = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [0, 0]], np.float32)
    trained = {"val_trained__labels": y, "val_trained__global": y * 0.1, "val_trained__site": y + 1.0}
    trained["val_trained__sum"] = -y
    runs = {("uopsl", 0): {**trained, "val__labels": np.zeros((5, 1)), "val__closed__global": np.ones((5, 1))}}
    chosen, means = choose_zero_shot_score(runs)
    assert means["global"] == means["site"] == 1.0 and means["sum"] == 0.0
    assert chosen in ("global", "site")  # whatever the held-out val labels are: they are not read
