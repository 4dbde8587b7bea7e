"""`predilect train pretrain|finetune`: the two UOPSL stages (``predilect.training.pretrain``, ``.finetune``).

    predilect train pretrain --manifest M --oct-manifest O --out RUN/pretrain.safetensors [--no-oct ...]
    predilect train finetune --manifest M --pretrained RUN/pretrain.safetensors --out RUN2/model.safetensors

A run is a typed config (``--config FILE.toml`` + ``--set section.key=value``; ``predilect.training.config``)
with sections ``data``, ``loop``, ``model`` and the stage's (``pretrain`` / ``finetune``; one file
may hold both, as the packaged recipes do: ``--config demo``); the resolved config is saved beside
the checkpoint. The flags below are shorthands for ``--set``
(they win over the file), so each ablation is one flag: ``--no-oct``, ``--no-text``,
``--shuffle-oct-labels``, ``--matrix ablate|freeze|tune``, ``--holdout ID[,ID]``.
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
from predilect.cli import CommandError, command
from predilect.models.classifier import ArchCfg
from predilect.training.config import STAGE_SECTIONS, add_config_options, load_config
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


def _parser(stage: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"predilect train {stage}", description=_DESCRIPTIONS[stage])
    artifacts = default_artifacts()
    default_out = artifacts.pretrain_checkpoint if stage == "pretrain" else artifacts.checkpoint
    p.add_argument("--out", type=Path, default=default_out, help="checkpoint to write; the run lives in its folder")
    p.add_argument("--resume", action="store_true", help="continue the run in the --out folder")
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


def _run(stage: str, argv: Sequence[str]) -> int:
    args = _parser(stage).parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = [*args.overrides, *_overrides(args)]
    report = lambda line: print(line, flush=True)  # noqa: E731
    if stage == "pretrain":
        run = load_config(args.config, overrides=overrides, cls=PretrainRun)
        run = _default_paths(run)
        result = pretrain(run, args.out, resume=args.resume, cache_dir=args.cache_dir, report=report)
        meta = result.meta
    else:
        frun = load_config(args.config, overrides=overrides, cls=FinetuneRun)
        frun = _default_paths(frun)
        result2 = finetune(frun, args.out, resume=args.resume, cache_dir=args.cache_dir, report=report)
        meta = result2.meta  # type: ignore[assignment]
        if result2.test_macro_auroc is not None:
            per = ", ".join(f"{k} {v:.3f}" for k, v in result2.test_auroc.items())
            print(f"test macro AUROC {result2.test_macro_auroc:.4f} ({per})")
    if meta is not None:
        print(f"checkpoint {args.out} version {meta.version}")
        metrics = {"version": meta.version, **meta.metrics}
        (args.out.parent / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return 0


R = typing.TypeVar("R", PretrainRun, FinetuneRun)


def _default_paths(run: R) -> R:
    """The artefact layout's manifest, and the OCT manifest beside it, when the run names none."""
    data = run.data
    manifest = data.manifest or default_artifacts().manifest
    if not manifest.is_file():
        raise CommandError(f"fundus manifest not found: {manifest}")
    update: dict[str, Any] = {"manifest": manifest}
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
        print(usage)
        return 0
    if not args or args[0] not in STAGES:
        raise CommandError(f"choose a stage: {' or '.join(STAGES)} ({usage})")
    return _run(args[0], args[1:])
