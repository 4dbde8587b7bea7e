"""`predilect evaluate`: the served model's report, lesion localisation, zero-shot categories."""

import json

import numpy as np
import pytest

from predilect.training.evaluate import Localisation, lesion_mask, localisation
from predilect.training.evaluate_cli import main as evaluate_main
from predilect.training.manifest import Record


def _entry(lesions):
    # An 800 x 600 frame, field of view centred, radius 0.38 of the width (304 px): the
    # preprocessor crops a 600 x 600 square (FOV 608 wide, clipped to 600 rows) at the centre.
    return {"width": 800, "height": 600, "fov": {"x": 0.5, "y": 0.5, "r": 0.38}, "lesions": lesions}


def test_lesion_mask_marks_cells_under_lesion_when_mapped_through_fov_crop():
    entry = _entry(
        [{"disease": "dme", "x": 0.5, "y": 0.5, "r": 0.02}, {"disease": "dr", "x": 0.2, "y": 0.1, "r": 0.01}]
    )
    mask = lesion_mask(entry, "dme", 8)
    assert mask[3:5, 3:5].all() and mask.sum() == 4  # the centre cells only
    dr = lesion_mask(entry, "dr", 8)
    # x = 0.2 * 800 = 160 px -> (160 - 100) / 600 = 0.1 of the square; y = 60 / 600 = 0.1: the
    # cells the small circle touches (centre within r + half a cell's diagonal) are the corner three
    assert sorted(zip(*np.nonzero(dr), strict=True)) == [(0, 0), (0, 1), (1, 0)]
    assert not lesion_mask(entry, "amd", 8).any()


def test_localisation_scores_attention_on_lesions_against_uniform_chance_when_peaked(tmp_path):
    path = (tmp_path / "a.jpg").resolve()
    entry = _entry([{"disease": "dme", "x": 0.5, "y": 0.5, "r": 0.02}])
    peaked = np.zeros((1, 1, 8, 8))
    peaked[0, 0, 3:5, 3:5] = 0.25
    uniform = np.full((1, 1, 8, 8), 1 / 64)
    records = [Record(path=path, labels=frozenset({"dme"}))]
    labels = np.ones((1, 1))
    good = localisation(peaked, labels, records, {path: entry}, ["dme"])["dme"]
    flat = localisation(uniform, labels, records, {path: entry}, ["dme"])["dme"]
    assert good == Localisation(mass=1.0, chance=4 / 64, pointing=1.0, pairs=1) and good.lift == pytest.approx(16)
    assert flat.mass == pytest.approx(flat.chance) and flat.lift == pytest.approx(1.0)
    assert localisation(peaked, np.zeros((1, 1)), records, {path: entry}, ["dme"]) == {}  # negatives not scored


def test_evaluate_cli_writes_report_plots_and_json_when_given_checkpoint(pipeline, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["--checkpoint", str(pipeline.checkpoint), "--manifest", str(pipeline.manifest), "--out", str(out)]
    assert evaluate_main([*argv, "--resamples", "50", "--in-memory"]) == 0
    printed = capsys.readouterr().out
    assert "test macro AUROC" in printed and "report" in printed
    report = (out / "report.md").read_text()
    assert "| class | positives | AUROC [95% CI]" in report and "Attention vs drawn lesions" in report
    for png in ("roc.png", "reliability.png", "sites.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "evaluation.json").read_text())
    assert data["macro_auroc"]["low"] <= data["macro_auroc"]["value"] <= data["macro_auroc"]["high"]
    assert "all" in data["localisation"] and data["target_specificity"] == 0.9


def test_evaluate_cli_exits_2_when_checkpoint_missing(tmp_path, capsys):
    assert evaluate_main(["--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_zero_shot_scores_held_out_category_against_plain_clip_when_both_pretrained(phantom_manifest, tmp_path, capsys):
    from predilect.training.pretrain import pretrain
    from predilect.training.train import runs

    small = ["data.preprocess.size=64", "model.widths=[8, 16, 32]", "loop.batch_size=8", "loop.epochs=1"]
    small += ["data.oct.size=64", "pretrain.context_length=32", 'pretrain.holdout=["rp"]']
    paths = {}
    for name, extra in (("uopsl", []), ("clip", ['pretrain.matrix="ablate"'])):
        run, _ = runs(
            phantom_manifest, oct_manifest=phantom_manifest.with_name("oct_manifest.csv"), pretrain=small + extra
        )
        paths[name] = tmp_path / name / "pretrain.safetensors"
        pretrain(run, paths[name])
    out = tmp_path / "zs"
    argv = ["--zero-shot", "rp", "--pretrained", str(paths["uopsl"]), "--baseline", str(paths["clip"])]
    argv += ["--manifest", str(phantom_manifest), "--out", str(out), "--resamples", "30"]
    assert evaluate_main(argv) == 0
    data = json.loads((out / "zero_shot.json").read_text())
    assert set(data["rp"]) == {"uopsl_site", "uopsl_global", "uopsl_sum", "baseline_global", "difference"}
    assert 0.0 <= data["rp"]["uopsl_site"]["value"] <= 1.0
    # a category the model trained on is not zero-shot
    assert evaluate_main([*argv[:1], "dr", *argv[2:]]) == 2
    assert "not zero-shot" in capsys.readouterr().err
