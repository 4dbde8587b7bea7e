"""What `predilect experiment` writes about a finished grid: the claim table, every comparison on
every class and camera subset, each cell's scores, and the zero-shot table (``claims`` holds the
statistics).

Everything here reads only the grid folder: each cell's ``scores.npz`` (test probabilities),
each stage-1 model's ``pretrain/zero_shot.npz``, and two files the first summary writes from the
manifest (``test_split.csv``: each test image's patient and camera; ``grid.json``: the OCT-visible
and zero-shot categories and the cameras of the training split). So a copy of the grid
recomputes the whole summary without the images or any checkpoint.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from predilect.errors import UserError
from predilect.manifest import Record
from predilect.metrics import Interval, auroc
from predilect.training.claims import (
    CLASS_SUBSETS,
    ROW_SUBSETS,
    Difference,
    GridScores,
    Resampled,
    cell_table,
    claim_rows,
    compare,
    comparison_table,
)

TEST_SPLIT = "test_split.csv"
GRID_INFO = "grid.json"
ZERO_SHOT = "zero_shot.npz"
CLIP_ZERO_SHOT = "clip_zero_shot.npz"
ZERO_SHOT_SCORES = ("global", "site", "sum")


class GridError(UserError, ValueError):
    """A grid folder that cannot be summarised (no finished cell, cells scored on other images, ...)."""


def write_split(out: Path, test: Sequence[Record], train: Sequence[Record], info: dict[str, Any]) -> None:
    """Keep what the summary needs from the manifest beside the cells (see the module docstring)."""
    with (out / TEST_SPLIT).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "patient_id", "camera"])
        for r in test:
            writer.writerow([str(r.path), r.patient_id or str(r.path), r.extra.get("camera", "")])
    seen = sorted({r.extra.get("camera", "") for r in train} - {""})
    (out / GRID_INFO).write_text(json.dumps({**info, "seen_cameras": seen}, indent=1) + "\n", encoding="utf-8")


def _split(out: Path) -> tuple[dict[str, tuple[str, str]], dict[str, Any]]:
    if not (out / TEST_SPLIT).is_file() or not (out / GRID_INFO).is_file():
        raise GridError(f"{out}: no {TEST_SPLIT} / {GRID_INFO}; summarise once with --manifest")
    with (out / TEST_SPLIT).open(newline="", encoding="utf-8") as f:
        rows = {row["path"]: (row["patient_id"], row["camera"]) for row in csv.DictReader(f)}
    return rows, json.loads((out / GRID_INFO).read_text(encoding="utf-8"))


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def load_grid(out: Path, variants: Sequence[str], seeds: Sequence[int]) -> tuple[GridScores, dict[str, Any]]:
    """The finished cells of ``variants`` x ``seeds`` under ``out`` on their shared test images."""
    split, info = _split(out)
    cells = {
        (v, s): _npz(out / v / f"seed{s}" / "scores.npz")
        for v in variants
        for s in seeds
        if (out / v / f"seed{s}" / "scores.npz").is_file()
    }
    if not cells:
        raise GridError(f"no finished cells under {out}")
    first = next(iter(cells.values()))
    paths = first["paths"].tolist()
    for (v, s), cell in cells.items():
        if cell["paths"].tolist() != paths:
            raise GridError(f"{v} seed{s} was scored on other test images than the rest of the grid")
    missing = [p for p in paths if p not in split]
    if missing:
        raise GridError(f"{out / TEST_SPLIT} lacks test images of the cells, e.g. {missing[0]}")
    grid = GridScores(
        ids=first["ids"].tolist(),
        labels=first["labels"],
        groups=np.array([split[p][0] for p in paths]),
        cameras=np.array([split[p][1] for p in paths]),
        seen_cameras=frozenset(info.get("seen_cameras", ())),
        oct_visible=list(info.get("oct_visible", ())),
        probs={k: c["probs"] for k, c in cells.items()},
    )
    seconds = {f"{v}/seed{s}": float(c["seconds"]) for (v, s), c in cells.items()}
    return grid, {"seconds": seconds, **info}


# ----------------------------------------------------------------------------- zero-shot


def _zero_shot_runs(out: Path, seeds: Sequence[int]) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    """``(model, seed) -> zero_shot.npz`` of the UOPSL (``full``) and plain contrastive
    (``no_matrix``) stage-1 models, and of a local CLIP (``clip``, seed 0) when scored."""
    runs = {}
    for variant, name in (("full", "uopsl"), ("no_matrix", "clip")):
        for s in seeds:
            path = out / variant / f"seed{s}" / "pretrain" / ZERO_SHOT
            if path.is_file():
                runs[(name, s)] = _npz(path)
    if (out / CLIP_ZERO_SHOT).is_file():
        runs[("openclip", 0)] = _npz(out / CLIP_ZERO_SHOT)
    return runs


def choose_zero_shot_score(runs: dict[tuple[str, int], dict[str, np.ndarray]]) -> tuple[str | None, dict[str, float]]:
    """The UOPSL zero-shot score chosen on the TRAINED categories' val split (read as if unseen):
    the highest mean AUROC over those categories and the seeds. No held-out label is read."""
    means: dict[str, float] = {}
    for score in ZERO_SHOT_SCORES:
        values = []
        for (model, _), arrays in runs.items():
            key = f"val_trained__{score}"
            if model != "uopsl" or key not in arrays:
                continue
            y = arrays["val_trained__labels"]
            values += [auroc(y[:, j], arrays[key][:, j]) for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
        if values:
            means[score] = float(np.mean(values))
    return (max(means, key=lambda k: means[k]) if means else None), means


def zero_shot_table(out: Path, grid: GridScores, seeds: Sequence[int], *, resamples: int) -> dict[str, Any]:
    """Per held-out category and vocabulary: each score's test AUROC (mean over seeds; patient,
    seed-and-patient and between-seed intervals), and the chosen and the sites-based UOPSL score
    against the plain contrastive model (and a local CLIP when scored), with verdicts."""
    runs = _zero_shot_runs(out, seeds)
    if not any(m == "uopsl" for m, _ in runs):
        return {}
    chosen, val_means = choose_zero_shot_score(runs)
    first = next(a for (m, _), a in runs.items() if m == "uopsl")
    heldout, paths = first["heldout"].tolist(), first["test__paths"].tolist()
    for (m, s), arrays in runs.items():
        if arrays["test__paths"].tolist() != paths:
            raise GridError(f"zero-shot scores of {m} seed{s} cover other test images")
    order = {p: i for i, p in enumerate(grid_paths(out))}
    groups = grid.groups[[order[p] for p in paths]] if all(p in order for p in paths) else np.array(paths)
    cameras = grid.cameras[[order[p] for p in paths]] if all(p in order for p in paths) else np.array([""] * len(paths))
    table: dict[str, Any] = {"chosen": chosen, "val_trained_mean_auroc": val_means, "categories": {}}
    for j, disease in enumerate(heldout):
        per: dict[str, Any] = {}
        for vocabulary in ("closed", "open"):
            probs = {
                (f"{m}_{score}", s): arrays[f"test__{vocabulary}__{score}"][:, j : j + 1]
                for (m, s), arrays in runs.items()
                for score in ZERO_SHOT_SCORES
                if f"test__{vocabulary}__{score}" in arrays
            }
            if not probs:
                continue
            scores = GridScores(
                ids=[disease],
                labels=first["test__labels"][:, j : j + 1],
                groups=groups,
                cameras=cameras,
                seen_cameras=grid.seen_cameras,
                oct_visible=[],
                probs=probs,
            )
            resampled = Resampled(scores, resamples=resamples)
            names = sorted({n for n, _ in probs})
            rows: dict[str, Any] = {}
            for name in names:
                found = compare(resampled, name, None, rows="all", classes="all")
                if found is not None:
                    rows[name] = found
            for ours in [f"uopsl_{chosen}"] + (["uopsl_site"] if chosen != "site" else []):
                for theirs in ("clip_global", "openclip_global"):
                    if ours in names and theirs in names:
                        for subset in ROW_SUBSETS:
                            found = compare(resampled, ours, theirs, rows=subset, classes="all")
                            if found is not None:
                                rows[f"{ours} - {theirs}@{subset}"] = found
            per[vocabulary] = rows
        table["categories"][disease] = per
    return table


def grid_paths(out: Path) -> list[str]:
    with (out / TEST_SPLIT).open(newline="", encoding="utf-8") as f:
        return [row["path"] for row in csv.DictReader(f)]


# ----------------------------------------------------------------------------- summary


def summarise(
    out: Path,
    variants: Sequence[str],
    seeds: Sequence[int],
    comparisons: Sequence[tuple[str, str]],
    *,
    resamples: int,
) -> dict[str, Any]:
    grid, info = load_grid(out, variants, seeds)
    resampled = Resampled(grid, resamples=resamples)
    table = comparison_table(resampled, comparisons)
    return {
        "ids": grid.ids,
        "oct_visible": grid.oct_visible,
        "seen_cameras": sorted(grid.seen_cameras),
        "images": {r: int(grid.rows(r).sum()) for r in ROW_SUBSETS},
        "resamples": resamples,
        "cells": cell_table(resampled),
        "seconds": info["seconds"],
        "comparisons": table,
        "claims": claim_rows(table),
        "zero_shot": zero_shot_table(out, grid, seeds, resamples=resamples),
    }


def _fmt(i: Interval, *, signed: bool = True) -> str:
    spec = "+.3f" if signed else ".3f"
    return f"[{i.low:{spec}}, {i.high:{spec}}]" if np.isfinite(i.low) else "n/a"


def _row(d: Difference, *, signed: bool = True) -> str:
    """A difference's cells (signed) or an AUROC's (``signed=False``)."""
    spec = "+.3f" if signed else ".3f"
    intervals = (d.patients, d.seeds_and_patients, d.between_seeds)
    cells = " | ".join(_fmt(i, signed=signed) for i in intervals)
    return f"{d.value:{spec}} | {cells} | {len(d.seeds)}"


HEADER = (
    "| estimate | patients 95% | seeds + patients 95% | between seeds 95% | seeds |",
    "|---|---|---|---|---|",
)


def markdown(summary: dict[str, Any], command_line: str) -> str:
    images = summary["images"]
    lines = [
        "# Experiment summary",
        "",
        f"Command: `{command_line}`",
        "",
        f"Test images: {images['all']} (seen cameras {', '.join(summary['seen_cameras']) or 'n/a'}: "
        f"{images['seen']}; held-out cameras: {images['held_out']}). Differences of test macro AUROC; "
        f"intervals from {summary['resamples']} bootstrap resamples (see `predilect.training.claims`): "
        "over patients with the models fixed, over seeds and patients (hierarchical), and Student's t over "
        "the per-seed differences. A claim is *established* only when both intervals that include the "
        "seeds exclude 0.",
        "",
        "## Claims",
        "",
        "| claim | comparison | classes | images " + HEADER[0] + " verdict |",
        "|---|---|---|---" + HEADER[1][:-1] + "|---|",
    ]
    for claim, by_rows in summary["claims"]:
        a, b = claim.comparison
        for rows, d in by_rows.items():
            lines.append(f"| {claim.text} | {a} - {b} | {claim.classes} | {rows} | {_row(d)} | {d.verdict} |")
    lines += ["", "## Test macro AUROC per cell", ""]
    keys = [f"{c}@{r}" for r in ROW_SUBSETS for c in CLASS_SUBSETS[:3]]
    lines += ["| cell | " + " | ".join(keys) + " | seconds |", "|---" * (len(keys) + 2) + "|"]
    for cell, row in summary["cells"].items():
        values = " | ".join(f"{row[k]:.4f}" if k in row and np.isfinite(row[k]) else "n/a" for k in keys)
        lines.append(f"| {cell} | {values} | {summary['seconds'][cell]:.0f} |")
    lines += ["", "## Every comparison", "", "| comparison | classes@images " + HEADER[0] + " verdict |"]
    lines.append("|---|---" + HEADER[1][:-1] + "|---|")
    for name, row in summary["comparisons"].items():
        for subset, d in row.items():
            lines.append(f"| {name} | {subset} | {_row(d)} | {d.verdict} |")
    zero = summary["zero_shot"]
    if zero:
        means = ", ".join(f"{k} {v:.3f}" for k, v in zero["val_trained_mean_auroc"].items())
        lines += [
            "",
            "## Zero-shot (categories held out of both stages, scored from descriptions alone)",
            "",
            f"UOPSL score chosen on the trained categories' val split read as unseen (no held-out label): "
            f"`uopsl_{zero['chosen']}` (mean val AUROC {means}). `closed`: the catalog's descriptions; `open`: "
            "descriptions in words no trained category uses. `clip_global`: the plain contrastive model "
            "(`no_matrix`) trained on the same data; `openclip_global`: a local CLIP, when scored.",
            "",
            "| category | vocabulary | score " + HEADER[0] + " verdict |",
            "|---|---|---" + HEADER[1][:-1] + "|---|",
        ]
        for disease, per in zero["categories"].items():
            for vocabulary, rows in per.items():
                for name, d in rows.items():
                    difference = " - " in name
                    verdict = d.verdict if difference else ""
                    lines.append(f"| {disease} | {vocabulary} | {name} | {_row(d, signed=difference)} | {verdict} |")
    return "\n".join(lines) + "\n"


def jsonable(value: Any) -> Any:
    if isinstance(value, Difference):
        return value.to_dict()
    if isinstance(value, Interval):
        return asdict(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, tuple) and len(v) == 2 and hasattr(v[0], "comparison") for v in value):
            return [{"claim": asdict(c), "rows": jsonable(r)} for c, r in value]
        return [jsonable(v) for v in value]
    return value
