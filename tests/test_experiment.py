"""`predilect experiment`: a tiny ablation grid end to end (two variants, one seed)."""

import json

from predilect.training.experiment_cli import main as experiment_main


def test_experiment_grid_writes_paired_differences_and_reuses_cells_when_rerun(phantom_manifest, tmp_path, capsys):
    argv = [
        "--manifest",
        str(phantom_manifest),
        "--out",
        str(tmp_path / "grid"),
        "--seeds",
        "0",
        "--variants",
        "full,shuffled,frozen",
        "--set",
        "data.preprocess.size=64",
        "--set",
        "model.widths=[8, 16, 32]",
        "--set",
        "loop.batch_size=8",
        "--set",
        "loop.epochs=1",
        "--set",
        "pretrain.in_memory=true",
        "--pretrain-set",
        "data.oct.size=64",
        "--resamples",
        "40",
    ]
    assert experiment_main(argv) == 0
    summary = json.loads((tmp_path / "grid" / "summary.json").read_text())
    cells = summary["cells"]
    assert set(cells) == {"full/seed0", "shuffled/seed0", "frozen/seed0"}
    difference = summary["comparisons"]["full - shuffled"]["all@all"]
    assert difference["patients"]["low"] <= difference["value"] <= difference["patients"]["high"]
    assert difference["verdict"] == "one seed"  # a claim needs the seeds' spread
    # frozen reused full's pretraining; no pretraining of its own
    assert not (tmp_path / "grid" / "frozen" / "seed0" / "pretrain").exists()
    shuffled = json.loads((tmp_path / "grid" / "shuffled" / "seed0" / "pretrain" / "config.json").read_text())
    assert shuffled["pretrain"]["shuffle_oct_labels"] is True
    capsys.readouterr()
    assert experiment_main([*argv, "--summary-only"]) == 0  # finished cells are read, not retrained
    assert "full - shuffled" in capsys.readouterr().out
    first = (tmp_path / "grid" / "summary.md").read_text()
    alone = ["--out", str(tmp_path / "grid"), "--seeds", "0", "--variants", "full,shuffled,frozen", "--resamples", "40"]
    assert experiment_main([*alone, "--summary-only"]) == 0  # the grid folder alone, no manifest
    again = (tmp_path / "grid" / "summary.md").read_text()
    assert again.split("\n", 3)[3] == first.split("\n", 3)[3]  # the same figures (the command line differs)


def test_experiment_resumes_stopped_cell_to_the_uninterrupted_scores_when_rerun(
    phantom_manifest, tmp_path, monkeypatch
):
    import numpy as np

    import predilect.training.finetune as finetune_module

    def argv(out):
        args = ["--manifest", str(phantom_manifest), "--out", str(out), "--seeds", "0", "--variants", "full"]
        for option in ("data.preprocess.size=64", "model.widths=[8, 16, 32]", "loop.batch_size=8", "loop.epochs=2"):
            args += ["--set", option]
        return [*args, "--set", "loop.checkpoint_every_steps=1", "--pretrain-set", "data.oct.size=64", "--train-only"]

    assert experiment_main(argv(tmp_path / "whole")) == 0
    real, calls = finetune_module.site_bce, []

    def stop_on_the_fourth_step(*a, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the sitting ends mid-way through stage 2
        return real(*a, **kw)

    monkeypatch.setattr(finetune_module, "site_bce", stop_on_the_fourth_step)
    assert experiment_main(argv(tmp_path / "stopped")) != 0  # "interrupted"
    cell = tmp_path / "stopped" / "full" / "seed0"
    assert (cell / "state.pt").is_file() and not (cell / "scores.npz").exists()
    monkeypatch.setattr(finetune_module, "site_bce", real)
    assert experiment_main(argv(tmp_path / "stopped")) == 0  # the next sitting resumes it
    with np.load(cell / "scores.npz") as resumed, np.load(tmp_path / "whole/full/seed0/scores.npz") as whole:
        np.testing.assert_array_equal(resumed["probs"], whole["probs"])
