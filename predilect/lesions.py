"""Where the phantom drew its lesions (``lesions.jsonl``), carried onto the model's token grid.

The one reader of ``lesions.jsonl`` and the one geometry both localisation scorers use
(``predilect evaluate``'s attention-vs-lesion table and ``predilect localisation``'s served
heatmaps). A lesion is a disc in the photograph (centre ``x, y`` normalised to the width and the
height, radius ``r`` normalised to the width); the model input is the square ``FieldBox`` that
preprocessing crops; grid cell ``(row, column)`` of a ``g x g`` token grid is the rectangle
``row / g .. (row + 1) / g`` down and ``column / g ..`` across that square (rows top to bottom,
columns left to right: the row-major token order of the encoders). A cell **meets** a lesion
when the rectangle and the disc overlap.

Numpy and the stdlib only, so the build side can score ONNX outputs without torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from predilect.errors import ConfigError
from predilect.preprocess import FieldBox, field_box_in_frame


@dataclass(frozen=True)
class Lesion:
    disease: str
    x: float  # normalised to the image width
    y: float  # normalised to the image height
    r: float  # normalised to the image width


@dataclass(frozen=True)
class DrawnImage:
    """One line of ``lesions.jsonl``: where each lesion was drawn, in the image's own coordinates.

    ``fov``: the drawn field-of-view circle ``(x, y, r)`` (normalised like a lesion), None when
    the line has none (then the whole frame is taken as the field).
    """

    path: str
    width: int
    height: int
    lesions: tuple[Lesion, ...]
    fov: tuple[float, float, float] | None = None

    def of(self, disease: str) -> tuple[Lesion, ...]:
        return tuple(lesion for lesion in self.lesions if lesion.disease == disease)

    def field_box(self) -> FieldBox:
        """The square preprocessing crops, from the drawn field of view (``preprocess.field_box_in_frame``).

        The served pipeline measures the field from the pixels (``Preprocessed.boxes``);
        this is the same square computed from the circle the phantom drew, without decoding.
        """
        w, h = float(self.width), float(self.height)
        if self.fov is None:
            return field_box_in_frame(w, h, w, h)
        cx, cy, r = self.fov[0] * w, self.fov[1] * h, self.fov[2] * w
        fov_w = min(cx + r, w) - max(cx - r, 0.0)
        fov_h = min(cy + r, h) - max(cy - r, 0.0)
        return field_box_in_frame(w, h, fov_w, fov_h)


def read_lesions(path: Path) -> dict[str, DrawnImage]:
    """``lesions.jsonl`` by image path as written (relative to the file's folder); ``ConfigError`` naming
    the line of a malformed record."""
    images = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            lesions = tuple(
                Lesion(str(d["disease"]), float(d["x"]), float(d["y"]), float(d["r"])) for d in data["lesions"]
            )
            fov = data.get("fov")
            circle = (float(fov["x"]), float(fov["y"]), float(fov["r"])) if fov is not None else None
            images[str(data["path"])] = DrawnImage(
                str(data["path"]), int(data["width"]), int(data["height"]), lesions, circle
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path} line {number}: not a lesion record: {e}") from e
    return images


def by_resolved_path(table: dict[str, DrawnImage], root: Path) -> dict[Path, DrawnImage]:
    """``read_lesions``' table keyed by each image's resolved path under ``root`` (the file's folder)."""
    return {(Path(root) / key).resolve(): image for key, image in table.items()}


def cell_rect(row: int, column: int, grid: int, box: FieldBox, width: int, height: int) -> tuple[float, ...]:
    """The grid cell (row, column) of the model input as a rectangle ``(x0, y0, x1, y1)`` in photograph pixels."""
    left, top, right, bottom = box
    cell_w, cell_h = (right - left) / grid, (bottom - top) / grid
    x0, y0 = (left + column * cell_w) * width, (top + row * cell_h) * height
    return (x0, y0, x0 + cell_w * width, y0 + cell_h * height)


def meets(rect: Sequence[float], lesion: Lesion, width: int, height: int) -> bool:
    """Whether the rectangle (photograph pixels) and the lesion's disc overlap."""
    cx, cy, radius = lesion.x * width, lesion.y * height, lesion.r * width
    nearest_x, nearest_y = min(max(cx, rect[0]), rect[2]), min(max(cy, rect[1]), rect[3])
    return math.hypot(cx - nearest_x, cy - nearest_y) <= radius


def covers(point: tuple[float, float], lesion: Lesion, width: int, height: int) -> bool:
    """Whether the point (photograph pixels) lies inside the lesion's disc."""
    return math.hypot(point[0] - lesion.x * width, point[1] - lesion.y * height) <= lesion.r * width


def lesion_cells(drawn: DrawnImage, disease: str, grid: int, box: FieldBox) -> np.ndarray:
    """``(grid, grid)`` bool: the cells that meet one of ``disease``'s lesions."""
    lesions = drawn.of(disease)
    out = np.zeros((grid, grid), dtype=bool)
    for r in range(grid):
        for c in range(grid):
            rect = cell_rect(r, c, grid, box, drawn.width, drawn.height)
            out[r, c] = any(meets(rect, le, drawn.width, drawn.height) for le in lesions)
    return out


def lesion_centre_cells(drawn: DrawnImage, disease: str, grid: int, box: FieldBox) -> np.ndarray:
    """``(grid, grid)`` bool: the cells whose centre lies inside one of ``disease``'s lesions."""
    lesions = drawn.of(disease)
    out = np.zeros((grid, grid), dtype=bool)
    for r in range(grid):
        for c in range(grid):
            x0, y0, x1, y1 = cell_rect(r, c, grid, box, drawn.width, drawn.height)
            centre = ((x0 + x1) / 2, (y0 + y1) / 2)
            out[r, c] = any(covers(centre, le, drawn.width, drawn.height) for le in lesions)
    return out


class PeakScore(NamedTuple):
    """One heatmap's peak against one disease's drawn lesions (see ``score_peak``)."""

    hit: bool
    centre_hit: bool
    chance: float
    centre_chance: float


def score_peak(heatmap: np.ndarray, box: FieldBox, drawn: DrawnImage, disease: str, lit: np.ndarray) -> PeakScore:
    """Where the hottest cell of ``heatmap`` ``(g, g)`` falls, against ``disease``'s drawn lesions.

    ``hit``: the cell meets a lesion; ``centre_hit``: its centre lies inside one. ``chance`` and
    ``centre_chance``: the same for a peak placed at random on a ``lit`` cell (``(g, g)`` bool, the
    cells inside the field of view) -- each figure's own control.
    """
    grid = heatmap.shape[0]
    met = lesion_cells(drawn, disease, grid, box)
    centred = lesion_centre_cells(drawn, disease, grid, box)
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    cells = max(int(lit.sum()), 1)
    return PeakScore(
        bool(met[row, column]),
        bool(centred[row, column]),
        float((met & lit).sum() / cells),
        float((centred & lit).sum() / cells),
    )
