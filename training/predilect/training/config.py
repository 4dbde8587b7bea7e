"""Typed run configuration: a TOML or JSON file, ``--set section.key=value`` overrides, saved with the run.

    [data]
    manifest = "phantom/manifest.csv"       # relative paths are relative to this file
    sampling = "balanced"
    [data.preprocess]
    size = 224
    [loop]
    epochs = 20
    batch_size = 64
    lr = 3e-4

``load_config(path, overrides=["loop.lr=1e-3", "data.augment.enabled=false"])`` validates the
merged values (pydantic; unknown keys and out-of-range values are errors naming the key) and
returns a ``RunConfig`` -- or the subclass a stage passes as ``cls``: stages add their own
sections (``model``, ``pretrain``, ``finetune``) by subclassing ``RunConfig``. An override's
value is read as JSON when it parses (numbers, true/false, lists, quoted strings), else as a
bare string; an invalid value is blamed on what gave it (``--set loop.lr=5: ...`` or the file), and
an unknown key lists the valid ones. ``save_config`` writes the resolved config to
``run_dir/config.json``, its paths relative to the run folder, which ``load_config`` reads back
unchanged from any working directory: ``predilect train <stage> --config RUN/config.json`` trains
the same run again. ``add_config_options`` gives a CLI ``--config FILE`` and repeatable
``--set KEY=VALUE`` (``load_config(args.config, overrides=args.overrides, cls=...)``).
An example to start from: ``training/examples/run.toml``.

A file may hold both stages' sections (``[pretrain]`` and ``[finetune]``): one recipe for a
two-stage run, each stage reading its own section and leaving the other's (``STAGE_SECTIONS``);
any other unknown section is still an error. The recipes Predilect ships (the demo's) are such
files, in ``recipes/`` beside this module: ``recipe("demo")`` is the path of ``recipes/demo.toml``,
and ``--config demo`` reads it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from predilect.errors import ConfigError
from predilect.preprocess import PreprocessCfg
from predilect.training.datasets.augment import AugmentCfg
from predilect.training.datasets.oct import OctCfg
from predilect.training.datasets.sampling import SAMPLING_MODES
from predilect.training.loop import LoopCfg

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_FILE = "config.json"
STAGE_SECTIONS = ("pretrain", "finetune")
"""The sections one training stage owns; a config file may carry both (see the module docstring)."""
RECIPES = Path(__file__).with_name("recipes")
"""The packaged recipes: run configs, one ``<name>.toml`` each."""
C = TypeVar("C", bound="RunConfig")


class Section(BaseModel):
    """Base of config sections: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(Section):
    """Where the data is and how it becomes tensors."""

    manifest: Path | None = None
    """Fundus manifest (CSV, manifest v2)."""
    oct_manifest: Path | None = None
    """OCT manifest of the unpaired OCT corpus, when a stage uses one."""
    catalog: Path | None = None
    """Catalog JSON file; None means ``predilect.catalog.DEFAULT_CATALOG``."""
    preprocess: PreprocessCfg = PreprocessCfg()
    oct: OctCfg = OctCfg()
    augment: AugmentCfg = AugmentCfg()
    sampling: str = "shuffle"
    """Training order: shuffle | balanced (class-balanced) | sequential."""

    @field_validator("sampling")
    @classmethod
    def _known_sampling(cls, value: str) -> str:
        if value not in SAMPLING_MODES:
            raise ValueError(f"must be one of {SAMPLING_MODES}, got {value!r}")
        return value


class RunConfig(Section):
    """The sections every run has; stages subclass it to add theirs."""

    data: DataSection = DataSection()
    loop: LoopCfg = LoopCfg()


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"loop.lr=1e-3"`` -> ``(["loop", "lr"], 0.001)``; the value is JSON when it parses, else a string."""
    key, sep, raw = text.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or not all(parts):
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw.strip()
    return parts, value


def _set(data: dict[str, Any], parts: list[str], value: Any, text: str) -> None:
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _path_fields(model: type[BaseModel]) -> dict[str, set[str]]:
    """Section -> names of its fields typed ``Path`` (or ``Path | None``)."""
    found: dict[str, set[str]] = {}
    for name, info in model.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            for field_name, field_info in section.model_fields.items():
                if Path in (field_info.annotation, *typing.get_args(field_info.annotation)):
                    found.setdefault(name, set()).add(field_name)
    return found


def recipe(name: str) -> Path:
    """The file of the packaged recipe ``name`` (``recipes/<name>.toml``); ConfigError naming those there are."""
    path = RECIPES / f"{name}.toml"
    if not path.is_file():
        known = _recipe_names()
        raise ConfigError(f"no packaged recipe {name!r}; the recipes are {known} (or give a .toml or .json file)")
    return path


def _recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.toml"))


def _read_file(path: Path, cls: type[RunConfig]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from e
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: config files are .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a table of sections")
    for section in STAGE_SECTIONS:  # the other stage's section of a two-stage recipe
        if section not in cls.model_fields:
            data.pop(section, None)
    # relative paths are relative to the file
    _map_paths(data, cls, lambda value: value if os.path.isabs(value) else os.path.normpath(path.parent / value))
    return data


STRING_PATHS = {"finetune": {"pretrained"}, "pretrain": {"text_checkpoint", "tokenizer"}}
"""Fields typed ``str`` that hold a file path when set (``""`` and the tokenizer names are not paths)."""
_NOT_PATHS = {"", "wordpiece", "bytes"}


def _map_paths(data: dict[str, Any], cls: type[BaseModel], fn: Any) -> None:
    """Apply ``fn`` to every file path a config's ``data`` holds (``Path`` fields and ``STRING_PATHS``), in place."""
    fields = _path_fields(cls)
    for section, names in STRING_PATHS.items():
        if section in cls.model_fields:
            fields.setdefault(section, set()).update(names)
    for section, names in fields.items():
        values = data.get(section)
        if isinstance(values, dict):
            for name in names & set(values):
                if isinstance(values[name], str) and values[name] not in _NOT_PATHS:
                    values[name] = fn(values[name])


@typing.overload
def load_config(path: str | os.PathLike | None = None, *, overrides: Sequence[str] = ()) -> RunConfig: ...


@typing.overload
def load_config(path: str | os.PathLike | None = None, *, overrides: Sequence[str] = (), cls: type[C]) -> C: ...


def load_config(
    path: str | os.PathLike | None = None, *, overrides: Sequence[str] = (), cls: type[RunConfig] = RunConfig
) -> RunConfig:
    """The validated config of ``path`` (TOML or JSON; None: defaults) with ``overrides`` applied."""
    data = _read_file(Path(path), cls) if path is not None else {}
    given: dict[tuple[str, ...], str] = {}  # the key path of each --set, and its text
    for text in overrides:
        parts, value = parse_override(text)
        _set(data, parts, value, text)
        given[tuple(parts)] = text
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        problems = [_problem(cls, err, given, path) for err in e.errors()]
        raise ConfigError("; ".join(problems)) from e


def _problem(cls: type[BaseModel], err: Any, given: dict[tuple[str, ...], str], path: str | os.PathLike | None) -> str:
    """One validation error in words, blamed on what gave the value: the ``--set`` that set it, else the file."""
    loc = tuple(str(p) for p in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")

    def gave(key: tuple[str, ...]) -> bool:  # the value at ``key`` is where, or inside what, the error is
        inside = key[: len(loc)] == loc  # the error is about a section that holds the key set
        return loc[: len(key)] == key or (inside and (key[-1] in message or err["type"] == "extra_forbidden"))

    setting = next((text for key, text in given.items() if gave(key)), None)
    if setting is not None:
        where = f"--set {setting}"
    elif path is not None:
        where = f"{path}"
    else:
        where = "config"
    key = ".".join(loc)
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        valid = _valid_keys(cls, loc[:-1])
        return f"{where}: unknown config key {key!r}; valid keys{_under(loc[:-1])}: {', '.join(valid)}"
    return f"{where}: invalid config: {key}: {message}"


def _under(section: tuple[str, ...]) -> str:
    return f" of [{'.'.join(section)}]" if section else ""


def _valid_keys(cls: type[BaseModel], section: tuple[str, ...]) -> list[str]:
    """The keys a section of ``cls`` takes (``section`` a path of field names: ``("loop",)``)."""
    node: Any = cls
    for name in section:
        annotation = _fields(node).get(name)
        node = _section_type(annotation)
        if node is None:
            return []
    return sorted(_fields(node))


def _fields(node: Any) -> dict[str, Any]:
    if isinstance(node, type) and issubclass(node, BaseModel):
        return {name: info.annotation for name, info in node.model_fields.items()}
    if dataclasses.is_dataclass(node):
        hints = typing.get_type_hints(node)
        return {f.name: hints[f.name] for f in dataclasses.fields(node) if f.init and not f.name.startswith("_")}
    return {}


def _section_type(annotation: Any) -> Any:
    """The model or dataclass a field holds (``X | None`` unwrapped), or None for a plain value."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and (issubclass(candidate, BaseModel) or dataclasses.is_dataclass(candidate)):
            return candidate
    return None


def save_config(config: RunConfig, run_dir: str | os.PathLike) -> Path:
    """Write the resolved ``config`` to ``run_dir/config.json`` (atomically); returns the path.

    Its file paths are written relative to ``run_dir`` (as ``load_config`` reads a file's relative
    paths), so ``load_config`` of the saved file from any working directory, or of a copy of the
    run folder with the data beside it as before, gives the same config."""
    path = Path(run_dir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config.model_dump(mode="json")
    folder = os.path.abspath(path.parent)
    _map_paths(data, type(config), lambda value: os.path.relpath(os.path.abspath(value), folder))
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def config_file(value: str) -> Path:
    """A ``--config`` value: a file, or the name of a packaged recipe (``demo``) when it names no file."""
    path = Path(value)
    if path.suffix or os.sep in value or path.exists():
        return path
    try:
        return recipe(value)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set section.key=value``."""
    parser.add_argument(
        "--config",
        type=config_file,
        default=None,
        metavar="FILE|RECIPE",
        help=f"run config file (.toml or .json), or a packaged recipe ({', '.join(_recipe_names())})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set loop.lr=1e-3 (repeatable)",
    )
