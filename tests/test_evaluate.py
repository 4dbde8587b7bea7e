"""`predilect evaluate`: the served model's report, lesion localisation, zero-shot categories."""

import json
from pathlib import Path

import numpy as np
import pytest

from predilect.lesions import DrawnImage, Lesion, lesion_cells
from predilect.manifest import Record
from predilect.training.evaluate import Localisation, localisation
from predilect.training.evaluate_cli import main as evaluate_main


def _entry(lesions):
    # An 800 x 600 frame, field of view centred, radius 0.38 of the width (304 px): the FOV is
    # 608 wide (600 rows in the frame), so the preprocessor crops a 608 px square at the centre.
    return DrawnImage("a.jpg", 800, 600, tuple(Lesion(*lesion) for lesion in lesions), (0.5, 0.5, 0.38))


def test_lesion_cells_marks_cells_under_lesion_when_mapped_through_fov_crop():
    entry = _entry([("dme", 0.5, 0.5, 0.02), ("dr", 0.2, 0.1, 0.01), ("amd", 0.2, 0.13, 0.01)])
    box = entry.field_box()
    assert box == pytest.approx((96 / 800, -4 / 600, 704 / 800, 604 / 600))
    mask = lesion_cells(entry, "dme", 8, box)
    assert mask[3:5, 3:5].all() and mask.sum() == 4  # the centre cells only
    # x = 0.2 * 800 = 160 px -> (160 - 96) / 608 = 0.105 of the square; y = (60 + 4) / 608 = 0.105;
    # radius 8 / 608 = 0.013: the disc lies inside cell (0, 0) (0 .. 0.125 both ways)
    assert sorted(zip(*np.nonzero(lesion_cells(entry, "dr", 8, box)), strict=True)) == [(0, 0)]
    # y = (78 + 4) / 608 = 0.135 with the same radius: it straddles the row boundary at 0.125
    assert sorted(zip(*np.nonzero(lesion_cells(entry, "amd", 8, box)), strict=True)) == [(0, 0), (1, 0)]
    assert not lesion_cells(entry, "rvo", 8, box).any()


def test_localisation_scores_attention_on_lesions_against_uniform_chance_when_peaked(tmp_path):
    path = (tmp_path / "a.jpg").resolve()
    entry = _entry([("dme", 0.5, 0.5, 0.02)])
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


def test_evaluate_cli_writes_report_plots_and_json_when_given_checkpoint(pipeline, tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    figures: dict[str, Figure] = {}
    save = Figure.savefig

    def keep(self, fname, *args, **kwargs):  # each plot's figure, to read its axes and legends
        figures[Path(fname).name] = self
        return save(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    out = tmp_path / "eval"
    argv = ["--checkpoint", str(pipeline.checkpoint.parent), "--out", str(out)]  # the run folder, its own data
    assert evaluate_main([*argv, "--resamples", "50", "--in-memory"]) == 0
    printed = capsys.readouterr().out
    assert "the run's own data: " in printed and Path(printed.split("the run's own data: ")[1].split()[0]).samefile(
        pipeline.manifest
    )
    assert "test macro AUROC" in printed and "report" in printed
    report = (out / "report.md").read_text()
    assert "| class | positives | AUROC [95% CI]" in report and "Attention vs drawn lesions" in report
    assert "Training: stage finetune, sites matrix tune, started from `" in report
    assert "{" not in report and '"stage"' not in report, "no raw JSON in the report"
    for png in ("roc.png", "reliability.png", "sites.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        figure = figures[png]
        plots = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
        assert all(ax.get_xlabel() or ax.get_xticks().size == 0 for ax in plots[-1:]), f"{png}: x axis unlabelled"
        assert any(ax.get_ylabel() for ax in plots), f"{png}: y axis unlabelled"
        assert any(ax.get_legend() for ax in plots) or figure.legends, f"{png} has no legend"
    sites = figures["sites.png"]
    bars = [ax for ax in sites.axes if ax.get_label() == "<colorbar>"]
    assert bars and all(bar.get_ylabel() for bar in bars), "sites.png: every colour scale says what it is"
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
    # the open-vocabulary file describes the default catalog's zero-shot categories only
    assert evaluate_main([*argv, "--open-vocabulary"]) == 2
    assert "does not describe" in capsys.readouterr().err
