"""`predilect train pretrain|finetune`: the two UOPSL stages (``training.pretrain``, ``training.finetune``).

    predilect train pretrain --manifest M --oct-manifest O --catalog C --out PRE.safetensors [--no-oct ...]
    predilect train finetune --manifest M --catalog C --pretrained PRE.safetensors --out MODEL.safetensors

Stage 1 writes a pretraining checkpoint (never served); stage 2 writes the served checkpoint
that ``predilect export`` turns into ONNX. Each ablation is one flag (``--help`` of each stage).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from predilect.artifacts import default_artifacts
from predilect.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from predilect.cli import CommandError, add_dataclass_options, command, dataclass_from_args

from .finetune import FinetuneCfg, finetune
from .pretrain import PretrainCfg, pretrain

STAGES = ("pretrain", "finetune")


def _common(p: argparse.ArgumentParser) -> None:
    artifacts = default_artifacts()
    p.add_argument("--manifest", type=Path, default=artifacts.manifest, help="fundus manifest CSV (v2)")
    p.add_argument("--catalog", type=Path, default=None, help="catalog JSON (default: the built-in catalog)")
    p.add_argument("--cache-dir", type=Path, default=artifacts.cache, help="cache of preprocessed tensors")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")


def _pretrain_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect train pretrain", description=_doc_line("pretrain"))
    _common(p)
    p.add_argument(
        "--oct-manifest",
        type=Path,
        default=None,
        help="unpaired OCT manifest; default: oct_manifest.csv beside --manifest if present",
    )
    p.add_argument("--out", type=Path, default=default_artifacts().pretrain_checkpoint)
    add_dataclass_options(p, PretrainCfg, title="stage 1")
    return p


def _finetune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect train finetune", description=_doc_line("finetune"))
    _common(p)
    p.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        help="stage-1 checkpoint (`predilect train pretrain`); without it the classifier starts from scratch",
    )
    p.add_argument("--out", type=Path, default=default_artifacts().checkpoint)
    add_dataclass_options(p, FinetuneCfg, title="stage 2")
    return p


def _doc_line(stage: str) -> str:
    return {
        "pretrain": "Stage 1: unpaired fundus<->text and OCT<->text contrastive pretraining; "
        "the predilection-sites matrix is learned in OCT latent space.",
        "finetune": "Stage 2: fundus-only fine-tuning of the served classifier, the sites matrix "
        "carried into fundus token space.",
    }[stage]


def _catalog(path: Path | None) -> Catalog:
    return DEFAULT_CATALOG if path is None else load_catalog(path)


def _split_commas(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def _run_pretrain(argv: Sequence[str]) -> int:
    args = _pretrain_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = dataclass_from_args(PretrainCfg, args)
    cfg = dataclasses.replace(cfg, holdout=_split_commas(cfg.holdout))
    oct_manifest = args.oct_manifest or args.manifest.with_name("oct_manifest.csv")
    if not oct_manifest.is_file():
        if args.oct_manifest is not None:
            raise CommandError(f"OCT manifest not found: {oct_manifest}")
        oct_manifest = None
    result = pretrain(
        args.manifest,
        args.out,
        oct_manifest=oct_manifest,
        catalog=_catalog(args.catalog),
        cfg=cfg,
        cache_dir=args.cache_dir,
        report=lambda line: print(line, flush=True),
    )
    print(f"pretraining checkpoint {args.out} version {result.meta.version} in {result.seconds:.0f}s")
    _write_metrics(args.out, {"version": result.meta.version, **result.meta.metrics})
    return 0


def _run_finetune(argv: Sequence[str]) -> int:
    args = _finetune_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    result = finetune(
        args.manifest,
        args.out,
        catalog=_catalog(args.catalog),
        pretrained=args.pretrained,
        cfg=dataclass_from_args(FinetuneCfg, args),
        cache_dir=args.cache_dir,
        report=lambda line: print(line, flush=True),
    )
    if result.test_macro_auroc is not None:
        per = ", ".join(f"{k} {v:.3f}" for k, v in result.test_auroc.items())
        print(f"test macro AUROC {result.test_macro_auroc:.4f} ({per})")
    print(f"checkpoint {args.out} version {result.meta.version} in {result.seconds:.0f}s")
    _write_metrics(args.out, {"version": result.meta.version, **result.meta.metrics})
    return 0


def _write_metrics(checkpoint: Path, metrics: dict) -> None:
    (checkpoint.parent / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


@command("train")
def main(argv: Sequence[str] | None = None) -> int:
    args = list(argv or [])
    if not args or args[0] not in STAGES:
        usage = "usage: predilect train {pretrain,finetune} [options]  (predilect train <stage> --help)"
        if args and args[0] in ("-h", "--help"):
            print(usage)
            return 0
        raise CommandError(f"choose a stage: {' or '.join(STAGES)} ({usage})")
    return _run_pretrain(args[1:]) if args[0] == "pretrain" else _run_finetune(args[1:])
