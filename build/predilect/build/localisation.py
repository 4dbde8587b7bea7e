"""Does a heatmap point at the lesion? The served heatmaps scored against where the phantom drew lesions.

For each held-out image and each disease it truly shows (with lesions drawn for it in
``lesions.jsonl``), the image goes through the served preprocessing and the exported model under
ONNX Runtime -- the computation the server runs; its ``HEATMAPS`` row for a positive finding is
exactly this ``ATTENTION`` row -- and the disease's attention map is read:

* **hit** (the figure reported): the hottest grid cell, mapped onto the photograph through the
  cropped square (``FIELD_BOX``), overlaps a lesion of that disease (a disc of the drawn radius);
* **centre hit** (stricter): the hottest cell's centre lies inside such a disc;
* **chance**, beside each: what a peak placed at random on a field-of-view cell of the same image
  would score -- the share of those cells that overlap a lesion of that disease (for the hit), or
  whose centre lies inside one (for the centre hit: small lesions rarely cover a cell's centre).

The lesions, the cell geometry and the scoring are ``predilect.lesions`` -- the same
that ``predilect evaluate`` uses on in-process attention.

Figures are given over every truly positive image, and over those the model also called positive
(the served heatmaps exist only for findings).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predilect import contract
from predilect.catalog import Catalog
from predilect.lesions import DrawnImage, PeakScore, score_peak
from predilect.preprocess import PreprocessCfg, Preprocessor


@dataclass
class Tally:
    images: int = 0
    hits: int = 0
    centre_hits: int = 0
    chance: float = 0.0  # summed per image, divided at the end
    centre_chance: float = 0.0

    def add(self, score: PeakScore) -> None:
        self.images += 1
        self.hits += score.hit
        self.centre_hits += score.centre_hit
        self.chance += score.chance
        self.centre_chance += score.centre_chance

    def to_dict(self) -> dict[str, Any]:
        from predilect.metrics import wilson

        low, high = wilson(self.hits, self.images)
        n = max(self.images, 1)
        return {
            "images": self.images,
            "hit_rate": self.hits / n if self.images else math.nan,
            "hit_ci95": [low, high],
            "centre_hit_rate": self.centre_hits / n if self.images else math.nan,
            "chance": self.chance / n if self.images else math.nan,
            "centre_chance": self.centre_chance / n if self.images else math.nan,
        }


@dataclass
class Localisation:
    all_positive: dict[str, Tally] = field(default_factory=dict)
    called_positive: dict[str, Tally] = field(default_factory=dict)
    by_group: dict[str, dict[str, Tally]] = field(default_factory=dict)  # e.g. seen / held-out cameras

    def to_dict(self) -> dict[str, Any]:
        return {
            "all_positive": {d: t.to_dict() for d, t in self.all_positive.items()},
            "called_positive": {d: t.to_dict() for d, t in self.called_positive.items()},
            "by_group": {g: {d: t.to_dict() for d, t in row.items()} for g, row in self.by_group.items()},
        }


def lit_cells(pixels: np.ndarray, grid: int, cfg: PreprocessCfg) -> np.ndarray:
    """(g, g) bool: grid cells of the model input whose pixels are mostly inside the field of view."""
    from predilect.quality import planes_from_pixels

    planes = planes_from_pixels(pixels[np.newaxis], cfg.mean, cfg.std)[0]
    lit = planes.max(axis=0) > cfg.fov_threshold
    size = lit.shape[0] - lit.shape[0] % grid
    cells = lit[:size, :size].reshape(grid, size // grid, grid, size // grid).mean(axis=(1, 3))
    return cells > 0.5


def measure_localisation(
    onnx_path: Path,
    records: Iterable[Any],
    drawn: Mapping[str, DrawnImage],
    root: Path,
    catalog: Catalog,
    preprocess: PreprocessCfg,
    *,
    batch_size: int = 16,
    groups: Callable[[Any], Sequence[str]] | None = None,
) -> Localisation:
    """Score every truly positive (record, disease) with drawn lesions; see the module docstring.
    ``groups(record)`` names the groups an image also counts in (``by_group``: e.g. its camera
    profile, and whether the training split had that profile)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if contract.ATTENTION not in names:
        raise ValueError(f"{onnx_path} has no {contract.ATTENTION} output; export it with `predilect export`")
    preprocessor = Preprocessor(preprocess, max_batch_size=batch_size)
    result = Localisation()
    todo = [r for r in records if any(d in catalog.ids for d in r.labels)]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        done = preprocessor.run([r.path.read_bytes() for r in chunk])
        pixels, errors, boxes = done.pixels, done.errors, done.boxes
        accepted = [(r, box) for r, error, box in zip(chunk, errors, boxes, strict=True) if error is None]
        if not accepted:
            continue
        logits, attention = session.run([contract.LOGITS, contract.ATTENTION], {contract.PIXELS: pixels})
        probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        for i, (record, box) in enumerate(accepted):
            image = drawn.get(Path(record.path).resolve().relative_to(root.resolve()).as_posix())
            if image is None or box is None:
                continue
            lit = lit_cells(pixels[i], attention.shape[-1], preprocess)
            for disease in sorted(record.labels):
                if disease not in catalog.ids or not image.of(disease):
                    continue
                c = catalog.index(disease)
                scored = score_peak(attention[i, c], box, image, disease, lit)
                result.all_positive.setdefault(disease, Tally()).add(scored)
                for group in groups(record) if groups is not None else ():
                    result.by_group.setdefault(group, {}).setdefault(disease, Tally()).add(scored)
                if probabilities[i, c] >= catalog[disease].threshold:
                    result.called_positive.setdefault(disease, Tally()).add(scored)
    return result


def report_markdown(result: Localisation, *, header: Sequence[str]) -> str:
    def rows(tallies: Mapping[str, Tally]) -> list[str]:
        out = []
        for disease in sorted(tallies):
            t = tallies[disease].to_dict()
            low, high = t["hit_ci95"]
            met = "yes" if t["hit_rate"] >= 0.9 else "no"
            hit = f"{100 * t['hit_rate']:.1f}% ({100 * low:.1f}-{100 * high:.1f})"
            out.append(
                f"| {disease} | {t['images']} | {hit} | {met} | "
                f"{100 * t['chance']:.1f}% | {100 * t['centre_hit_rate']:.1f}% | {100 * t['centre_chance']:.1f}% |"
            )
        return out

    head = [
        "| disease | images | peak on a lesion (95% CI) | >= 90% | chance | peak cell centre in a lesion | chance |",
        "|---|---|---|---|---|---|---|",
    ]
    lines = [*header, "", "## Every truly positive held-out image", "", *head, *rows(result.all_positive)]
    lines += ["", "## Those the model also called positive (the served heatmaps)", "", *head]
    lines += rows(result.called_positive)
    for group in sorted(result.by_group):
        lines += ["", f"## Every truly positive held-out image: {group}", "", *head, *rows(result.by_group[group])]
    return "\n".join(lines) + "\n"
