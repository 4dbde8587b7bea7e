"""Companion figures for gradability-2026-11-26e-dark-anchored.md (run after `predilect gradability`).

1. ``exposure_level`` of every clean photograph of each phantom, per camera, against the clean
   floor (``clean_exposure_floor``) and each profile's own floor: is the floor below them all?
2. ``exposure_level`` of the dark copies the gradability run made, per set and strength.
3. The held-out sets of that run graded with another threshold file (the packaged one before the
   run), beside the run's own calibration: how much of the result is the new ``dark`` and how much
   the recalibrated brightness threshold.

    python benchmarks/results/gradability-2026-11-26e-dark-anchored.py --run /tmp/i12dark/grad \
        --phantom /tmp/i12/hard /tmp/i12/easy --thresholds /tmp/i12dark/packaged-e6332f6.json
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from predilect.catalog import load_catalog
from predilect.preprocess import PreprocessCfg
from predilect.quality import load_quality_cfg
from predilect.training import gradability
from predilect.training.manifest import read_manifest
from predilect.training.phantom.degrade import DEGRADED_MANIFEST, _darkest_level, clean_exposure_floor, exposure_level
from predilect.training.phantom.presets import CAMERAS


def _level(path: Path) -> float:
    with Image.open(path) as im:
        return exposure_level(im)


def clean_levels(phantom: Path, floor: float) -> list[str]:
    per: dict[str, list[float]] = {}
    with (phantom / "manifest.csv").open() as f:
        for row in csv.DictReader(f):
            per.setdefault(row.get("camera") or "reference", []).append(_level(phantom / row["path"]))
    lines = []
    for camera, values in sorted(per.items()):
        v = np.array(values)
        lines.append(
            f"| {phantom.name} | {camera} | {len(v)} | {v.min():.1f} | {np.quantile(v, 0.005):.1f} | "
            f"{np.median(v):.1f} | {_darkest_level(CAMERAS[camera]):.1f} | {v.min() / floor:.3f} |"
        )
    return lines


def dark_levels(folder: Path, floor: float) -> list[str]:
    per: dict[str, list[float]] = {}
    with (folder / DEGRADED_MANIFEST).open() as f:
        for row in csv.DictReader(f):
            if row["degradation"] == "dark":
                per.setdefault(row["degradation_strength"], []).append(_level(folder / row["path"]))
    return [
        f"| {folder.name} | {s} | {len(v)} | {min(v):.1f} | {np.median(v):.1f} | {max(v):.1f} | {max(v) / floor:.3f} |"
        for s, v in sorted(per.items())
    ]


def graded(run: Path, phantoms: list[Path], thresholds: Path) -> list[str]:
    """Held-out flag rates under the run's own thresholds and under ``thresholds``."""
    cfgs = {
        "this run's": load_quality_cfg(run / "quality_calibration.json"),
        thresholds.name: load_quality_cfg(thresholds),
    }
    sets = {"hard test": (phantoms[0], run / "measurement")}
    sets |= {f"{p.name} test": (p, run / f"also-{p.name}") for p in phantoms[1:]}
    lines = []
    for name, (phantom, folder) in sets.items():
        catalog = load_catalog(phantom / "phantom_catalog.json")
        clean = read_manifest(folder / "clean_manifest.csv", catalog=catalog)
        copies = [
            r for r in read_manifest(folder / DEGRADED_MANIFEST, catalog=catalog) if r.extra["degradation"] != "none"
        ]
        measured = gradability.measure_records([*clean, *copies], PreprocessCfg())
        for label, cfg in cfgs.items():
            ev = gradability.evaluate(measured, cfg)
            dark = ev.flagged_by_strength["dark"]
            cells = " / ".join(f"{r.hits}" for _, r in sorted(dark.items()))
            lines.append(
                f"| {name} | {label} ({cfg.thresholds['brightness']:.2f}) | "
                f"{ev.clean_pass.hits}/{ev.clean_pass.total} | "
                f"{ev.flagged['dark'].hits}/{ev.flagged['dark'].total} | {cells} (of 15) | "
                f"{ev.expected_reason['dark'].hits}/{ev.expected_reason['dark'].total} |"
            )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="the `predilect gradability --out` folder")
    p.add_argument("--phantom", type=Path, nargs="+", required=True, help="its --phantom, then its --also folders")
    p.add_argument("--thresholds", type=Path, required=True, help="another quality_calibration.json to grade with")
    args = p.parse_args()
    floor = clean_exposure_floor()
    print(f"clean_exposure_floor() = {floor:.1f}\n")
    print("| phantom | camera | n | min | 0.5% quantile | median | profile's own floor | min / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for phantom in args.phantom:
        print("\n".join(clean_levels(phantom, floor)))
    print("\n| set | strength | n | min | median | max | max / floor |")
    print("|---|---|---|---|---|---|---|")
    folders = [
        args.run / "calibration",
        args.run / "measurement",
        *(args.run / f"also-{p.name}" for p in args.phantom[1:]),
    ]
    for folder in folders:
        print("\n".join(dark_levels(folder, floor)))
    print(
        "\n| held-out set | thresholds (brightness) | clean passed | dark flagged | dark 0.25 / 0.50 / 0.75 / 1.00 | "
        "dark: underexposed given |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(graded(args.run, args.phantom, args.thresholds)))


if __name__ == "__main__":
    main()
