"""`predilect experiment`: the UOPSL ablation grid on one data set, with paired-bootstrap CIs.

    predilect experiment --manifest hard/manifest.csv --out runs/hard --seeds 0,1,2 \\
        --variants full,no_oct,shuffled --set data.preprocess.size=128 ...

Each (variant, seed) is trained with the two stages into ``OUT/<variant>/seed<k>/`` and scored
on the test split (``scores.npz``); a finished cell is reused, so a stopped grid continues where
it stopped. Variants (one flag each, as ``predilect train`` spells them):

* ``full``: pretrain (OCT + fundus <-> text, sites learned on OCT), finetune with the matrix tuned;
* ``no_oct``: pretrain ``--no-oct``; ``shuffled``: pretrain ``--shuffle-oct-labels`` (the control);
* ``no_text``: pretrain ``--no-text``; ``no_matrix``: pretrain and finetune ``--matrix ablate``
  (a plain contrastive model: also the zero-shot baseline);
* ``frozen``: ``full``'s pretraining, finetune ``--matrix freeze``; ``scratch``: no pretraining.

The summary (``OUT/summary.md``, ``summary.json``) gives test macro AUROC per variant and seed,
on all trained classes and on the OCT-visible ones, and for each comparison the paired-bootstrap
95% CI of the difference: per seed, and pooled (each resample draws the same patients for every
seed and averages the seeds' differences). Zero-shot categories are scored from the ``full``
and ``no_matrix`` stage-1 checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from predilect.catalog import resolve_catalog
from predilect.cli import CommandError, command
from predilect.models.checkpoint import load_checkpoint, load_pretrain
from predilect.training.config import load_config
from predilect.training.evaluate import clip_zero_shot_arrays, score_classifier, zero_shot_arrays
from predilect.training.finetune import FinetuneRun, finetune
from predilect.training.grid_report import CLIP_ZERO_SHOT, ZERO_SHOT, jsonable, markdown, summarise, write_split
from predilect.training.loop import STATE_FILE
from predilect.training.pretrain import PretrainRun, pretrain
from predilect.training.stages import read_splits


@dataclass(frozen=True)
class Variant:
    """One row of the grid: stage-1 and stage-2 overrides, and whose stage 1 it reuses (``None``:
    its own; ``"none"``: no stage 1, trained from scratch)."""

    pretrain: tuple[str, ...] = ()
    finetune: tuple[str, ...] = ()
    reuse: str | None = None
    oct_manifest: str = "oct_manifest.csv"  # beside the fundus manifest, unless --oct-manifest


VARIANTS: dict[str, Variant] = {
    "full": Variant(),
    "no_oct": Variant(("pretrain.oct=false",)),
    "shuffled": Variant(("pretrain.shuffle_oct_labels=true",)),
    "shuffled_redrawn": Variant(("pretrain.redraw_oct_labels=true",)),
    "no_site_oct": Variant(("pretrain.w_site_oct=0.0", "pretrain.w_diversity=0.0")),
    "fundus_sites": Variant(("pretrain.oct=false", 'pretrain.site_source="fundus"')),
    "no_text": Variant(("pretrain.text=false",)),
    "no_matrix": Variant(('pretrain.matrix="ablate"',), ('finetune.matrix="ablate"',)),
    "frozen": Variant((), ('finetune.matrix="freeze"',), "full"),
    "random_sites": Variant((), ('finetune.matrix="random"',), "full"),
    "mean_pool": Variant((), ('finetune.matrix="ablate"',), "full"),
    "scratch": Variant((), (), "none"),
    "coda": Variant(
        ('pretrain.matrix="ablate"', 'pretrain.objective="coda"', 'pretrain.oct_pairing="same_class"'),
        ('finetune.matrix="ablate"',),
    ),
    "full_local": Variant(('model.backbone="conv-local"', 'model.heatmap="evidence"')),
    "full_local8": Variant(('model.backbone="conv-local8"', 'model.heatmap="evidence"')),
    # geometry-robust: a spread of field angles on both sides (fundus zoom, OCT line stretch)
    "full_geo": Variant(("pretrain.oct_span_jitter=0.2", "data.augment.scale=0.2"), ("data.augment.scale=0.2",)),
    "shuffled_redrawn_geo": Variant(
        ("pretrain.redraw_oct_labels=true", "pretrain.oct_span_jitter=0.2", "data.augment.scale=0.2"),
        ("data.augment.scale=0.2",),
    ),
    "no_oct_geo": Variant(("pretrain.oct=false", "data.augment.scale=0.2"), ("data.augment.scale=0.2",)),
    "paired": Variant(('pretrain.oct_pairing="same_eye"', "pretrain.w_pair=1.0"), (), None, "oct_paired_manifest.csv"),
}
"""The variants, one flag each as ``predilect train`` spells them (see the module docstring)."""

ZERO_SHOT_VARIANTS = ("full", "no_matrix")
"""Whose stage-1 models score the zero-shot categories: UOPSL and the plain contrastive baseline."""

COMPARISONS = (
    ("full", "shuffled"),
    ("full", "shuffled_redrawn"),
    ("full", "no_oct"),
    ("shuffled", "no_oct"),
    ("shuffled_redrawn", "no_oct"),
    ("shuffled_redrawn", "shuffled"),
    ("full", "no_site_oct"),
    ("full", "fundus_sites"),
    ("full", "random_sites"),
    ("random_sites", "mean_pool"),
    ("full", "mean_pool"),
    ("full", "no_text"),
    ("full", "no_matrix"),
    ("full", "frozen"),
    ("full", "scratch"),
    ("full", "coda"),
    ("coda", "no_oct"),
    ("paired", "full"),
    ("paired", "no_oct"),
    ("full_local", "full"),
    ("full_local8", "full"),
    ("full_geo", "shuffled_redrawn_geo"),
    ("full_geo", "no_oct_geo"),
    ("full_geo", "full"),
)

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect experiment", description=__doc__.splitlines()[0])
    p.add_argument(
        "--manifest", type=Path, default=None, help="fundus manifest (train/val/test); --summary-only reads OUT alone"
    )
    p.add_argument("--oct-manifest", type=Path, default=None, help="default: oct_manifest.csv beside --manifest")
    p.add_argument("--catalog", type=Path, default=None, help="default: the catalog beside the manifest")
    p.add_argument("--out", type=Path, required=True, help="experiment folder")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--variants", default="full,no_oct,shuffled", help=f"comma-separated, of {list(VARIANTS)}")
    p.add_argument(
        "--set",
        dest="common",
        action="append",
        default=[],
        help="override for both stages (pretrain.*/finetune.* go to theirs)",
    )
    p.add_argument("--pretrain-set", action="append", default=[], help="override for stage 1 only")
    p.add_argument("--finetune-set", action="append", default=[], help="override for stage 2 only")
    p.add_argument("--oct-visible", default=None, help="classes of the OCT-visible comparison (default: phantom.json)")
    p.add_argument("--zero-shot", default=None, help="held-out categories to score (default: phantom.json)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--summary-only", action="store_true", help="train nothing; summarise the finished cells")
    p.add_argument("--train-only", action="store_true", help="train the missing cells; write no summary")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    clip = p.add_argument_group("a local CLIP as a second zero-shot baseline (open_clip layout; never downloaded)")
    clip.add_argument("--clip-checkpoint", type=Path, default=None, help="open_clip CLIP state dict (native ViT)")
    clip.add_argument("--clip-tokenizer", type=Path, default=None, help="tokenizer.json of its vocabulary")
    clip.add_argument("--clip-heads", type=int, default=None, help="attention heads (default width / 64)")
    clip.add_argument("--clip-act", default="gelu", help="gelu | quick_gelu (OpenAI weights)")
    return p


def _phantom_info(manifest: Path) -> dict[str, Any]:
    path = manifest.with_name("phantom.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def _ids(text: str | None, fallback: Sequence[str]) -> list[str]:
    return [d.strip() for d in text.split(",") if d.strip()] if text else list(fallback)


def run_cell(args: argparse.Namespace, variant: str, seed: int, holdout: list[str]) -> Path:
    """Train one (variant, seed) unless done; returns its folder (holding ``scores.npz``). A cell
    stopped mid-run resumes from its run state (``predilect.training.loop``)."""
    spec = VARIANTS[variant]
    fine_set, reuse = list(spec.finetune), spec.reuse
    cell = args.out / variant / f"seed{seed}"
    if (cell / "scores.npz").is_file():
        return cell
    paths = [f'data.manifest="{args.manifest}"'] + ([f'data.catalog="{args.catalog}"'] if args.catalog else [])
    common = [*paths, *args.common, f"loop.seed={seed}"]
    pretrained = ""
    if reuse != "none":
        owner = reuse or variant
        source = args.out / owner / f"seed{seed}" / "pretrain" / "pretrain.safetensors"
        if not source.is_file():
            owner_spec = VARIANTS[owner]
            held = [f"pretrain.holdout={json.dumps(holdout)}"]
            mine = [o for o in common if not o.startswith("finetune.")]
            overrides = [*mine, *args.pretrain_set, *held, *owner_spec.pretrain]
            run = load_config(None, overrides=overrides, cls=PretrainRun)
            oct_manifest = args.oct_manifest or args.manifest.with_name(owner_spec.oct_manifest)
            run = run.model_copy(update={"data": run.data.model_copy(update={"oct_manifest": oct_manifest})})
            resume = (source.parent / STATE_FILE).is_file()
            pretrain(
                run, source, resume=resume, cache_dir=args.out / "cache", report=_reporter(owner, seed, "pretrain")
            )
        pretrained = str(source)
    held = [f"finetune.holdout={json.dumps(holdout)}"]
    mine = [o for o in common if not o.startswith("pretrain.")]
    fine = load_config(None, overrides=[*mine, *args.finetune_set, *held, *fine_set], cls=FinetuneRun)
    fine = fine.model_copy(update={"finetune": dataclasses.replace(fine.finetune, pretrained=pretrained)})
    checkpoint = cell / "model.safetensors"
    resume = (cell / STATE_FILE).is_file()
    result = finetune(
        fine, checkpoint, resume=resume, cache_dir=args.out / "cache", report=_reporter(variant, seed, "finetune")
    )
    _score(args, cell, checkpoint, result.seconds)
    if variant in ZERO_SHOT_VARIANTS and reuse is None:
        zero_shot_record(args, cell / "pretrain", holdout)
    return cell


def _reporter(variant: str, seed: int, stage: str) -> Callable[[str], None]:
    return lambda line: print(f"[{variant} seed{seed} {stage}] {line}", flush=True)


def _score(args: argparse.Namespace, cell: Path, checkpoint: Path, seconds: float) -> None:
    model, meta = load_checkpoint(checkpoint)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    catalog, _ = resolve_catalog(args.catalog, args.manifest)
    held = [d for d in catalog.ids if d not in set(meta.catalog.ids)]
    splits = read_splits(args.manifest, catalog=catalog, drop=held)
    test = score_classifier(model, splits.test, meta.preprocess, meta.catalog, in_memory=True, cache_dir=None)
    np.savez_compressed(
        cell / "scores.npz",
        probs=test.probs,
        labels=test.labels,
        ids=np.array(meta.catalog.ids),
        paths=np.array([str(r.path) for r in test.records]),
        seconds=np.array(seconds),
    )


# ----------------------------------------------------------------------------- per-cell records


def zero_shot_record(args: argparse.Namespace, pretrain_dir: Path, holdout: list[str]) -> None:
    """``pretrain_dir/zero_shot.npz`` from its stage-1 checkpoint (once; see ``zero_shot_arrays``)."""
    path, checkpoint = pretrain_dir / ZERO_SHOT, pretrain_dir / "pretrain.safetensors"
    if path.is_file() or not checkpoint.is_file() or not holdout:
        return
    model, meta = load_pretrain(checkpoint)
    if model.cfg.text_mode != "text":
        return  # a model without text cannot read descriptions
    model.to(_device())
    catalog, _ = resolve_catalog(args.catalog, args.manifest)
    splits = read_splits(args.manifest, catalog=catalog)
    arrays = zero_shot_arrays(
        model,
        meta.tokenizer_json,
        catalog,
        holdout,
        {"val": splits.val, "test": splits.test},
        preprocess=meta.preprocess,
        trained=meta.catalog,
    )
    np.savez_compressed(path, **arrays)


def clip_record(args: argparse.Namespace, holdout: list[str]) -> None:
    """``OUT/clip_zero_shot.npz``: a local open_clip model's zero-shot scores (``--clip-checkpoint``)."""
    path = args.out / CLIP_ZERO_SHOT
    if args.clip_checkpoint is None or path.is_file() or not holdout:
        return
    from predilect.models.pretrained import load_open_clip
    from predilect.models.text import load_tokenizer
    from predilect.preprocess import PreprocessCfg

    if args.clip_tokenizer is None:
        raise CommandError("--clip-checkpoint needs --clip-tokenizer, the tokenizer.json of its vocabulary")
    catalog, _ = resolve_catalog(args.catalog, args.manifest)
    preprocess = _first_preprocess(args) or PreprocessCfg()
    clip = load_open_clip(
        args.clip_checkpoint,
        pixel_mean=preprocess.mean,
        pixel_std=preprocess.std,
        heads=args.clip_heads,
        text_heads=args.clip_heads,
        act=args.clip_act,
    ).to(_device())
    tokenizer = load_tokenizer(args.clip_tokenizer.read_text(encoding="utf-8"))
    splits = read_splits(args.manifest, catalog=catalog)
    arrays = clip_zero_shot_arrays(
        clip, tokenizer, catalog, holdout, {"val": splits.val, "test": splits.test}, preprocess=preprocess
    )
    np.savez_compressed(path, **arrays)


def _first_preprocess(args: argparse.Namespace):  # -> PreprocessCfg | None
    for cell in sorted(args.out.glob("*/seed*/pretrain/pretrain.safetensors")):
        return load_pretrain(cell)[1].preprocess
    return None


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@command("experiment")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise CommandError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as e:
        raise CommandError(f"--seeds takes comma-separated integers like 0,1,2, got {args.seeds!r}") from e
    if args.manifest is None and not args.summary_only:
        raise CommandError("--manifest is needed to train; only --summary-only reads a grid folder alone")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if args.manifest is not None:
        info = _phantom_info(args.manifest)
        holdout = _ids(args.zero_shot, info.get("zero_shot", ()))
        oct_visible = _ids(args.oct_visible, info.get("oct_visible", ()))
        if not args.summary_only:
            for seed in seeds:
                for variant in variants:
                    run_cell(args, variant, seed, holdout)
        catalog, _ = resolve_catalog(args.catalog, args.manifest)
        splits = read_splits(args.manifest, catalog=catalog)
        write_split(args.out, splits.test, splits.train, {"oct_visible": oct_visible, "zero_shot": holdout})
        for variant in ZERO_SHOT_VARIANTS:
            for seed in seeds:
                zero_shot_record(args, args.out / variant / f"seed{seed}" / "pretrain", holdout)
        clip_record(args, holdout)
    if args.train_only:
        print(f"cells done ({time.monotonic() - start:.0f}s); no summary (--train-only)")
        return 0
    summary = summarise(args.out, variants, seeds, COMPARISONS, resamples=args.resamples)
    command_line = "predilect experiment " + " ".join(argv if argv is not None else [])
    text = markdown(summary, command_line)
    (args.out / "summary.md").write_text(text, encoding="utf-8")
    (args.out / "summary.json").write_text(json.dumps(jsonable(summary), indent=1) + "\n", encoding="utf-8")
    print(text)
    print(f"summary {args.out / 'summary.md'} ({time.monotonic() - start:.0f}s)")
    return 0
