"""`predilect bench localisation-variants`: which attention-derived heatmap peaks on the drawn lesions?

The goal: a positive finding's heatmap peak falls on a lesion the phantom drew. The
served heatmap is each disease's predilection attention averaged over its K sites. This runs a
checkpoint in process (the reference attention path: the served computation) on one split of a
phantom through the served preprocessing, derives other maps from the same forward pass, and
scores each with the one scorer (``predilect.lesions.score_peak``) that
``predilect localisation`` uses:

* ``attention`` -- the served map: mean over sites of the softmax attention ``a_k``;
* ``max_sites`` -- the per-cell maximum over sites;
* ``sharpened`` -- mean over sites of ``a_k ** 2``;
* ``evidence`` -- each token's share of the logit: ``mean_k a_k * v`` with ``v = token . w_c``;
* ``token_logit`` -- ``v`` alone (a class-activation map of the read-out);
* ``top_site`` -- the attention of the site that adds most to the logit (``s_k = sum_n a_kn v_n``);
* ``weighted_sites`` -- the sites' attention weighted by ``max(s_k, 0)``;
* ``minus_negatives`` -- the served map less its mean over images without the disease (on
  ``--baseline-split``, default train): what the attention does whatever the image shows (sinks);
* ``site_ratio`` -- mean over sites of ``a_k`` divided by its mean over those images;
* controls: ``transposed`` and ``mirrored`` (x-flipped) served map -- what a coordinate slip would score.

Every truly positive image with drawn lesions is scored; chance is a random peak on a
field-of-view cell. Per variant: the macro hit rate over diseases (those whose chance is below
99%) and its paired difference from the served map with a bootstrap 95% CI (resampling images
within each disease). Choose variants on ``--split val``; report ``--split test``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from predilect.cli import CommandError, command

Variant = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _site_share(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (a * v).sum(axis=(1, 2))


def _weighted_sites(a: np.ndarray, v: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    weights = np.maximum(_site_share(a, v), 0.0)
    if weights.sum() <= 0:
        return a.mean(axis=0)
    return np.tensordot(weights / weights.sum(), a, axes=1)


# Each: (per-site attention (K, g, g), token logit (g, g), per-site mean over negatives (K, g, g)) -> (g, g)
VARIANTS: dict[str, Variant] = {
    "attention": lambda a, v, n: a.mean(axis=0),
    "max_sites": lambda a, v, n: a.max(axis=0),
    "sharpened": lambda a, v, n: (a**2).mean(axis=0),
    "evidence": lambda a, v, n: a.mean(axis=0) * v,
    "token_logit": lambda a, v, n: v,
    "top_site": lambda a, v, n: a[int(np.argmax(_site_share(a, v)))],
    "weighted_sites": _weighted_sites,
    "minus_negatives": lambda a, v, n: a.mean(axis=0) - n.mean(axis=0),
    "site_ratio": lambda a, v, n: (a / np.maximum(n, 1e-12)).mean(axis=0),
    "transposed": lambda a, v, n: a.mean(axis=0).T,
    "mirrored": lambda a, v, n: a.mean(axis=0)[:, ::-1],
}
SERVED = "attention"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predilect bench localisation-variants",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="served-model checkpoint (model.safetensors)")
    p.add_argument("--phantom", type=Path, required=True, help="phantom folder (manifest.csv + lesions.jsonl)")
    p.add_argument("--split", default="val", help="manifest split: choose on val, report test")
    p.add_argument("--baseline-split", default="train", help="split whose negatives give the per-disease baseline")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples for the paired CIs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", type=Path, default=None, help="write the table (markdown) and a .json beside it")
    p.add_argument("--plot", type=Path, default=None, help="write the per-disease mean maps (PNG, needs matplotlib)")
    return p


def _site_attention(model: Any, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-site attention ``(B, C, K, g, g)`` and token logits ``(B, C, g, g)``: the reference head's terms."""
    import torch

    head, grid = model.head, model.cfg.grid
    n_diseases, n_sites, dim = head.sites.shape
    with torch.inference_mode():
        tokens = model.encoder(torch.from_numpy(pixels))
        scores = torch.matmul(tokens, head.sites.reshape(n_diseases * n_sites, dim).t()).transpose(1, 2)
        attention = torch.softmax(scores * (1.0 / math.sqrt(dim)), dim=-1)
        token_logit = torch.einsum("bnd,cd->bcn", tokens, head.weight)
    shape = (len(pixels), n_diseases)
    return attention.reshape(*shape, n_sites, grid, grid).numpy(), token_logit.reshape(*shape, grid, grid).numpy()


def token_offsets(model: Any, pixels: np.ndarray) -> np.ndarray:
    """``(g, g, 2)``: where each content token looks, relative to its grid cell -- the centroid of
    ``|d token / d input|`` over ``pixels`` minus the cell's centre, in cells (row, column; + is
    down/right). The scorer, the client overlay and the peak coordinates assume zero."""
    import torch

    grid, size = model.cfg.grid, pixels.shape[-1]
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    out = np.zeros((grid, grid, 2))
    for n in range(grid * grid):
        x = torch.from_numpy(pixels).clone().requires_grad_(True)
        model.encoder.content(x)[:, n].pow(2).sum().backward()
        assert x.grad is not None
        weight = x.grad.abs().sum(dim=(0, 1))
        row, column = divmod(n, grid)
        centroid = (float((weight * ys).sum() / weight.sum()), float((weight * xs).sum() / weight.sum()))
        out[row, column] = (centroid[0] * grid / size - row - 0.5, centroid[1] * grid / size - column - 0.5)
    return out


def site_maps(
    checkpoint: Path, phantom: Path, split: str, baseline_split: str
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], np.ndarray]:
    """Per positive (image, disease) of ``split`` with drawn lesions: per-site attention ``(K, g, g)``,
    token logit ``v (g, g)``, the per-site mean attention over ``baseline_split``'s images without
    the disease, the served crop, the drawn lesions and the lit cells; per disease, how often
    the served map of those images without it peaks on each cell (``(g, g)`` shares); and the
    tokens' offsets from their cells (``token_offsets`` on the first 8 images of ``split``)."""
    from predilect.build.localisation import lit_cells
    from predilect.catalog import resolve_catalog
    from predilect.lesions import read_lesions
    from predilect.manifest import read_manifest
    from predilect.models.checkpoint import load_checkpoint
    from predilect.preprocess import Preprocessor

    model, meta = load_checkpoint(checkpoint)
    model.eval()
    catalog, cfg, grid = meta.catalog, meta.preprocess, model.cfg.grid
    labels_catalog, _ = resolve_catalog(None, phantom / "manifest.csv")
    preprocessor = Preprocessor(cfg, max_batch_size=16)
    n_diseases, n_sites, _ = model.head.sites.shape
    negatives = np.zeros((n_diseases, n_sites, grid, grid))
    counts = np.zeros(n_diseases)
    negative_peaks = np.zeros((n_diseases, grid * grid))
    background = read_manifest(phantom / "manifest.csv", catalog=labels_catalog, split=baseline_split)
    for start in range(0, len(background), 16):
        chunk = background[start : start + 16]
        done = preprocessor.run([r.path.read_bytes() for r in chunk])
        pixels, errors = done.pixels, done.errors
        attention, _ = _site_attention(model, pixels)
        for j, record in enumerate(r for r, error in zip(chunk, errors, strict=True) if error is None):
            absent = np.array([d not in record.labels for d in catalog.ids])
            negatives[absent] += attention[j, absent]
            counts += absent
            peaks = attention[j].mean(axis=1).reshape(n_diseases, -1).argmax(axis=1)
            negative_peaks[np.flatnonzero(absent), peaks[absent]] += 1
    negatives /= np.maximum(counts, 1)[:, None, None, None]
    negative_peaks /= np.maximum(counts, 1)[:, None]
    records = [
        r
        for r in read_manifest(phantom / "manifest.csv", catalog=labels_catalog, split=split)
        if r.labels & set(catalog.ids)
    ]
    drawn = read_lesions(phantom / "lesions.jsonl")
    rows: list[dict[str, Any]] = []
    for start in range(0, len(records), 16):
        chunk = records[start : start + 16]
        done = preprocessor.run([r.path.read_bytes() for r in chunk])
        pixels, errors, boxes = done.pixels, done.errors, done.boxes
        attention, token_logit = _site_attention(model, pixels)
        accepted = [i for i, error in enumerate(errors) if error is None]
        for j, i in enumerate(accepted):
            record, box = chunk[i], boxes[i]
            image = drawn.get(Path(record.path).resolve().relative_to(phantom.resolve()).as_posix())
            if image is None or box is None:
                continue
            lit = lit_cells(pixels[j], grid, cfg)
            for disease in sorted(record.labels):
                if disease in catalog.ids and image.of(disease):
                    c = catalog.index(disease)
                    maps = {"sites": attention[j, c], "v": token_logit[j, c], "negatives": negatives[c]}
                    rows.append({"disease": disease, "box": box, "image": image, "lit": lit, **maps})
    sample = preprocessor.run([r.path.read_bytes() for r in records[:8]]).pixels_or_raise()
    offsets = token_offsets(model, sample)
    return rows, {d: negative_peaks[c].reshape(grid, grid) for c, d in enumerate(catalog.ids)}, offsets


def score_variants(rows: list[dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """``{variant: {disease: (n, 2) array of (hit, chance)}}``."""
    from predilect.lesions import score_peak

    out: dict[str, dict[str, list[tuple[float, float]]]] = {name: {} for name in VARIANTS}
    for row in rows:
        for name, variant in VARIANTS.items():
            heat = variant(row["sites"], row["v"], row["negatives"])
            s = score_peak(heat, row["box"], row["image"], row["disease"], row["lit"])
            out[name].setdefault(row["disease"], []).append((float(s.hit), s.chance))
    return {name: {d: np.asarray(v) for d, v in per.items()} for name, per in out.items()}


def peak_modes(rows: list[dict[str, Any]], negative_peaks: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per disease: the cell the served map peaks on most often, with its share, among the positives
    and among the baseline split's negatives (one cell taking most peaks whatever the image shows
    is an attention sink)."""
    out: dict[str, Any] = {}
    for disease in sorted({row["disease"] for row in rows}):
        maps = [row["sites"].mean(axis=0) for row in rows if row["disease"] == disease]
        grid = maps[0].shape[0]
        counts = np.bincount([int(np.argmax(m)) for m in maps], minlength=grid * grid) / len(maps)
        negative = negative_peaks[disease].ravel()
        out[disease] = {
            "positive": [*divmod(int(np.argmax(counts)), grid), float(counts.max())],
            "negative": [*divmod(int(np.argmax(negative)), grid), float(negative.max())],
        }
    return out


def plot_maps(rows: list[dict[str, Any]], path: Path) -> None:
    """Per disease: mean served map over positives, how often each cell meets a lesion, how often the
    peak falls on each cell, and the mean served map over the baseline negatives."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from predilect.lesions import lesion_cells

    diseases = sorted({row["disease"] for row in rows})
    titles = ("attention, positives", "lesion cells", "peak cell", "attention, negatives")
    fig, axes = plt.subplots(len(diseases), 4, figsize=(8, 2.1 * len(diseases)), squeeze=False)
    for i, disease in enumerate(diseases):
        mine = [row for row in rows if row["disease"] == disease]
        grid = mine[0]["v"].shape[0]
        served = np.mean([row["sites"].mean(axis=0) for row in mine], axis=0)
        cells = np.mean([lesion_cells(r["image"], disease, grid, r["box"]) for r in mine], axis=0)
        peaks = np.bincount([int(np.argmax(r["sites"].mean(axis=0))) for r in mine], minlength=grid * grid)
        panels = (served, cells, peaks.reshape(grid, grid) / len(mine), mine[0]["negatives"].mean(axis=0))
        for k, (title, panel) in enumerate(zip(titles, panels, strict=True)):
            image = axes[i, k].imshow(panel, cmap="magma")
            axes[i, k].set_title(f"{disease}: {title}", fontsize=7)
            axes[i, k].set_xlabel("token column", fontsize=6)
            axes[i, k].set_ylabel("token row", fontsize=6)
            axes[i, k].tick_params(labelsize=5)
            bar = fig.colorbar(image, ax=axes[i, k], fraction=0.046, pad=0.04)
            bar.set_label("mean weight" if k in (0, 3) else "share of images", fontsize=6)
            bar.ax.tick_params(labelsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def summarise(scored: dict[str, dict[str, np.ndarray]], *, resamples: int, seed: int) -> dict[str, Any]:
    served = scored[SERVED]
    diseases = sorted(d for d in served if served[d][:, 1].mean() < 0.99)  # a peak anywhere hits: not scored
    rng = np.random.default_rng(seed)
    draws = [{d: rng.integers(0, len(served[d]), len(served[d])) for d in diseases} for _ in range(resamples)]
    summary: dict[str, Any] = {"diseases": diseases, "images": {d: len(served[d]) for d in served}, "variants": {}}
    summary["chance"] = {d: float(served[d][:, 1].mean()) for d in served}
    for name, per in scored.items():

        def macro_diff(pick: dict[str, np.ndarray] | None, per: dict[str, np.ndarray] = per) -> float:
            idx = pick or {d: np.arange(len(served[d])) for d in diseases}
            return float(np.mean([per[d][idx[d], 0].mean() - served[d][idx[d], 0].mean() for d in diseases]))

        boots = [macro_diff(pick) for pick in draws]
        summary["variants"][name] = {
            "hit_rate": {d: float(per[d][:, 0].mean()) for d in per},
            "macro_hit_rate": float(np.mean([per[d][:, 0].mean() for d in diseases])),
            "macro_diff_vs_served": macro_diff(None),
            "macro_diff_ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "above_chance": int(sum(per[d][:, 0].mean() > per[d][:, 1].mean() for d in diseases)),
        }
    return summary


def report_markdown(summary: dict[str, Any], header: Sequence[str]) -> str:
    names = sorted(summary["images"])
    head = "| heatmap | " + " | ".join(names) + " | macro | vs served (95% CI) | above chance |"
    lines = [*header, "", head, "|---" * (len(names) + 4) + "|"]
    chance = summary["chance"]
    lines.append("| chance (random peak) | " + " | ".join(f"{100 * chance[d]:.0f}%" for d in names) + " | | | |")
    n_scored = len(summary["diseases"])
    for name, v in summary["variants"].items():
        low, high = v["macro_diff_ci95"]
        cells = " | ".join(f"{100 * v['hit_rate'][d]:.0f}%" for d in names)
        diff = f"{100 * v['macro_diff_vs_served']:+.1f} ({100 * low:+.1f} to {100 * high:+.1f})"
        lines.append(
            f"| {name} | {cells} | {100 * v['macro_hit_rate']:.1f}% | {diff} | {v['above_chance']}/{n_scored} |"
        )
    lines.append("| images | " + " | ".join(str(summary["images"][d]) for d in names) + " | | | |")
    return "\n".join(lines) + "\n"


@command("bench localisation-variants")
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    for path in (args.checkpoint, args.phantom / "lesions.jsonl", args.phantom / "manifest.csv"):
        if not path.is_file():
            raise CommandError(f"{path} not found")
    rows, negative_peaks, offsets = site_maps(args.checkpoint, args.phantom, args.split, args.baseline_split)
    if not rows:
        raise CommandError(f"no positive images with drawn lesions in split {args.split!r} of {args.phantom}")
    summary = summarise(score_variants(rows), resamples=args.resamples, seed=args.seed)
    summary["peak_modes"] = peak_modes(rows, negative_peaks)
    inner = offsets[1:-1, 1:-1].reshape(-1, 2)
    summary["token_offset_cells"] = {"inner_mean": inner.mean(axis=0).tolist(), "grid": offsets.round(3).tolist()}
    command_line = "predilect bench localisation-variants " + shlex.join(argv)
    header = [
        f"### {args.split} split",
        "",
        f"Command: `{command_line}`; date {dt.date.today().isoformat()}. Cells: share of truly positive images whose "
        "heatmap peak cell overlaps a drawn lesion of the disease; macro over diseases with chance < 99%.",
    ]
    text = report_markdown(summary, header)
    modes = summary["peak_modes"]
    text += (
        "\nMost frequent peak cell (row, column; share): "
        + "; ".join(
            f"{d} positives {tuple(m['positive'][:2])} {100 * m['positive'][2]:.0f}%, "
            f"negatives {tuple(m['negative'][:2])} {100 * m['negative'][2]:.0f}%"
            for d, m in modes.items()
        )
        + ".\n"
    )
    row_offset, column_offset = summary["token_offset_cells"]["inner_mean"]
    text += (
        f"\nWhere the tokens look (gradient centroid, inner cells, mean): {row_offset:+.2f} cell down, "
        f"{column_offset:+.2f} cell right of their cell's centre.\n"
    )
    print(text)
    if args.plot is not None:
        plot_maps(rows, args.plot)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text, encoding="utf-8")
        data = {"command": command_line, "split": args.split, **summary}
        args.report.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return 0
