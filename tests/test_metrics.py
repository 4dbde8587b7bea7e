import numpy as np
import pytest

from predilect.metrics import auroc, macro_auroc, per_disease_auroc


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


def test_average_precision_matches_mean_precision_at_positives_when_no_ties():
    from predilect.metrics import average_precision

    y = np.array([1, 0, 1, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert average_precision(y, s) == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)


def test_threshold_for_specificity_reaches_target_on_tuning_data_when_applied():
    from predilect.metrics import operating_point, threshold_for_specificity

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = rng.random(500) + y * 0.5
    for target in (0.8, 0.9, 0.95):
        t = threshold_for_specificity(y, s, target)
        assert operating_point(y, s, t)["specificity"] >= target


def test_threshold_max_f1_beats_every_other_score_threshold_when_tuned():
    from predilect.metrics import operating_point, threshold_max_f1

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    s = rng.random(80) + y * 0.3
    best = operating_point(y, s, threshold_max_f1(y, s))["f1"]
    assert all(operating_point(y, s, t)["f1"] <= best + 1e-12 for t in s)


def test_expected_calibration_error_is_zero_when_probabilities_match_rates():
    from predilect.metrics import expected_calibration_error

    probs = np.repeat([0.05, 0.35, 0.75], 20)
    labels = np.concatenate(
        [np.r_[np.ones(1), np.zeros(19)], np.r_[np.ones(7), np.zeros(13)], np.r_[np.ones(15), np.zeros(5)]]
    )
    assert expected_calibration_error(labels, probs) == pytest.approx(0.0)
    assert expected_calibration_error(np.zeros(10), np.full(10, 0.9)) == pytest.approx(0.9)


def test_bootstrap_ci_brackets_value_and_narrows_when_data_grow():
    from predilect.metrics import bootstrap_ci, on_rows

    rng = np.random.default_rng(2)
    widths = []
    for n in (60, 600):
        y = rng.integers(0, 2, n)
        s = rng.random(n) + y * 0.5
        ci = bootstrap_ci(on_rows(auroc, y, s), n, resamples=300)
        assert ci.low <= ci.value <= ci.high and ci.resamples == 300
        widths.append(ci.high - ci.low)
    assert widths[1] < widths[0]


def test_bootstrap_ci_resamples_whole_groups_when_patients_given():
    from predilect.metrics import bootstrap_ci

    values = np.array([0.0, 0.0, 1.0, 1.0])
    seen = []

    def stat(rows):
        seen.append(rows)
        return float(values[rows].mean())

    bootstrap_ci(stat, 4, groups=np.array(["a", "a", "b", "b"]), resamples=20)
    for rows in seen[1:]:  # both eyes of a patient are drawn together, as often as each other
        assert np.sum(rows == 0) == np.sum(rows == 1) and np.sum(rows == 2) == np.sum(rows == 3)


def test_paired_bootstrap_ci_excludes_zero_when_one_model_clearly_better():
    from predilect.metrics import paired_bootstrap_ci

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    good, noise = rng.random(300) + y * 1.0, rng.random(300)
    ci = paired_bootstrap_ci(y, good, noise, auroc, resamples=300)
    assert ci.low > 0.0 and ci.value > 0.2
    same = paired_bootstrap_ci(y, good, good, auroc, resamples=50)
    assert same.value == 0.0 and same.low <= 0.0 <= same.high
