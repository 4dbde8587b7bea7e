"""Typed run configs: TOML/JSON files, --set overrides, errors naming the key, the saved config."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from predilect.errors import ConfigError
from predilect.training.config import (
    RunConfig,
    Section,
    add_config_options,
    load_config,
    save_config,
)

TOML = """
[data]
manifest = "phantom/manifest.csv"
sampling = "balanced"

[data.preprocess]
size = 128

[data.augment]
rotate_deg = 5.0

[loop]
epochs = 4
batch_size = 16
lr = 3e-4
"""


def _file(tmp_path: Path, text: str = TOML, name: str = "run.toml") -> Path:
    path = tmp_path / "configs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_load_config_reads_toml_and_resolves_paths_against_the_file_when_relative(tmp_path):
    config = load_config(_file(tmp_path))
    assert config.data.manifest == tmp_path / "configs" / "phantom" / "manifest.csv"
    assert config.data.preprocess.size == 128 and config.data.preprocess.mean == (0.485, 0.456, 0.406)
    assert config.data.augment.rotate_deg == 5.0 and config.data.sampling == "balanced"
    assert (config.loop.epochs, config.loop.batch_size, config.loop.lr) == (4, 16, 3e-4)


def test_load_config_applies_typed_overrides_when_set_given(tmp_path):
    config = load_config(
        _file(tmp_path),
        overrides=["loop.lr=1e-3", "loop.amp=false", "loop.device=cpu", "data.preprocess.mean=[0.5,0.5,0.5]"],
    )
    assert config.loop.lr == 1e-3 and config.loop.amp is False and config.loop.device == "cpu"
    assert config.data.preprocess.mean == (0.5, 0.5, 0.5)


def test_load_config_returns_defaults_when_no_file():
    assert load_config() == RunConfig()


def test_save_config_writes_what_load_config_reads_back_when_round_tripped(tmp_path):
    config = load_config(_file(tmp_path), overrides=["loop.seed=7"])
    saved = save_config(config, tmp_path / "run")
    assert saved == tmp_path / "run" / "config.json"
    assert load_config(saved) == config


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        pytest.param(TOML, ["loop.lr=5"], r"loop: loop\.lr must lie in \(0, 1\)", id="out-of-range"),
        pytest.param(
            TOML,
            ["loop.learning_rate=0.1"],
            r"^--set loop\.learning_rate=0\.1: unknown config key 'loop\.learning_rate'; "
            r"valid keys of \[loop\]: .*\blr\b",
            id="unknown-key-blames-the-set",
        ),
        pytest.param(
            TOML + "\nwarmup = 0.1\n",
            [],
            r"run\.toml: unknown config key 'loop\.warmup'; valid keys of \[loop\]: .*warmup_fraction",
            id="unknown-key-blames-the-file",
        ),
        pytest.param(
            TOML,
            ["model.depth=3"],
            r"^--set model\.depth=3: unknown config key 'model'; valid keys: data, loop$",
            id="unknown-section",
        ),
        pytest.param(
            TOML, ["loop.epochs=0"], r"^--set loop\.epochs=0: invalid config: loop: loop\.epochs", id="set-range"
        ),
        pytest.param(TOML, ["data.sampling=random"], r"data\.sampling: must be one of", id="bad-choice"),
        pytest.param(TOML, ["loop.epochs=many"], r"loop\.epochs: Input should be a valid integer", id="bad-type"),
        pytest.param(TOML, ["loop"], r"section\.key=value", id="override-without-value"),
        pytest.param(TOML, ["loop.epochs.x=1"], r"'epochs' is a value", id="override-into-value"),
        pytest.param("[loop\nepochs = 1", [], r"run\.toml: ", id="bad-toml"),
    ],
)
def test_load_config_raises_naming_key_when_invalid(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_file(tmp_path, text), overrides=overrides)


def test_load_config_raises_when_suffix_unknown(tmp_path):
    with pytest.raises(ConfigError, match=r"\.toml or \.json"):
        load_config(_file(tmp_path, "x: 1", name="run.yaml"))


class _StageSection(Section):
    depth: int = 2
    checkpoint: Path | None = None


class _StageConfig(RunConfig):
    stage: _StageSection = _StageSection()


def test_load_config_validates_a_stage_section_when_config_subclassed(tmp_path):
    path = _file(tmp_path, TOML + '\n[stage]\ndepth = 5\ncheckpoint = "weights.pt"\n')
    config = load_config(path, overrides=["stage.depth=6"], cls=_StageConfig)
    assert config.stage.depth == 6 and config.stage.checkpoint == path.parent / "weights.pt"


def test_config_options_read_file_and_repeated_set_when_parsed(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    args = parser.parse_args(["--config", str(_file(tmp_path)), "--set", "loop.epochs=9", "--set", "loop.seed=2"])
    config = load_config(args.config, overrides=args.overrides)
    assert (config.loop.epochs, config.loop.seed) == (9, 2)
