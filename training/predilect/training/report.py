"""``predilect evaluate``'s numbers and report: per-class and macro metrics with bootstrap CIs,
operating points tuned on the validation split, calibration, lesion localisation, and a
markdown report with PNG plots (ROC curves, reliability diagram, learned predilection sites).

Thresholds are chosen on ``val`` and applied to ``test``: F1 at the val threshold that maximises
F1; sensitivity (and the specificity actually reached) at the val threshold that gives the
requested specificity. Intervals are percentile bootstraps over patients (both eyes of a
patient resampled together; ``predilect.metrics.bootstrap_ci``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predilect.metrics import (
    Interval,
    auroc,
    average_precision,
    bootstrap_ci,
    expected_calibration_error,
    macro,
    on_rows,
    operating_point,
    reliability,
    threshold_for_specificity,
    threshold_max_f1,
)
from predilect.training.evaluate import ClassifierScores, Localisation


@dataclass(frozen=True)
class ClassMetrics:
    auroc: Interval
    ap: Interval
    f1: float
    sensitivity: float
    specificity: float
    threshold_f1: float
    threshold_spec: float
    ece: float
    positives: int


@dataclass
class Evaluation:
    """Everything ``predilect evaluate`` measured on one split of one model."""

    ids: list[str]
    split: str
    images: int
    per_class: dict[str, ClassMetrics]
    macro_auroc: Interval
    macro_ap: Interval
    macro_f1: float
    macro_sensitivity: float
    target_specificity: float
    ece: float
    localisation: dict[str, Localisation] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def interval(i: Interval) -> dict[str, float]:
            return {"value": i.value, "low": i.low, "high": i.high}

        return {
            "split": self.split,
            "images": self.images,
            "macro_auroc": interval(self.macro_auroc),
            "macro_ap": interval(self.macro_ap),
            "macro_f1": self.macro_f1,
            "macro_sensitivity_at_specificity": self.macro_sensitivity,
            "target_specificity": self.target_specificity,
            "ece": self.ece,
            "per_class": {
                d: {
                    "auroc": interval(m.auroc),
                    "ap": interval(m.ap),
                    "f1": m.f1,
                    "sensitivity": m.sensitivity,
                    "specificity": m.specificity,
                    "threshold_f1": m.threshold_f1,
                    "threshold_specificity": m.threshold_spec,
                    "ece": m.ece,
                    "positives": m.positives,
                }
                for d, m in self.per_class.items()
            },
            "localisation": {
                d: {"mass": v.mass, "chance": v.chance, "lift": v.lift, "pointing": v.pointing, "pairs": v.pairs}
                for d, v in self.localisation.items()
            },
            "notes": self.notes,
        }


def patient_groups(records: list[Any]) -> np.ndarray:
    """Bootstrap clusters: the patient id, else the image itself."""
    return np.array([r.patient_id or str(r.path) for r in records])


def evaluate_scores(
    test: ClassifierScores,
    val: ClassifierScores | None,
    ids: list[str],
    *,
    specificity: float = 0.9,
    resamples: int = 1000,
    seed: int = 0,
) -> Evaluation:
    """Metrics of ``test`` with thresholds tuned on ``val`` (on ``test`` itself, noted, without val)."""
    groups = patient_groups(test.records)
    tune = val if val is not None else test
    notes = [] if val is not None else ["no val split: thresholds tuned on test (optimistic)"]
    per: dict[str, ClassMetrics] = {}
    for j, disease in enumerate(ids):
        y, p = test.labels[:, j], test.probs[:, j]
        if not 0 < y.sum() < len(y):
            notes.append(f"{disease}: no positives (or no negatives) in {len(y)} test images; left out")
            continue
        ty, tp = tune.labels[:, j], tune.probs[:, j]
        if 0 < ty.sum() < len(ty):
            t_f1, t_spec = threshold_max_f1(ty, tp), threshold_for_specificity(ty, tp, specificity)
        else:
            notes.append(f"{disease}: val has no positives; thresholds 0.5")
            t_f1 = t_spec = 0.5
        at_spec = operating_point(y, p, t_spec)
        per[disease] = ClassMetrics(
            auroc=_ci(on_rows(auroc, y, p), len(y), groups, resamples, seed),
            ap=_ci(on_rows(average_precision, y, p), len(y), groups, resamples, seed),
            f1=operating_point(y, p, t_f1)["f1"],
            sensitivity=at_spec["sensitivity"],
            specificity=at_spec["specificity"],
            threshold_f1=t_f1,
            threshold_spec=t_spec,
            ece=expected_calibration_error(y, p),
            positives=int(y.sum()),
        )
    kept = [ids.index(d) for d in per]
    labels, probs = test.labels[:, kept], test.probs[:, kept]
    return Evaluation(
        ids=list(per),
        split="test",
        images=len(test.labels),
        per_class=per,
        macro_auroc=_ci(lambda r: macro(auroc)(labels[r], probs[r]), len(labels), groups, resamples, seed),
        macro_ap=_ci(lambda r: macro(average_precision)(labels[r], probs[r]), len(labels), groups, resamples, seed),
        macro_f1=float(np.mean([m.f1 for m in per.values()])) if per else math.nan,
        macro_sensitivity=float(np.mean([m.sensitivity for m in per.values()])) if per else math.nan,
        target_specificity=specificity,
        ece=expected_calibration_error(labels, probs) if per else math.nan,
        notes=notes,
    )


def _ci(stat: Callable[[np.ndarray], float], n: int, groups: np.ndarray, resamples: int, seed: int) -> Interval:
    return bootstrap_ci(stat, n, groups=groups, resamples=resamples, seed=seed)


# ----------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(scores: ClassifierScores, ids: list[str], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    for j, disease in enumerate(ids):
        y, p = scores.labels[:, j].astype(bool), scores.probs[:, j]
        if not 0 < y.sum() < len(y):
            continue
        order = np.argsort(-p, kind="mergesort")
        tpr = np.concatenate([[0], np.cumsum(y[order]) / y.sum()])
        fpr = np.concatenate([[0], np.cumsum(~y[order]) / (~y).sum()])
        ax.plot(fpr, tpr, lw=1.2, label=f"{disease} ({auroc(y, p):.2f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="chance (0.50)")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (test)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(scores: ClassifierScores, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    bins = reliability(scores.labels, scores.probs)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
    ax.plot([b[0] for b in bins], [b[1] for b in bins], "o-", label="model (number: predictions in the bin)")
    for conf, acc, n in bins:
        ax.annotate(str(n), (conf, acc), fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set(xlabel="predicted probability", ylabel="observed positive rate", title="Reliability (all classes, test)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sites(
    template: np.ndarray, priors: np.ndarray, mean_attention: np.ndarray | None, ids: list[str], path: Path
) -> Path:
    """Each disease's learned predilection sites over a fundus template: row 1 the sites'
    content-free spatial preference (their anatomical slice; dots at each site's peak), row 2 the
    mean attention on test images that have the disease. Axes are the fraction of the field of view
    across and down; colour bars and a legend say what the colours and dots are."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    rows = 2 if mean_attention is not None else 1
    cols = len(ids)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols + 1.2, 2.0 * rows + 1.0), squeeze=False)
    extent = (0.0, 1.0, 1.0, 0.0)
    shown: list[Any] = [None, None]
    for j, disease in enumerate(ids):
        ax = axes[0][j]
        ax.imshow(template, extent=extent)
        heat = priors[j].sum(axis=0)
        shown[0] = ax.imshow(heat / max(heat.max(), 1e-12), extent=extent, cmap="magma", alpha=0.55, vmin=0, vmax=1)
        g = priors.shape[-1]
        for k in range(priors.shape[1]):
            iy, ix = np.unravel_index(int(np.argmax(priors[j, k])), priors[j, k].shape)
            ax.plot((ix + 0.5) / g, (iy + 0.5) / g, "c.", ms=5)
        ax.set_title(disease, fontsize=8)
        if mean_attention is not None:
            ax2 = axes[1][j]
            ax2.imshow(template, extent=extent)
            m = mean_attention[j]
            if np.isfinite(m).all() and m.max() > 0:
                shown[1] = ax2.imshow(m / m.max(), extent=extent, cmap="viridis", alpha=0.55, vmin=0, vmax=1)
    for ax in axes.flat:
        ax.set_xticks([0, 0.5, 1])
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(labelsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("across the field (0-1)", fontsize=7)
    axes[0][0].set_ylabel("site priors\ndown the field (0-1)", fontsize=7)
    if rows == 2:
        axes[1][0].set_ylabel("mean attention, positives\ndown the field (0-1)", fontsize=7)
    labels = ("site prior (relative to its peak)", "mean attention (relative to its peak)")
    for row, image in enumerate(shown[:rows]):
        if image is not None:
            bar = fig.colorbar(image, ax=list(axes[row]), fraction=0.02, pad=0.01)
            bar.set_label(labels[row], fontsize=7)
            bar.ax.tick_params(labelsize=6)
    peak = Line2D([], [], color="c", marker=".", linestyle="none", markersize=7, label="peak of one site")
    fig.legend(handles=[peak], loc="lower left", fontsize=7, frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- markdown


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def markdown(evaluation: Evaluation, *, title: str, header: list[str], images: dict[str, str]) -> str:
    e = evaluation
    lines = [f"# {title}", "", *header, ""]
    lines += [
        f"Split `{e.split}`, {e.images} images. Macro AUROC **{e.macro_auroc}**, macro AP {e.macro_ap} "
        f"(95% bootstrap CIs over patients, {e.macro_auroc.resamples} resamples); macro F1 {_fmt(e.macro_f1)}; "
        f"macro sensitivity {_fmt(e.macro_sensitivity)} at the val threshold for specificity "
        f"{e.target_specificity:.2f}; ECE {_fmt(e.ece)}.",
        "",
        "| class | positives | AUROC [95% CI] | AP [95% CI] | F1 | sens @ spec | spec reached | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d, m in e.per_class.items():
        lines.append(
            f"| {d} | {m.positives} | {m.auroc} | {m.ap} | {_fmt(m.f1)} | {_fmt(m.sensitivity)} | "
            f"{_fmt(m.specificity)} | {_fmt(m.ece)} |"
        )
    if e.localisation:
        lines += [
            "",
            "## Attention vs drawn lesions",
            "",
            "Per positive (image, disease) with drawn lesions: the share of the disease's attention on token cells "
            "within its lesions (mass), the share a uniform map would put there (chance), their ratio (lift), and "
            "how often the attention peak lies on a lesion (pointing game).",
            "",
            "| class | pairs | mass | chance | lift | pointing |",
            "|---|---|---|---|---|---|",
        ]
        for d, v in e.localisation.items():
            lines.append(
                f"| {d} | {v.pairs} | {_fmt(v.mass)} | {_fmt(v.chance)} | {_fmt(v.lift)} | {_fmt(v.pointing)} |"
            )
    if images:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({file})" for name, file in images.items()]
    if e.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in e.notes]]
    return "\n".join(lines) + "\n"


def fundus_template(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """An RGB image in [0, 1] from preprocessed tensors ``(N, 3, S, S)``: their mean, denormalised."""
    image = pixels.mean(axis=0) * np.asarray(std)[:, None, None] + np.asarray(mean)[:, None, None]
    return np.clip(image.transpose(1, 2, 0), 0.0, 1.0)
