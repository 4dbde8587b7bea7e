"""A fair zero-shot test: open-vocabulary descriptions in words no trained category uses, scores kept
per stage-1 model, the score chosen on trained categories only."""

import json
import re

import numpy as np
import pytest

from predilect.catalog import DEFAULT_CATALOG
from predilect.models.text import NORMAL_DESCRIPTIONS
from predilect.training.evaluate import OPEN_VOCABULARY, open_vocabulary_catalog
from predilect.training.experiment_cli import main as experiment_main
from predilect.training.phantom.presets import HARD

FUNCTION_WORDS = set(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "and",
        "with",
        "or",
        "to",
        "from",
        "by",
        "as",
        "at",
        "its",
        "it",
        "is",
        "are",
        "be",
        "that",
        "this",
        "which",
        "all",
        "each",
        "every",
        "one",
        "no",
        "not",
        "like",
        "into",
        "over",
        "out",
        "up",
        "than",
        "more",
        "most",
        "both",
        "their",
        "there",
        "while",
        "where",
    ]
)


def _words(texts) -> set[str]:
    return {w for t in texts for w in re.findall(r"[a-z]+", t.lower())} - FUNCTION_WORDS


def test_open_vocabulary_shares_no_content_word_with_trained_categories_when_read():
    described = json.loads(OPEN_VOCABULARY.read_text())["descriptions"]
    assert set(described) == set(HARD.zero_shot)
    trained = _words(NORMAL_DESCRIPTIONS) | _words(
        t for d in HARD.trained for t in (DEFAULT_CATALOG[d].name, *DEFAULT_CATALOG[d].descriptions)
    )
    for disease, texts in described.items():
        assert _words(texts) & trained == set(), disease


def test_open_vocabulary_catalog_swaps_descriptions_when_every_category_described():
    catalog = open_vocabulary_catalog(DEFAULT_CATALOG, ["crvo"])
    assert catalog is not None and catalog.ids == ["crvo"]
    assert catalog["crvo"].descriptions != DEFAULT_CATALOG["crvo"].descriptions
    assert open_vocabulary_catalog(DEFAULT_CATALOG, ["crvo", "dr"]) is None


def test_experiment_keeps_zero_shot_scores_per_stage_one_model_when_categories_held_out(tmp_path):
    from predilect.training.phantom.generate import generate

    data = tmp_path / "hard"
    generate(data, preset="hard", count=48, oct_count=24, seed=5, width=320, height=240, workers=1)
    argv = ["--manifest", str(data / "manifest.csv"), "--out", str(tmp_path / "grid"), "--seeds", "0"]
    argv += ["--variants", "full,no_matrix", "--resamples", "20", "--pretrain-set", "data.oct.size=64"]
    for option in ("data.preprocess.size=64", "model.widths=[8, 16, 32]", "loop.batch_size=8", "loop.epochs=1"):
        argv += ["--set", option]
    assert experiment_main([*argv, "--set", "pretrain.in_memory=true"]) == 0
    for variant in ("full", "no_matrix"):
        with np.load(tmp_path / "grid" / variant / "seed0" / "pretrain" / "zero_shot.npz") as arrays:
            assert list(arrays["heldout"]) == list(HARD.zero_shot)
            assert {"test__closed__global", "test__open__global", "val_trained__global"} <= set(arrays.files)
            assert ("test__closed__site" in arrays.files) == (variant == "full")
    summary = json.loads((tmp_path / "grid" / "summary.json").read_text())
    assert summary["zero_shot"]["chosen"] in ("global", "site", "sum")
    assert set(summary["zero_shot"]["val_trained_mean_auroc"]) == {"global", "site", "sum"}
    assert summary["zero_shot"]["categories"].keys() <= set(HARD.zero_shot)
    assert (tmp_path / "grid" / "test_split.csv").is_file() and (tmp_path / "grid" / "grid.json").is_file()


@pytest.mark.parametrize("missing", ["test_split.csv", "grid.json"])
def test_summary_only_refuses_grid_folder_without_split_when_manifest_absent(tmp_path, missing, capsys):
    (tmp_path / "grid" / "full" / "seed0").mkdir(parents=True)
    assert (
        experiment_main(["--out", str(tmp_path / "grid"), "--seeds", "0", "--variants", "full", "--summary-only"]) == 2
    )
    assert "--manifest" in capsys.readouterr().err
