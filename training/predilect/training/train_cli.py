"""`predilect train pretrain|finetune`: the two UOPSL stages (``predilect.training.pretrain``, ``.finetune``).

    predilect train pretrain --manifest M --oct-manifest O --out runs/pre          # runs/pre/pretrain.safetensors
    predilect train finetune --manifest M --pretrained runs/pre --out runs/ft      # runs/ft/model.safetensors
    predilect train finetune --config runs/ft/config.json --out runs/ft-again     # the same run again
    predilect train finetune --out runs/ft --resume                               # continue a stopped run

``--out`` is the run's folder: the checkpoint, ``config.json`` (the resolved config, its paths
relative to the folder), ``metrics.json``, ``state.pt`` (resumable state), ``steps.csv`` and
``epochs.csv``. A run is a typed config (``--config FILE.toml`` + ``--set section.key=value``;
``predilect.training.config``; an example: ``training/examples/run.toml``) with sections ``data``,
``loop``, ``model`` and the stage's (``pretrain`` / ``finetune``; one file may hold both, as the
packaged recipes do: ``--config demo``). ``--resume`` continues the run in ``--out`` from its own
``config.json``. The flags below are shorthands for ``--set`` (they win over the file), so each
ablation is one flag: ``--no-oct``, ``--no-text``, ``--shuffle-oct-labels``, ``--matrix
ablate|freeze|tune``, ``--holdout ID[,ID]``. Each epoch prints its loss, the validation split's
macro AUROC and an ETA; training never scores the test split (``predilect evaluate`` does).
Stage 1 writes a pretraining checkpoint (never served); stage 2 writes the served checkpoint
that ``predilect export`` turns into ONNX.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from predilect.artifacts import default_artifacts
from predilect.cli import CommandError, command, description
from predilect.models.classifier import ArchCfg
from predilect.outdir import check_out_folder
from predilect.training.config import CONFIG_FILE, STAGE_SECTIONS, add_config_options, load_config
from predilect.training.finetune import FinetuneCfg, FinetuneRun, finetune
from predilect.training.loop import LoopCfg
from predilect.training.pretrain import PretrainCfg, PretrainRun, pretrain

STAGES = STAGE_SECTIONS
LOOP_FLAGS = ("epochs", "batch_size", "grad_accum", "lr", "weight_decay", "seed", "device", "workers", "amp")
DATA_FLAGS = {  # flag dest -> config key
    "manifest": "data.manifest",
    "oct_manifest": "data.oct_manifest",
    "catalog": "data.catalog",
    "image_size": "data.preprocess.size",
    "oct_size": "data.oct.size",
    "sampling": "data.sampling",
    "augment": "data.augment.enabled",
}


def _field_option(group: argparse._ArgumentGroup, cls: type, name: str, dest: str) -> None:
    """One ``--name`` flag for dataclass field ``name``, absent from the namespace unless given."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    hint = typing.get_type_hints(cls)[name]
    flag = "--" + name.replace("_", "-")
    help_ = f"{f.metadata.get('help', '')} (default: {f.default})"
    if hint is bool:
        group.add_argument(
            flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_
        )
        return
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    metavar = name.upper()
    if origin is tuple:
        nargs: int | str = "*" if args[-1] is Ellipsis else len(args)
        group.add_argument(
            flag, dest=dest, type=args[0], nargs=nargs, default=argparse.SUPPRESS, help=help_, metavar=metavar
        )
        return
    group.add_argument(flag, dest=dest, type=hint, default=argparse.SUPPRESS, help=help_, metavar=metavar)


CHECKPOINTS = {"pretrain": "pretrain.safetensors", "finetune": "model.safetensors"}
"""The checkpoint each stage writes into its run folder (``--out``)."""


def _parser(stage: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"predilect train {stage}",
        description=f"{_DESCRIPTIONS[stage]}\n\n{description(__doc__)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    artifacts = default_artifacts()
    default_out = (artifacts.pretrain_checkpoint if stage == "pretrain" else artifacts.checkpoint).parent
    p.add_argument(
        "--out",
        type=Path,
        default=default_out,
        metavar="DIR",
        help=f"the run's folder: {CHECKPOINTS[stage]}, config.json, metrics.json, logs (default {default_out})",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in the --out folder, from its own config.json"
    )
    p.add_argument("--cache-dir", type=Path, default=artifacts.cache, help="cache of preprocessed tensors")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    add_config_options(p)
    data = p.add_argument_group("data (shorthands for --set data.*)")
    data.add_argument("--manifest", type=Path, default=argparse.SUPPRESS, help="fundus manifest CSV (v2)")

    data.add_argument(
        "--catalog",
        type=Path,
        default=argparse.SUPPRESS,
        help="catalog JSON (default: phantom_catalog.json beside the manifest if present, else the built-in)",
    )
    data.add_argument("--image-size", type=int, default=argparse.SUPPRESS, help="fundus input side (default 224)")
    data.add_argument("--sampling", default=argparse.SUPPRESS, help="shuffle | balanced | sequential")
    data.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help="augment training images"
    )
    if stage == "pretrain":
        data.add_argument(
            "--oct-manifest",
            type=Path,
            default=argparse.SUPPRESS,
            help="unpaired OCT manifest (default: oct_manifest.csv beside the manifest if present)",
        )
        data.add_argument("--oct-size", type=int, default=argparse.SUPPRESS, help="OCT input side (default 128)")
    loop = p.add_argument_group("loop (shorthands for --set loop.*)")
    for name in LOOP_FLAGS:
        _field_option(loop, LoopCfg, name, f"loop.{name}")
    model = p.add_argument_group("model (shorthands for --set model.*)")
    for f in dataclasses.fields(ArchCfg):
        _field_option(model, ArchCfg, f.name, f"model.{f.name}")
    section = p.add_argument_group(f"{stage} (shorthands for --set {stage}.*)")
    cls = PretrainCfg if stage == "pretrain" else FinetuneCfg
    for f in dataclasses.fields(cls):
        _field_option(section, cls, f.name, f"{stage}.{f.name}")
    return p


_DESCRIPTIONS = {
    "pretrain": "Stage 1: unpaired fundus<->text and OCT<->text contrastive pretraining; "
    "the predilection-sites matrix is learned in OCT latent space.",
    "finetune": "Stage 2: fundus-only fine-tuning of the served classifier, the sites matrix carried into "
    "fundus token space.",
}


def _split_commas(values: Sequence[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _overrides(args: argparse.Namespace) -> list[str]:
    """The shorthand flags given, as ``--set`` overrides (applied after the file's and --set's)."""
    given: dict[str, Any] = vars(args)
    out = []
    for dest, value in given.items():
        key = DATA_FLAGS.get(dest, dest if "." in dest else None)
        if key is None:
            continue
        if key.endswith(".holdout"):
            value = _split_commas(value)
        if isinstance(value, Path):
            value = str(value)
        out.append(f"{key}={json.dumps(list(value) if isinstance(value, tuple) else value)}")
    return out


def _config_file(args: argparse.Namespace) -> Path | None:
    """The config the run starts from: ``--config``; with ``--resume`` and none given, the run's own."""
    if args.config is not None or not args.resume:
        return args.config
    saved = args.out / CONFIG_FILE
    if not saved.is_file():
        raise CommandError(f"nothing to resume in {args.out}: it holds no {CONFIG_FILE} (is --out the run's folder?)")
    return saved


def _run(stage: str, argv: Sequence[str]) -> int:
    args = _parser(stage).parse_args(argv)
    check_out_folder(args.out, holds=f"{CHECKPOINTS[stage]}, {CONFIG_FILE}, metrics.json")
    checkpoint = args.out / CHECKPOINTS[stage]
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = [*args.overrides, *_overrides(args)]
    config = _config_file(args)
    report = lambda line: print(line, flush=True)  # noqa: E731
    if config is not None and config != args.config:
        report(f"resuming with the run's own config {config}")
    if stage == "pretrain":
        run = load_config(config, overrides=overrides, cls=PretrainRun)
        run = _default_paths(run)
        result = pretrain(run, checkpoint, resume=args.resume, cache_dir=args.cache_dir, report=report)
        meta = result.meta
    else:
        frun = load_config(config, overrides=overrides, cls=FinetuneRun)
        frun = _default_paths(frun)
        result2 = finetune(frun, checkpoint, resume=args.resume, cache_dir=args.cache_dir, report=report)
        meta = result2.meta  # type: ignore[assignment]
    if meta is not None:
        print(f"checkpoint {checkpoint} version {meta.version}")
        metrics = {"version": meta.version, **meta.metrics}
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return 0


R = typing.TypeVar("R", PretrainRun, FinetuneRun)


def _default_paths(run: R) -> R:
    """The artefact layout's manifest, and the OCT manifest beside it, when the run names none."""
    data = run.data
    manifest = data.manifest or default_artifacts().manifest
    if not manifest.is_file():
        raise CommandError(f"fundus manifest not found: {manifest}")
    update: dict[str, Any] = {"manifest": manifest}
    if isinstance(run, FinetuneRun) and run.finetune.pretrained and Path(run.finetune.pretrained).is_dir():
        # a stage-1 run folder stands for the checkpoint in it
        section = dataclasses.replace(
            run.finetune, pretrained=str(Path(run.finetune.pretrained) / CHECKPOINTS["pretrain"])
        )
        run = run.model_copy(update={"finetune": section})
    if isinstance(run, PretrainRun) and run.pretrain.oct:
        if data.oct_manifest is None:
            beside = manifest.with_name("oct_manifest.csv")
            update["oct_manifest"] = beside if beside.is_file() else None
        elif not data.oct_manifest.is_file():
            raise CommandError(f"OCT manifest not found: {data.oct_manifest}")
    return run.model_copy(update={"data": data.model_copy(update=update)})


@command("train")
def main(argv: Sequence[str] | None = None) -> int:
    args = list(argv or [])
    usage = "usage: predilect train {pretrain,finetune} [options]  (predilect train <stage> --help)"
    if args and args[0] in ("-h", "--help"):
        stages = "\n".join(f"  {name:<9} {text}" for name, text in _DESCRIPTIONS.items())
        print(f"{usage}\n\nstages:\n{stages}\n\n{description(__doc__)}")
        return 0
    if not args or args[0] not in STAGES:
        raise CommandError(f"choose a stage: {' or '.join(STAGES)} ({usage})")
    return _run(args[0], args[1:])
