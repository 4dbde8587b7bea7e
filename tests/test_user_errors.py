"""Errors the user causes and can fix are ``UserError``s: the commands print one line and exit 2, no traceback."""

from __future__ import annotations

import numpy as np
import pytest

from predilect.cli import EXIT_USAGE
from predilect.errors import ConfigError, UserError


def test_experiment_exits_2_naming_the_option_when_seeds_are_not_integers(tmp_path, capsys) -> None:
    from predilect.training.experiment_cli import main

    code = main(["--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "grid"), "--seeds", "0,x"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "--seeds takes comma-separated integers" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["-1", "nan", "lots"])
def test_serve_exits_2_naming_the_option_when_request_limit_is_not_a_size(value: str, tmp_path, capsys) -> None:
    from predilect.serving.serve_cli import main

    with pytest.raises(SystemExit) as e:
        main(["--model-repository", str(tmp_path), "--max-request-mb", value])
    assert e.value.code == EXIT_USAGE and "--max-request-mb" in capsys.readouterr().err


def test_model_grid_raises_config_error_naming_the_option_when_image_size_is_off_stride() -> None:
    from predilect.models.classifier import ModelCfg

    with pytest.raises(ConfigError, match=r"image size 100 is not a multiple of 16, .*--image-size"):
        _ = ModelCfg(num_diseases=2, image_size=100).grid


@pytest.mark.parametrize(
    ("labels", "metric"),
    [
        (np.zeros((6, 2)), "macro_auroc"),
        (np.ones((6, 2)), "macro_auroc"),
        (np.zeros(6), "auroc"),
        (np.zeros(6), "average_precision"),
    ],
)
def test_metric_raises_undefined_metric_error_when_labels_lack_a_class(labels: np.ndarray, metric: str) -> None:
    from predilect import metrics

    scores = np.linspace(0, 1, labels.size).reshape(labels.shape)
    call = {
        "macro_auroc": lambda: metrics.macro_auroc(labels, scores, ["a", "b"]),
        "auroc": lambda: metrics.auroc(labels, scores),
        "average_precision": lambda: metrics.average_precision(labels, scores),
    }[metric]
    with pytest.raises(metrics.UndefinedMetricError) as e:
        call()
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)


def test_calibrate_raises_calibration_error_when_quantile_or_clean_images_fall_short() -> None:
    from predilect import quality
    from predilect.training.gradability import CLEAN, CalibrationError, Measured, calibrate

    def measured(n: int) -> Measured:
        return Measured(
            kinds=[CLEAN] * n,
            strengths=[0.0] * n,
            cameras=[""] * n,
            paths=[f"{i}.jpg" for i in range(n)],
            measures=np.zeros((n, len(quality.MEASURES))),
            refused=np.zeros(n, dtype=bool),
        )

    with pytest.raises(CalibrationError, match=r"clean_quantile must lie in \(0.5, 1\]"):
        calibrate(measured(30), clean_quantile=0.2)
    with pytest.raises(CalibrationError, match="at least 20 clean images, got 5: give a larger phantom"):
        calibrate(measured(5))
    assert issubclass(CalibrationError, UserError)
