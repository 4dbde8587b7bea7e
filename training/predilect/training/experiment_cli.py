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
from predilect.metrics import Interval, auroc, bootstrap_ci, macro
from predilect.models.checkpoint import load_checkpoint, load_pretrain
from predilect.training.config import load_config
from predilect.training.evaluate import score_classifier, zero_shot_scores
from predilect.training.finetune import FinetuneRun, finetune
from predilect.training.loop import STATE_FILE
from predilect.training.pretrain import PretrainRun, pretrain
from predilect.training.report import patient_groups
from predilect.training.stages import fundus_dataset, read_splits


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
    "paired": Variant(('pretrain.oct_pairing="same_eye"', "pretrain.w_pair=1.0"), (), None, "oct_paired_manifest.csv"),
}
"""The variants, one flag each as ``predilect train`` spells them (see the module docstring)."""

COMPARISONS = (
    ("full", "shuffled"),
    ("full", "shuffled_redrawn"),
    ("full", "no_oct"),
    ("shuffled", "no_oct"),
    ("shuffled_redrawn", "no_oct"),
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
)

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect experiment", description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, required=True, help="fundus manifest (train/val/test)")
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
    p.add_argument("--threads", type=int, default=2)
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


# ----------------------------------------------------------------------------- summary


def _load(cell: Path) -> dict[str, np.ndarray]:
    with np.load(cell / "scores.npz") as data:
        return {k: data[k] for k in data.files}


def _columns(ids: np.ndarray, wanted: Sequence[str]) -> list[int]:
    return [i for i, d in enumerate(ids.tolist()) if d in set(wanted)]


def pooled_difference(
    labels: np.ndarray,
    a: list[np.ndarray],
    b: list[np.ndarray],
    metric: Callable[[np.ndarray, np.ndarray], float],
    *,
    groups: np.ndarray,
    resamples: int,
    seed: int = 0,
) -> Interval:
    """Mean over seeds of ``metric(a_s) - metric(b_s)``, bootstrapped over patients jointly."""

    def stat(rows: np.ndarray) -> float:
        pairs = zip(a, b, strict=True)
        return float(np.mean([metric(labels[rows], x[rows]) - metric(labels[rows], y[rows]) for x, y in pairs]))

    return bootstrap_ci(stat, len(labels), groups=groups, resamples=resamples, seed=seed)


def summarise(args: argparse.Namespace, variants: list[str], seeds: list[int], oct_visible: list[str]) -> dict:
    cells = {
        (v, s): _load(args.out / v / f"seed{s}")
        for v in variants
        for s in seeds
        if (args.out / v / f"seed{s}" / "scores.npz").is_file()
    }
    if not cells:
        raise CommandError(f"no finished cells under {args.out}")
    any_cell = next(iter(cells.values()))
    ids, labels, paths = any_cell["ids"], any_cell["labels"], any_cell["paths"]
    catalog, _ = resolve_catalog(args.catalog, args.manifest)
    records = {str(r.path): r for r in read_splits(args.manifest, catalog=catalog).test}
    groups = patient_groups([records[p] for p in paths.tolist()])
    subsets = {"all": list(range(len(ids))), "oct_visible": _columns(ids, oct_visible)}
    metric = macro(auroc)
    table: dict[str, Any] = {"ids": ids.tolist(), "oct_visible": oct_visible, "cells": {}, "comparisons": {}}
    for (v, s), cell in cells.items():
        if not np.array_equal(cell["paths"], paths):
            raise CommandError(f"{v} seed{s} was scored on other test images")
        table["cells"][f"{v}/seed{s}"] = {
            name: metric(labels[:, cols], cell["probs"][:, cols]) for name, cols in subsets.items() if cols
        } | {"seconds": float(cell["seconds"])}
    for a, b in COMPARISONS:
        common = [s for s in seeds if (a, s) in cells and (b, s) in cells]
        if not common:
            continue
        row: dict[str, Any] = {}
        for name, cols in subsets.items():
            if not cols:
                continue
            y = labels[:, cols]
            per_seed = {
                f"seed{s}": pooled_difference(
                    y,
                    [cells[(a, s)]["probs"][:, cols]],
                    [cells[(b, s)]["probs"][:, cols]],
                    metric,
                    groups=groups,
                    resamples=args.resamples,
                )
                for s in common
            }
            pooled = pooled_difference(
                y,
                [cells[(a, s)]["probs"][:, cols] for s in common],
                [cells[(b, s)]["probs"][:, cols] for s in common],
                metric,
                groups=groups,
                resamples=args.resamples,
            )
            row[name] = {"pooled": pooled, **per_seed}
        table["comparisons"][f"{a} - {b}"] = row
    return table


def _zero_shot_scores(args: argparse.Namespace, seed: int, records: list, ids: list[str]) -> dict[str, np.ndarray]:
    """``uopsl_{site,global,sum}`` (the ``full`` stage-1 model) and ``clip_global`` (``no_matrix``)."""
    catalog, _ = resolve_catalog(args.catalog, args.manifest)
    scores: dict[str, np.ndarray] = {}
    for variant, prefix in (("full", "uopsl"), ("no_matrix", "clip")):
        path = args.out / variant / f"seed{seed}" / "pretrain" / "pretrain.safetensors"
        if not path.is_file():
            continue
        model, meta = load_pretrain(path)
        dataset = fundus_dataset(records, meta.preprocess, catalog, in_memory=True)
        found = zero_shot_scores(model, meta.tokenizer_json, catalog, ids, dataset)
        if "site" in found:
            found["sum"] = found["site"] + found["global"]
        scores |= {f"{prefix}_{k}": v for k, v in found.items()}
    return scores


def pooled_metric(
    labels: np.ndarray, scores: list[np.ndarray], metric: Callable[[np.ndarray, np.ndarray], float], **kw: Any
) -> Interval:
    """Mean over seeds of ``metric(labels, scores_s)``, bootstrapped over patients jointly."""

    def stat(rows: np.ndarray) -> float:
        return float(np.mean([metric(labels[rows], x[rows]) for x in scores]))

    return bootstrap_ci(stat, len(labels), **kw)


def zero_shot_table(args: argparse.Namespace, seeds: list[int], ids: list[str]) -> dict[str, Any]:
    """Zero-shot AUROC of the ``full`` (UOPSL) and ``no_matrix`` (plain CLIP) stage-1 models.

    The UOPSL score compared (``site``, ``global`` or ``sum``) is chosen on VAL: the highest mean
    val AUROC over the categories and seeds; test then reports every score, pooled over seeds and
    per seed, and the paired difference chosen - ``clip_global`` (same seeds, same patients)."""
    catalog, _ = resolve_catalog(args.catalog, args.manifest)
    splits = read_splits(args.manifest, catalog=catalog)
    per_split: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    labels: dict[str, np.ndarray] = {}
    groups: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        records = getattr(splits, split)
        labels[split] = np.array([[d in r.labels for d in ids] for r in records], dtype=np.float32)
        groups[split] = patient_groups(records)
        per_split[split] = {s: _zero_shot_scores(args, s, records, ids) for s in seeds}
    names = sorted({n for by_seed in per_split["val"].values() for n in by_seed})
    if not names:
        return {}
    val_means = {}
    for name in names:
        values = [
            auroc(labels["val"][:, j], by_seed[name][:, j])
            for s, by_seed in per_split["val"].items()
            if name in by_seed
            for j in range(len(ids))
            if 0 < labels["val"][:, j].sum() < len(labels["val"])
        ]
        if values:
            val_means[name] = float(np.mean(values))
    uopsl = {n: v for n, v in val_means.items() if n.startswith("uopsl_")}
    chosen = max(uopsl, key=lambda n: uopsl[n]) if uopsl else None
    kw = {"groups": groups["test"], "resamples": args.resamples}
    test: dict[str, Any] = {}
    for j, disease in enumerate(ids):
        y = labels["test"][:, j]
        row: dict[str, Any] = {}
        for name in names:
            have = [s for s in seeds if name in per_split["test"][s]]
            runs = [per_split["test"][s][name][:, j] for s in have]
            row[name] = {"pooled": pooled_metric(y, runs, auroc, **kw)} | {
                f"seed{s}": pooled_metric(y, [r], auroc, **kw) for s, r in zip(have, runs, strict=True)
            }
        if chosen is not None and "clip_global" in names:
            both = [s for s in seeds if chosen in per_split["test"][s] and "clip_global" in per_split["test"][s]]
            a = [per_split["test"][s][chosen][:, j : j + 1] for s in both]
            b = [per_split["test"][s]["clip_global"][:, j : j + 1] for s in both]
            row[f"{chosen} - clip_global"] = {"pooled": pooled_difference(y[:, None], a, b, macro(auroc), **kw)} | {
                f"seed{s}": pooled_difference(y[:, None], [x], [z], macro(auroc), **kw)
                for s, x, z in zip(both, a, b, strict=True)
            }
        test[disease] = row
    return {"chosen": chosen, "val_mean_auroc": val_means, "test": test}


def _markdown(table: dict[str, Any], zero: dict[str, Any], command_line: str) -> str:
    lines = ["# Experiment summary", "", f"Command: `{command_line}`", ""]
    lines += ["## Test macro AUROC per cell", "", "| cell | all classes | OCT-visible | seconds |", "|---|---|---|---|"]
    for name, row in table["cells"].items():
        lines.append(
            f"| {name} | {row['all']:.4f} | {row.get('oct_visible', float('nan')):.4f} | {row['seconds']:.0f} |"
        )
    lines += [
        "",
        "## Differences (paired bootstrap over patients, 95% CI)",
        "",
        "| comparison | classes | pooled over seeds | per seed |",
        "|---|---|---|---|",
    ]
    for comparison, row in table["comparisons"].items():
        for subset, intervals in row.items():
            per = "; ".join(f"{k}: {v}" for k, v in intervals.items() if k != "pooled")
            lines.append(f"| {comparison} | {subset} | {intervals['pooled']} | {per} |")
    if zero:
        lines += [
            "",
            "## Zero-shot (categories held out of training, scored from their descriptions)",
            "",
            f"UOPSL score chosen on val: `{zero['chosen']}` (mean val AUROC: "
            + ", ".join(f"{k} {v:.3f}" for k, v in zero["val_mean_auroc"].items())
            + "). Test AUROC, 95% CI; pooled = mean over seeds, patients resampled jointly.",
            "",
            "| category | score | pooled over seeds | per seed |",
            "|---|---|---|---|",
        ]
        for disease, row in zero["test"].items():
            for name, intervals in row.items():
                per = "; ".join(f"{k}: {v}" for k, v in intervals.items() if k != "pooled")
                lines.append(f"| {disease} | {name} | {intervals['pooled']} | {per} |")
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Interval):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


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
    info = _phantom_info(args.manifest)
    holdout = _ids(args.zero_shot, info.get("zero_shot", ()))
    oct_visible = _ids(args.oct_visible, info.get("oct_visible", ()))
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if not args.summary_only:
        for seed in seeds:
            for variant in variants:
                run_cell(args, variant, seed, holdout)
    if args.train_only:
        print(f"cells done ({time.monotonic() - start:.0f}s); no summary (--train-only)")
        return 0
    table = summarise(args, variants, seeds, oct_visible)
    zero = zero_shot_table(args, seeds, holdout) if holdout else {}
    command_line = "predilect experiment " + " ".join(argv if argv is not None else [])
    (args.out / "summary.md").write_text(_markdown(table, zero, command_line))
    (args.out / "summary.json").write_text(
        json.dumps(_jsonable({"table": table, "zero_shot": zero}), indent=2, default=str) + "\n"
    )
    print(_markdown(table, zero, command_line))
    print(f"summary {args.out / 'summary.md'} ({time.monotonic() - start:.0f}s)")
    return 0
