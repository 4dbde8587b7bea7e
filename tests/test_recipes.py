"""Recipes as data: the packaged demo recipe and the example run config go through the run-config loader."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from predilect.errors import ConfigError
from predilect.training.config import RECIPES, add_config_options, load_config, recipe
from predilect.training.finetune import FinetuneRun
from predilect.training.pretrain import PretrainRun
from predilect.training.train import runs

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "training" / "examples" / "run.toml"

# What `predilect demo` passed as --set overrides before its recipe became a file (seed 0, default epochs),
# and the acquisition-shift policy the recipe has trained with since.
FORMER_DEMO_COMMON = [
    "loop.seed=0",
    "data.preprocess.size=128",
    "model.widths=[24, 48, 96]",
    'model.backbone="conv-local"',
    'model.heatmap="evidence"',
    "loop.lr=0.002",
    "pretrain.in_memory=true",
    "finetune.in_memory=true",
    "data.augment.acquisition.enabled=true",  # added with the acquisition-shift policy
]
FORMER_DEMO_STAGE = ["loop.epochs=24"]


def test_demo_recipe_resolves_to_the_former_demo_overrides_when_loaded(tmp_path):
    manifest, oct_manifest = tmp_path / "manifest.csv", tmp_path / "oct_manifest.csv"
    first, second = runs(manifest, recipe=recipe("demo"), oct_manifest=oct_manifest, common=["loop.seed=0"])
    old_first, old_second = runs(
        manifest,
        oct_manifest=oct_manifest,
        common=FORMER_DEMO_COMMON,
        pretrain=FORMER_DEMO_STAGE,
        finetune=FORMER_DEMO_STAGE,
    )
    assert first.model_dump(mode="json") == old_first.model_dump(mode="json")
    assert second.model_dump(mode="json") == old_second.model_dump(mode="json")
    assert first.model.backbone == "conv-local" and second.loop.epochs == 24  # the recipe, not the defaults


def test_demo_recipe_is_the_packaged_file_when_named():
    path = recipe("demo")
    assert path == RECIPES / "demo.toml" and path.is_file()
    assert path.parent.name == "recipes" and path.parent.parent.name == "training"


def test_recipe_names_the_packaged_recipes_when_unknown():
    with pytest.raises(ConfigError, match=r"no packaged recipe 'dmeo'; the recipes are \['demo'\]"):
        recipe("dmeo")


def test_config_option_reads_packaged_recipe_when_given_its_name(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    assert parser.parse_args(["--config", "demo"]).config == recipe("demo")
    mine = tmp_path / "demo.toml"
    assert parser.parse_args(["--config", str(mine)]).config == mine  # a path stays a path
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", "nosuchrecipe"])


def test_stage_reads_its_own_section_of_a_two_stage_file_when_loaded(tmp_path):
    path = tmp_path / "both.toml"
    path.write_text('[loop]\nepochs = 3\n[pretrain]\nin_memory = true\n[finetune]\nmatrix = "freeze"\n')
    first = load_config(path, cls=PretrainRun)
    second = load_config(path, cls=FinetuneRun)
    assert first.pretrain.in_memory and first.loop.epochs == 3
    assert second.finetune.matrix == "freeze" and not second.finetune.in_memory and second.loop.epochs == 3


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        pytest.param('[finetun]\nmatrix = "freeze"\n', [], r"finetun", id="misspelt-section"),
        pytest.param("[pretrain]\nin_memry = true\n", [], r"pretrain\.in_memry", id="unknown-key-in-own-stage"),
        pytest.param("", ["finetune.matrix=freeze"], r"finetune", id="other-stage-override"),
    ],
)
def test_load_config_raises_config_error_when_a_two_stage_file_or_override_is_wrong(tmp_path, text, overrides, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, overrides=overrides, cls=PretrainRun)


def test_example_run_config_loads_for_both_stages_with_paths_beside_it_when_given():
    first = load_config(EXAMPLE, cls=PretrainRun)
    second = load_config(EXAMPLE, cls=FinetuneRun)
    assert first.data.manifest == (EXAMPLE.parent / "../../data/odir/manifest.csv").resolve()
    assert first.data.oct_manifest == (EXAMPLE.parent / "../../data/multieye_oct/manifest.csv").resolve()
    assert (first.loop.epochs, first.loop.lr, first.data.sampling) == (20, 3e-4, "balanced")
    assert first.pretrain.matrix == "learn" and second.finetune.matrix == "tune"
    assert second.model.backbone == "conv-local" and second.data.preprocess.size == 224
