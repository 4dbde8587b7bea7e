"""The localisation chain: phantom coordinates -> served preprocessing -> token grid -> scorer.

An oracle heatmap read from the model input's own pixels (the brightest grid cell: the optic
disc, in images without bright lesions -- exudates and drusen can outshine it) must hit the disc
the phantom recorded, for right and left eyes, through the same crop (``FieldBox``), cell
geometry and row-major grid the served heatmaps are scored with; the same map mirrored or
transposed must miss; and the disc's brightest pixels, carried back onto the photograph, must
land inside the recorded disc. A coordinate bug anywhere in the chain (x/y swapped, an eye
flipped, the crop misplaced, a cell offset) fails it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from predilect.build.localisation import lit_cells
from predilect.lesions import DrawnImage, Lesion, cell_rect, read_lesions, score_peak
from predilect.preprocess import PreprocessCfg, Preprocessor
from predilect.quality import planes_from_pixels

GRID = 8
DARK_LESIONS = {"normal", "glaucoma", "rvo"}  # no finding brighter than the disc


def _brightness_map(pixels: np.ndarray, cfg: PreprocessCfg) -> np.ndarray:
    """(GRID, GRID): mean brightness of each cell of the model input, rows top to bottom."""
    planes = planes_from_pixels(pixels[np.newaxis], cfg.mean, cfg.std)[0].sum(axis=0)
    cell = planes.shape[0] // GRID
    return planes[: GRID * cell, : GRID * cell].reshape(GRID, cell, GRID, cell).mean(axis=(1, 3))


def _disc_in_photograph(pixels: np.ndarray, cfg: PreprocessCfg, box, width: int, height: int) -> tuple[float, float]:
    """The centroid of the brightest pixels of the model input (the disc's core), carried onto the
    photograph through the scorer's own geometry (each input pixel as a cell of a size x size grid)."""
    planes = planes_from_pixels(pixels[np.newaxis], cfg.mean, cfg.std)[0].sum(axis=0)
    rows, columns = np.nonzero(planes >= np.percentile(planes, 99.7))
    size = planes.shape[0]
    rect = cell_rect(int(round(rows.mean())), int(round(columns.mean())), size, box, width, height)
    return ((rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2)


def _discs(phantom: Path) -> dict[str, Lesion]:
    discs = {}
    for line in (phantom / "lesions.jsonl").read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry["modality"] == "fundus":
            disc = entry["disc"]
            discs[entry["path"]] = Lesion("disc", disc["x"], disc["y"], disc["r"])
    return discs


def test_oracle_heatmap_hits_recorded_disc_and_mirrored_one_misses_when_scored_through_served_crop(
    phantom_manifest: Path,
) -> None:
    phantom = phantom_manifest.parent
    drawn = read_lesions(phantom / "lesions.jsonl")
    discs = _discs(phantom)
    cfg = PreprocessCfg()
    with phantom_manifest.open(encoding="utf-8") as f:
        dark = {row["path"] for row in csv.DictReader(f) if set(row["labels"].split(";")) <= DARK_LESIONS}
    paths = sorted(p for p in discs if p in dark)[:24]
    assert len(paths) >= 12
    done = Preprocessor(cfg, max_batch_size=8).run([(phantom / p).read_bytes() for p in paths])
    pixels, errors, boxes = done.pixels, done.errors, done.boxes
    assert not any(errors)
    tally = {"oracle": 0, "mirrored": 0, "transposed": 0}
    eyes = set()
    for i, path in enumerate(paths):
        image = drawn[path]
        box = boxes[i]
        assert box is not None
        assert box == pytest.approx(image.field_box(), abs=0.01), "the drawn FOV gives the served crop"
        disc = DrawnImage(path, image.width, image.height, (discs[path],))
        x, y = _disc_in_photograph(pixels[i], cfg, box, image.width, image.height)
        recorded = discs[path]
        assert np.hypot(x - recorded.x * image.width, y - recorded.y * image.height) < recorded.r * image.width, path
        heat = _brightness_map(pixels[i], cfg)
        lit = lit_cells(pixels[i], GRID, cfg)
        for name, m in (("oracle", heat), ("mirrored", heat[:, ::-1]), ("transposed", heat.T)):
            tally[name] += score_peak(m, box, disc, "disc", lit).hit
        eyes.add("L" if path.endswith("_L.jpg") else "R")
    assert eyes == {"L", "R"}
    assert tally["oracle"] == len(paths), tally
    assert tally["mirrored"] == 0 and tally["transposed"] == 0, tally


def test_localisation_variants_served_row_equals_onnx_localisation_when_run_on_same_split(pipeline, tmp_path) -> None:
    """The bench's in-process ``attention`` row is the served heatmap: the same hits per disease as
    ``predilect localisation`` scores on the exported model under ONNX Runtime."""
    from predilect.benchmarks.localisation_variants_cli import main as variants_main
    from predilect.build.localisation_cli import main as localisation_main

    phantom = pipeline.manifest.parent
    served, bench = tmp_path / "served.md", tmp_path / "variants.md"
    argv = ["--phantom", str(phantom), "--split", "test"]
    assert localisation_main(["--onnx", str(pipeline.onnx), *argv, "--report", str(served)]) == 0
    assert (
        variants_main(["--checkpoint", str(pipeline.checkpoint), *argv, "--resamples", "20", "--report", str(bench)])
        == 0
    )
    want = json.loads(served.with_suffix(".json").read_text())["all_positive"]
    got = json.loads(bench.with_suffix(".json").read_text())
    assert want and set(got["images"]) == set(want)
    for disease, tally in want.items():
        assert got["images"][disease] == tally["images"]
        assert got["variants"]["attention"]["hit_rate"][disease] == pytest.approx(tally["hit_rate"])
        assert got["chance"][disease] == pytest.approx(tally["chance"])
    assert got["variants"]["attention"]["macro_diff_vs_served"] == 0.0
