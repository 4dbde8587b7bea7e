import numpy as np
import pytest

from predilect.training.metrics import auroc, macro_auroc, per_disease_auroc


def test_auroc_is_one_when_scores_separate_classes():
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0


def test_auroc_counts_ties_half_when_scores_equal():
    assert auroc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5


def test_auroc_matches_pairwise_definition_when_random():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 203)
    s = rng.random(203).round(2)  # rounding makes ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert auroc(y, s) == pytest.approx(pairwise)


def test_auroc_raises_when_one_class_missing():
    with pytest.raises(ValueError, match="positives and negatives"):
        auroc(np.ones(4), np.arange(4))


def test_macro_auroc_skips_columns_when_single_class():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    s = np.array([[0.9, 0.1], [0.1, 0.2], [0.8, 0.3], [0.2, 0.4]])
    assert per_disease_auroc(y, s, ["a", "b"]) == {"a": 1.0}
    assert macro_auroc(y, s, ["a", "b"]) == 1.0


def test_paired_bootstrap_ci_brackets_zero_when_scores_identical():
    from predilect.training.metrics import paired_bootstrap_ci

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (120, 3))
    s = rng.random((120, 3))
    ci = paired_bootstrap_ci(y, s, s.copy(), ["a", "b", "c"], resamples=200)
    assert (ci.difference, ci.low, ci.high) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_ci_excludes_zero_when_one_model_is_much_better():
    from predilect.training.metrics import paired_bootstrap_ci

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (200, 2))
    noise = rng.random((200, 2))
    good = 0.7 * y + 0.3 * noise
    ci = paired_bootstrap_ci(y, noise, good, ["a", "b"], resamples=300, seed=2)
    assert 0.0 < ci.low <= ci.difference <= ci.high
    again = paired_bootstrap_ci(y, noise, good, ["a", "b"], resamples=300, seed=2)
    assert again == ci  # seeded: reproducible


def test_paired_bootstrap_ci_raises_when_shapes_differ():
    from predilect.training.metrics import paired_bootstrap_ci

    with pytest.raises(ValueError, match="must match"):
        paired_bootstrap_ci(np.zeros((4, 1)), np.zeros((4, 1)), np.zeros((3, 1)), ["a"])
