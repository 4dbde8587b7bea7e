"""Calibration on a site's own images: the gradability thresholds and referral operating points a screening
programme checks before go-live on a new camera.

The site's graders label a sample of its photographs (``read_labelled``: ``path`` and ``gradable``, optional
``reasons``, ``camera`` and disease ``labels``); each photograph is screened through the site's server
(``predilect serve`` with the model to go live), which returns its quality measures, probabilities and
decision. ``calibrate_site`` then

* scores each check's measure against the graders' labels (per-measure ROC: AUC and points), the confusion of
  the served gradability with the graders', and the gradable share;
* chooses thresholds on the site's images (``predilect.quality.calibration``: the graders' gradable photographs
  are the clean ones, their ungradable ones for a check's reason -- or any reason when none is given -- its
  targets; checks set by definition, and checks with fewer than ``MIN_CLEAN`` clean images in their scope,
  keep the served threshold) and the confusion those would give;
* compares the site's quality measures and probabilities with the model's reference distributions (when the
  repository carries them: ``predilect.drift``);
* with disease labels, reports each disease's sensitivity and specificity at the served operating point on
  the gradable photographs, its AUROC, and the threshold that would reach the target sensitivity there.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predilect import contract, drift, quality
from predilect.catalog import NORMAL_LABEL
from predilect.errors import UserError
from predilect.metrics import Rates, auroc, rates, threshold_for_sensitivity, wilson
from predilect.preprocess.config import check_field_angle
from predilect.quality import calibration

MIN_CLEAN = 20
"""A check's threshold moves only when at least this many gradable photographs lie in its scope."""
_TRUE, _FALSE = {"1", "yes", "true", "gradable", "y"}, {"0", "no", "false", "ungradable", "n"}


class LabelledManifestError(UserError, ValueError):
    """A labelled manifest that cannot be read: the message names the file and line."""


@dataclass(frozen=True)
class Labelled:
    """One graded photograph: ``gradable`` by the site's grader, the ``reasons`` given (QUALITY_REASONS),
    its ``camera``, and its disease ``labels`` (None when the manifest gives none)."""

    path: Path
    gradable: bool
    reasons: frozenset[str] = frozenset()
    camera: str | None = None
    labels: frozenset[str] | None = None
    field_angle_deg: float | None = None


def read_labelled(path: Path, *, diseases: Sequence[str] = ()) -> list[Labelled]:
    """The rows of a labelled manifest: CSV with ``path`` (relative to the file) and ``gradable`` (1/0, yes/no,
    true/false), optional ``reasons`` (``;``-joined ``contract.QUALITY_REASONS``), ``camera``, ``field_angle_deg``
    (the camera's, degrees) and ``labels`` (``;``-joined disease ids of ``diseases``, or ``normal``)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise LabelledManifestError(f"cannot read {path}: {e.strerror}") from e
    reader = csv.DictReader(text.splitlines())
    columns = set(reader.fieldnames or ())
    if not {"path", "gradable"} <= columns:
        raise LabelledManifestError(
            f"{path}:1: a labelled manifest needs columns path and gradable, has {sorted(columns)}"
        )
    rows = []
    for line, row in enumerate(reader, start=2):
        where = f"{path}:{line}"
        value = (row.get("gradable") or "").strip().lower()
        if value not in _TRUE | _FALSE:
            raise LabelledManifestError(f"{where}: gradable must be 1/0, yes/no or true/false, got {value!r}")
        reasons = frozenset(r.strip() for r in (row.get("reasons") or "").split(";") if r.strip())
        unknown = sorted(reasons - set(contract.QUALITY_REASONS))
        if unknown:
            raise LabelledManifestError(
                f"{where}: unknown reasons {unknown}; use {', '.join(contract.QUALITY_REASONS)}"
            )
        image = Path(row["path"].strip())
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise LabelledManifestError(f"{where}: no image at {image}")
        labels = None
        if "labels" in columns and (row.get("labels") or "").strip():
            ids = frozenset(x.strip() for x in row["labels"].split(";") if x.strip()) - {NORMAL_LABEL}
            if diseases and ids - set(diseases):
                raise LabelledManifestError(f"{where}: unknown disease ids {sorted(ids - set(diseases))}")
            labels = ids
        camera = (row.get("camera") or "").strip() or None
        angle_text = (row.get("field_angle_deg") or "").strip()
        try:
            angle = check_field_angle(angle_text) if angle_text else None
        except ValueError as e:
            raise LabelledManifestError(f"{where}: field_angle_deg: {e}") from e
        rows.append(Labelled(image, value in _TRUE, reasons, camera, labels, angle))
    if not rows:
        raise LabelledManifestError(f"{path} lists no photograph")
    return rows


@dataclass(frozen=True)
class Screened:
    """What the server answered for the labelled photographs (row-aligned with them)."""

    measures: np.ndarray  # (N, len(QUALITY_MEASURES))
    served_gradable: np.ndarray  # (N,) bool
    probabilities: np.ndarray  # (N, C)
    diseases: tuple[str, ...]


@dataclass(frozen=True)
class Confusion:
    """Ungradable as the positive class: the grader's label against a grading."""

    both_ungradable: int
    missed: int  # the grader: ungradable; the grading: gradable
    false_alarm: int  # the grader: gradable; the grading: ungradable
    both_gradable: int

    @classmethod
    def of(cls, grader_gradable: np.ndarray, graded: np.ndarray) -> Confusion:
        g, p = np.asarray(grader_gradable, bool), np.asarray(graded, bool)
        return cls(int((~g & ~p).sum()), int((~g & p).sum()), int((g & ~p).sum()), int((g & p).sum()))

    def to_dict(self) -> dict[str, Any]:
        ungradable, gradable = self.both_ungradable + self.missed, self.false_alarm + self.both_gradable
        return {
            "both_ungradable": self.both_ungradable,
            "missed": self.missed,
            "false_alarm": self.false_alarm,
            "both_gradable": self.both_gradable,
            "sensitivity": self.both_ungradable / ungradable if ungradable else math.nan,
            "specificity": self.both_gradable / gradable if gradable else math.nan,
        }


@dataclass(frozen=True)
class CheckReport:
    name: str
    measure: str
    reason: str
    clean: int
    targets: int
    auc: float
    served_threshold: float
    site_threshold: float
    chosen: str  # "on the site's images" | "by definition" | "kept: too few ..."
    roc: list[tuple[float, float, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class DiseaseReport:
    disease: str
    served_threshold: float
    served: Rates
    auroc: float
    site_threshold: float | None
    site: Rates | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "disease": self.disease,
            "served_threshold": self.served_threshold,
            "served": self.served.to_dict(),
            "auroc": self.auroc,
            "site_threshold": self.site_threshold,
            "site": self.site.to_dict() if self.site else None,
        }


@dataclass(frozen=True)
class SiteReport:
    count: int
    grader_gradable: int
    served_gradable: int
    site_gradable: int
    served_confusion: Confusion
    site_confusion: Confusion
    checks: list[CheckReport]
    site_quality: quality.QualityCfg
    drift: drift.Drift | None
    diseases: list[DiseaseReport]
    target_sensitivity: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "gradable_share": {
                "grader": self.grader_gradable / self.count,
                "served": self.served_gradable / self.count,
                "site_thresholds": self.site_gradable / self.count,
            },
            "served_confusion": self.served_confusion.to_dict(),
            "site_confusion": self.site_confusion.to_dict(),
            "checks": [c.to_dict() for c in self.checks],
            "site_quality": self.site_quality.to_dict(),
            "drift": self.drift.to_dict() if self.drift is not None else None,
            "operating_points": {
                "target_sensitivity": self.target_sensitivity,
                "diseases": [d.to_dict() for d in self.diseases],
            },
        }


def calibrate_site(
    labelled: Sequence[Labelled],
    screened: Screened,
    served_quality: quality.QualityCfg,
    *,
    served_thresholds: Mapping[str, float],
    reference: drift.Reference | None,
    clean_quantile: float = 0.995,
    target_sensitivity: float = 0.9,
    source: str = "",
) -> SiteReport:
    """The site report and thresholds (see the module docstring)."""
    grader = np.array([r.gradable for r in labelled], dtype=bool)
    measures = screened.measures
    checks, thresholds = [], dict(served_quality.thresholds)
    for check in quality.CHECKS:
        values = calibration.check_values(measures, check)
        scope = np.isfinite(values)
        aimed = np.array([not r.gradable and (not r.reasons or check.reason in r.reasons) for r in labelled])
        clean, targets = values[scope & grader], values[scope & aimed]
        upper = check.direction == "max"
        if check.name in calibration.DEFINED:
            chosen = "by definition"
        elif len(clean) < MIN_CLEAN:
            chosen = f"kept: {len(clean)} gradable images in scope (< {MIN_CLEAN})"
        else:
            threshold = calibration.tail_threshold(clean, targets, upper=upper, clean_quantile=clean_quantile)
            thresholds[check.name] = calibration.floored(check.name, threshold)
            chosen = "on the site's images"
        checks.append(
            CheckReport(
                name=check.name,
                measure=check.measure,
                reason=check.reason,
                clean=len(clean),
                targets=len(targets),
                auc=calibration.auc(clean, targets, upper=upper),
                served_threshold=float(served_quality.thresholds[check.name]),
                site_threshold=float(thresholds[check.name]),
                chosen=chosen,
                roc=calibration.roc_points(clean, targets, upper=upper),
            )
        )
    site_quality = served_quality.with_thresholds(thresholds, source=source)
    site_gradable = quality.grade(measures, site_quality).gradable
    shift = None
    if reference is not None:
        shift = drift.compare(
            reference,
            measures={m: measures[:, i] for i, m in enumerate(contract.QUALITY_MEASURES)},
            probabilities={d: screened.probabilities[:, i] for i, d in enumerate(screened.diseases)},
            ungradable=~screened.served_gradable,
            group="site",
        )
    return SiteReport(
        count=len(labelled),
        grader_gradable=int(grader.sum()),
        served_gradable=int(screened.served_gradable.sum()),
        site_gradable=int(site_gradable.sum()),
        served_confusion=Confusion.of(grader, screened.served_gradable),
        site_confusion=Confusion.of(grader, site_gradable),
        checks=checks,
        site_quality=site_quality,
        drift=shift,
        diseases=_operating_points(labelled, screened, served_thresholds, target_sensitivity),
        target_sensitivity=target_sensitivity,
    )


def _operating_points(
    labelled: Sequence[Labelled], screened: Screened, served_thresholds: Mapping[str, float], target: float
) -> list[DiseaseReport]:
    """Per disease, on the photographs the grader called gradable and labelled for disease."""
    rows = [i for i, r in enumerate(labelled) if r.gradable and r.labels is not None]
    if not rows:
        return []
    out = []
    for column, disease in enumerate(screened.diseases):
        labels = np.array([disease in (labelled[i].labels or ()) for i in rows], dtype=bool)
        if not labels.any() or labels.all():
            continue
        scores = screened.probabilities[rows, column]
        site_threshold = threshold_for_sensitivity(labels, scores, target)
        out.append(
            DiseaseReport(
                disease=disease,
                served_threshold=float(served_thresholds[disease]),
                served=rates(labels, scores, float(served_thresholds[disease])),
                auroc=auroc(labels, scores),
                site_threshold=site_threshold,
                site=rates(labels, scores, site_threshold) if site_threshold is not None else None,
            )
        )
    return out


def _pct(hits: int, total: int) -> str:
    low, high = wilson(hits, total)
    return f"{100 * hits / total:.1f}% ({hits}/{total}; 95% CI {100 * low:.1f}-{100 * high:.1f})" if total else "-"


def _confusion_lines(title: str, c: Confusion) -> list[str]:
    d = c.to_dict()
    return [
        f"{title}: sensitivity to ungradable {_pct(c.both_ungradable, c.both_ungradable + c.missed)}, "
        f"specificity {_pct(c.both_gradable, c.both_gradable + c.false_alarm)}",
        "",
        "| grader \\ grading | ungradable | gradable |",
        "|---|---|---|",
        f"| ungradable | {d['both_ungradable']} | {d['missed']} |",
        f"| gradable | {d['false_alarm']} | {d['both_gradable']} |",
        "",
    ]


def report_markdown(report: SiteReport, *, header: Sequence[str]) -> str:
    """The site report as markdown."""
    n = report.count
    lines = [*header, ""]
    lines += [
        "## Gradable share",
        "",
        "| by | gradable |",
        "|---|---|",
        f"| the site's graders | {_pct(report.grader_gradable, n)} |",
        f"| the served thresholds | {_pct(report.served_gradable, n)} |",
        f"| the site's thresholds | {_pct(report.site_gradable, n)} |",
        "",
        "## Confusion with the graders (ungradable is the positive class)",
        "",
    ]
    lines += _confusion_lines("Served thresholds", report.served_confusion)
    lines += _confusion_lines("Site thresholds (chosen on these same images: optimistic)", report.site_confusion)
    lines += [
        "## Per check: ROC of its measure against the graders' labels, and the thresholds",
        "",
        "| check | reason | gradable in scope | ungradable for it | AUC | served | site | chosen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in report.checks:
        auc = "-" if math.isnan(c.auc) else f"{c.auc:.3f}"
        lines.append(
            f"| {c.name} | {c.reason} | {c.clean} | {c.targets} | {auc} | {c.served_threshold:.4g} | "
            f"{c.site_threshold:.4g} | {c.chosen} |"
        )
    lines += ["", "ROC points (threshold: share of ungradable flagged / share of gradable flagged):", ""]
    for c in report.checks:
        if c.targets and c.clean:
            points = "; ".join(f"{t:.3g}: {tp:.2f}/{fp:.2f}" for t, tp, fp in c.roc)
            lines.append(f"* {c.name}: {points}")
    lines += ["", "## Against the model's reference distributions", ""]
    if report.drift is None:
        lines.append("The repository carries no reference (`predilect assemble --reference-manifest`).")
    else:
        lines.append(f"Level **{report.drift.level}**; series by PSI, worst first:")
        lines += ["", "| series | images | PSI | KS | level |", "|---|---|---|---|---|"]
        ordered = sorted(report.drift.series, key=lambda s: -(s.psi if math.isfinite(s.psi) else -1.0))
        lines += [f"| {s.name} | {s.count} | {s.psi:.3f} | {s.ks:.3f} | {s.level} |" for s in ordered]
    lines += ["", f"## Referral operating points (target sensitivity {report.target_sensitivity:.2f})", ""]
    if not report.diseases:
        lines.append("No disease labels with both classes among the gradable photographs.")
    else:
        lines += [
            "| disease | AUROC | served threshold | sensitivity | specificity "
            "| site threshold | sensitivity | specificity |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for d in report.diseases:
            site = d.site
            lines.append(
                f"| {d.disease} | {d.auroc:.3f} | {d.served_threshold:.3g} | {d.served.sensitivity:.2f} "
                f"({d.served.positives} pos) | {d.served.specificity:.2f} ({d.served.negatives} neg) | "
                + (
                    f"{d.site_threshold:.3g} | {site.sensitivity:.2f} | {site.specificity:.2f} |"
                    if site is not None and d.site_threshold is not None
                    else "- | - | - |"
                )
            )
    return "\n".join(lines) + "\n"
