"""`predilect evaluate`: a served checkpoint on a manifest's test split, or zero-shot categories.

    predilect evaluate --checkpoint MODEL.safetensors --manifest M [--lesions lesions.jsonl] --out DIR
    predilect evaluate --zero-shot crvo,hypertensive --pretrained PRE.safetensors [--baseline CLIP.safetensors]

The first writes ``DIR/report.md`` (per-class and macro AUROC/AP with 95% bootstrap CIs, F1 and
sensitivity at a fixed specificity with thresholds tuned on val, ECE, attention vs drawn
lesions), ``DIR/evaluation.json`` and PNG plots (ROC curves, reliability diagram, the learned
predilection sites over a fundus template). The second scores categories a stage-1 model never
trained on from their descriptions alone, against a plain contrastive model (``--baseline``, a
stage-1 checkpoint trained with ``--matrix ablate``), with a paired-bootstrap CI of the difference.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from predilect.artifacts import default_artifacts
from predilect.catalog import Catalog, resolve_catalog
from predilect.cli import CommandError, command, description
from predilect.lesions import by_resolved_path, read_lesions
from predilect.metrics import Interval, auroc, bootstrap_ci, on_rows, paired_bootstrap_ci
from predilect.models.checkpoint import CheckpointMeta, load_checkpoint, load_pretrain
from predilect.outdir import check_out_folder
from predilect.training.config import CONFIG_FILE
from predilect.training.evaluate import (
    localisation,
    open_vocabulary_catalog,
    score_classifier,
    site_priors,
    zero_shot_scores,
)
from predilect.training.report import (
    evaluate_scores,
    fundus_template,
    markdown,
    patient_groups,
    plot_reliability,
    plot_roc,
    plot_sites,
)
from predilect.training.stages import fundus_dataset, read_splits

ZERO_SHOT_SCORES = ("site", "global", "sum")


def _parser() -> argparse.ArgumentParser:
    artifacts = default_artifacts()
    p = argparse.ArgumentParser(
        prog="predilect evaluate",
        description=description(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=artifacts.checkpoint,
        metavar="FILE|RUN",
        help="served checkpoint to evaluate, or the run folder holding it (model.safetensors)",
    )
    p.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="manifest with val and test splits (default: the run's own data, from config.json beside the "
        "checkpoint; else the artefacts' phantom manifest)",
    )
    p.add_argument(
        "--catalog", type=Path, default=None, help="catalog JSON (default: beside the manifest, else built-in)"
    )
    p.add_argument("--lesions", type=Path, default=None, help="lesions.jsonl (default: beside the manifest if present)")
    p.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="report folder (default: <checkpoint folder>/evaluation)"
    )
    p.add_argument("--specificity", type=float, default=0.9, help="fixed specificity for the sensitivity column")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--in-memory", action="store_true", help="preprocess each split once into RAM")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    z = p.add_argument_group("zero-shot")
    z.add_argument("--zero-shot", default=None, metavar="ID[,ID]", help="categories to score from their texts alone")
    z.add_argument("--pretrained", type=Path, default=artifacts.pretrain_checkpoint, help="stage-1 checkpoint")
    z.add_argument("--baseline", type=Path, default=None, help="stage-1 checkpoint of a plain contrastive model")
    z.add_argument(
        "--score", choices=ZERO_SHOT_SCORES, default="site", help="the UOPSL score compared, fixed beforehand (site)"
    )
    z.add_argument(
        "--open-vocabulary",
        action="store_true",
        help="read the categories from descriptions in words no trained category uses (open_vocabulary.json)",
    )
    return p


def _classifier(args: argparse.Namespace) -> int:
    model, meta = load_checkpoint(args.checkpoint)
    catalog, _ = resolve_catalog(args.catalog, args.manifest)
    held = [d for d in catalog.ids if d not in set(meta.catalog.ids)]
    splits = read_splits(args.manifest, catalog=catalog, drop=held)
    if not splits.test:
        raise CommandError(f"{args.manifest} has no test split")
    data = {"in_memory": args.in_memory}
    test = score_classifier(model, splits.test, meta.preprocess, meta.catalog, **data)
    val = score_classifier(model, splits.val, meta.preprocess, meta.catalog, **data) if splits.val else None
    ids = meta.catalog.ids
    evaluation = evaluate_scores(test, val, ids, specificity=args.specificity, resamples=args.resamples, seed=args.seed)
    lesions_path = args.lesions or args.manifest.with_name("lesions.jsonl")
    if lesions_path.is_file():
        evaluation.localisation = localisation(
            test.attention,
            test.labels,
            test.records,
            by_resolved_path(read_lesions(lesions_path), lesions_path.parent),
            ids,
        )
    out = args.out or args.checkpoint.parent / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    images = {"ROC curves": plot_roc(test, ids, out / "roc.png").name}
    images["reliability"] = plot_reliability(test, out / "reliability.png").name
    normal = test.labels.sum(axis=1) == 0
    pixels = _template_pixels(splits.test, normal, meta)
    positives = np.array([test.attention[test.labels[:, j] > 0.5, j].mean(axis=0) for j in range(len(ids))])
    images["predilection sites"] = plot_sites(
        fundus_template(pixels, meta.preprocess.mean, meta.preprocess.std),
        site_priors(model),
        positives,
        ids,
        out / "sites.png",
    ).name
    header = [
        f"Checkpoint `{args.checkpoint}` (version {meta.version}), manifest `{args.manifest}`.",
        f"Training: {_training_words(meta.training)}.",
    ]
    (out / "report.md").write_text(markdown(evaluation, title="Evaluation", header=header, images=images))
    (out / "evaluation.json").write_text(json.dumps(evaluation.to_dict(), indent=2, sort_keys=True) + "\n")
    print(f"test macro AUROC {evaluation.macro_auroc} over {len(evaluation.per_class)} classes")
    for d, m in evaluation.per_class.items():
        print(f"  {d:<14} AUROC {m.auroc}  AP {m.ap.value:.3f}  sens@spec {m.sensitivity:.3f}")
    if "all" in evaluation.localisation:
        loc = evaluation.localisation["all"]
        print(f"attention on lesions: mass {loc.mass:.3f} vs chance {loc.chance:.3f} (lift {loc.lift:.2f})")
    print(f"report {out / 'report.md'}")
    return 0


def _training_words(training: dict) -> str:
    """How the checkpoint was trained, for people: ``stage 2 (finetune), sites matrix tune, from `pre.safetensors```."""
    stage = training.get("stage") or "unknown stage"
    words = [f"stage {stage}"]
    if training.get("matrix"):
        words.append(f"sites matrix {training['matrix']}")
    pretrained = training.get("pretrained")
    words.append(f"started from `{pretrained}`" if pretrained else "trained from scratch")
    return ", ".join(words)


def _run_data(checkpoint: Path) -> tuple[Path | None, Path | None]:
    """The fundus manifest and catalog of the run that wrote ``checkpoint`` (its ``config.json``), if it says."""
    saved = checkpoint.parent / CONFIG_FILE
    if not saved.is_file():
        return None, None
    try:
        data = json.loads(saved.read_text(encoding="utf-8")).get("data") or {}
    except ValueError:
        return None, None
    paths = [data.get("manifest"), data.get("catalog")]
    manifest, catalog = (saved.parent / p if isinstance(p, str) and p else None for p in paths)
    return manifest, catalog


def _template_pixels(records: list, normal: np.ndarray, meta: CheckpointMeta) -> np.ndarray:
    from predilect.preprocess.pixels import load_fundus_pixels

    chosen = [r for r, n in zip(records, normal, strict=True) if n][:32] or list(records)[:32]
    return load_fundus_pixels(chosen, meta.preprocess)


def zero_shot(
    pretrained: Path,
    baseline: Path | None,
    manifest: Path,
    catalog: Catalog,
    ids: list[str],
    *,
    score: str = "site",
    split: str = "test",
    resamples: int = 1000,
    seed: int = 0,
    in_memory: bool = False,
) -> dict[str, dict[str, Interval]]:
    """AUROC (95% CI) of each zero-shot category, per score, and the paired difference
    ``uopsl - baseline`` when a baseline is given. Categories must be unknown to the models."""
    model, meta = load_pretrain(pretrained)
    trained = set(meta.catalog.ids)
    seen = sorted(set(ids) & trained)
    if seen:
        raise CommandError(f"{pretrained} was trained on {seen}: not zero-shot")
    records = getattr(read_splits(manifest, catalog=catalog), split)
    dataset = fundus_dataset(records, meta.preprocess, catalog, in_memory=in_memory)
    labels = np.array([[d in r.labels for d in ids] for r in records], dtype=np.float32)
    groups = patient_groups(records)
    ours = zero_shot_scores(model, meta.tokenizer_json, catalog, ids, dataset)
    if "site" in ours:
        ours["sum"] = ours["site"] + ours["global"]
    theirs = None
    if baseline is not None:
        base_model, base_meta = load_pretrain(baseline)
        if set(ids) & set(base_meta.catalog.ids):
            raise CommandError(f"{baseline} was trained on some of {ids}: not zero-shot")
        theirs = zero_shot_scores(base_model, base_meta.tokenizer_json, catalog, ids, dataset)["global"]
    results: dict[str, dict[str, Interval]] = {}
    for j, disease in enumerate(ids):
        y = labels[:, j]
        if not 0 < y.sum() < len(y):
            raise CommandError(f"{disease}: {int(y.sum())} positives among {len(y)} {split} images; cannot score")
        row: dict[str, Interval] = {}
        for name, values in ours.items():
            row[f"uopsl_{name}"] = bootstrap_ci(
                on_rows(auroc, y, values[:, j]), len(y), groups=groups, resamples=resamples, seed=seed
            )
        if theirs is not None:
            row["baseline_global"] = bootstrap_ci(
                on_rows(auroc, y, theirs[:, j]), len(y), groups=groups, resamples=resamples, seed=seed
            )
            if score in ours:
                row["difference"] = paired_bootstrap_ci(
                    y, ours[score][:, j], theirs[:, j], auroc, groups=groups, resamples=resamples, seed=seed
                )
        results[disease] = row
    return results


def _zero_shot(args: argparse.Namespace) -> int:
    catalog, _ = resolve_catalog(args.catalog, args.manifest)
    ids = [d.strip() for d in args.zero_shot.split(",") if d.strip()]
    unknown = sorted(set(ids) - set(catalog.ids))
    if unknown:
        raise CommandError(f"--zero-shot names categories not in the catalog: {unknown}")
    if args.open_vocabulary:
        described = open_vocabulary_catalog(catalog, ids)
        if described is None:
            raise CommandError(f"the open-vocabulary file does not describe every one of {ids}")
        diseases = tuple(described[d] if d in set(ids) else catalog[d] for d in catalog.ids)
        catalog = Catalog(diseases, version=catalog.version)
    results = zero_shot(
        args.pretrained,
        args.baseline,
        args.manifest,
        catalog,
        ids,
        score=args.score,
        resamples=args.resamples,
        seed=args.seed,
        in_memory=args.in_memory,
    )
    out = args.out or args.pretrained.parent / "zero_shot"
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Zero-shot categories (scored from their descriptions alone)",
        "",
        f"UOPSL `{args.pretrained}`; baseline `{args.baseline}`; manifest `{args.manifest}` (test split). "
        f"AUROC with 95% patient-bootstrap CIs; `difference` = UOPSL `{args.score}` score minus baseline, "
        "paired bootstrap.",
        "",
        "| category | score | AUROC [95% CI] |",
        "|---|---|---|",
    ]
    for disease, row in results.items():
        for name, interval in row.items():
            lines.append(f"| {disease} | {name} | {interval} |")
            print(f"{disease:<14} {name:<16} {interval}")
    (out / "zero_shot.md").write_text("\n".join(lines) + "\n")
    payload = {d: {k: vars(v) for k, v in row.items()} for d, row in results.items()}
    (out / "zero_shot.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(f"report {out / 'zero_shot.md'}")
    return 0


@command("evaluate")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.checkpoint.is_dir():
        args.checkpoint = args.checkpoint / "model.safetensors"
    if args.manifest is None:
        manifest, catalog = _run_data(args.checkpoint)
        if manifest is not None:
            print(f"the run's own data: {manifest}")
            args.manifest, args.catalog = manifest, args.catalog or catalog
        else:
            args.manifest = default_artifacts().manifest
    if args.out is not None:
        check_out_folder(args.out, holds="report.md, evaluation.json and the plots")
    torch.set_num_threads(args.threads)
    if not 0.0 < args.specificity < 1.0:
        raise CommandError(f"--specificity must lie in (0, 1), got {args.specificity}")
    if args.resamples < 1:
        raise CommandError(f"--resamples must be >= 1, got {args.resamples}")
    return _zero_shot(args) if args.zero_shot else _classifier(args)
