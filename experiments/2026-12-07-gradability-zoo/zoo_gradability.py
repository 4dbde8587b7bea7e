"""Gradability by the grader's rules on the camera zoo: thresholds calibrated on the seen cameras only, measured
per held-out camera and degradation type (``predilect.training.gradability``'s calibration and evaluation).

Steps (each resumable; run ``degrade-calibration`` and ``degrade-measurement`` in parallel on two cores):

    python zoo_gradability.py degrade-calibration --phantom ZOO --out OUT [--per-kind 20]
    python zoo_gradability.py degrade-measurement --phantom ZOO --out OUT [--per-camera 6]
    python zoo_gradability.py report --phantom ZOO --out OUT

Calibration: the seen cameras' train + val photographs (colour captures; red-free ones are another type) and
``--per-kind`` degraded copies of each kind (seed 1), as ``predilect gradability --phantom`` makes them.
Measurement: every test photograph of every camera, clean, and ``--per-camera`` degraded copies per kind of
each held-out colour camera's test photographs (seed 2): the per-profile, per-type figures the issue asks
for. ``predilect gradability --phantom`` draws its held-out copies from all cameras at once; this script
draws them per held-out camera so that each camera has its own count (the CLI's 70 per kind and set took
over an hour to degrade the zoo's 6-MP frames here).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

from predilect.catalog import load_catalog
from predilect.manifest import capture_of, read_manifest, write_manifest
from predilect.preprocess import PreprocessCfg
from predilect.training import gradability as G
from predilect.training.phantom.cameras import HELD_OUT
from predilect.training.phantom.degrade import KINDS, degrade_dataset


def _catalog(phantom: Path):
    return load_catalog(phantom / "phantom_catalog.json")


def degrade_calibration(phantom: Path, out: Path, per_kind: int) -> None:
    G.degraded_set(phantom / "manifest.csv", _catalog(phantom), out / "calibration", splits=("train", "val"),
                   count_per_kind=per_kind, seed=1)


def degrade_measurement(phantom: Path, out: Path, per_camera: int) -> None:
    catalog = _catalog(phantom)
    test = [r for r in read_manifest(phantom / "manifest.csv", catalog=catalog) if r.split == "test"]
    for camera in sorted({r.extra["camera"] for r in test} & set(HELD_OUT)):
        records = [r for r in test if r.extra["camera"] == camera and capture_of(r) == "colour"]
        if not records:
            continue
        folder = out / "measurement" / camera
        folder.mkdir(parents=True, exist_ok=True)
        source = write_manifest(folder / "clean_manifest.csv", records, catalog=catalog)
        degrade_dataset(source, folder, kinds=KINDS, catalog=catalog, count=per_camera, seed=2)
        print(f"degraded {camera}", flush=True)


def report(phantom: Path, out: Path) -> None:
    catalog = _catalog(phantom)
    cfg = PreprocessCfg()
    cal_records = [r for r in read_manifest(phantom / "manifest.csv", catalog=catalog) if r.split in ("train", "val")]
    cal_records += [r for r in read_manifest(out / "calibration" / "degradation_manifest.csv", catalog=catalog)
                    if r.extra.get("degradation", "none") != "none"]
    mea_records = [r for r in read_manifest(phantom / "manifest.csv", catalog=catalog) if r.split == "test"]
    for manifest in sorted((out / "measurement").glob("*/degradation_manifest.csv")):
        mea_records += [r for r in read_manifest(manifest, catalog=catalog) if r.extra.get("degradation", "none") != "none"]
    cache = out / "measured.pkl"
    if cache.is_file():
        measured = pickle.loads(cache.read_bytes())
    else:
        measured = {"calibration": G.measure_records(cal_records, cfg), "measurement": G.measure_records(mea_records, cfg)}
        cache.write_bytes(pickle.dumps(measured))
    command = " ".join(["python", "experiments/2026-12-07-gradability-zoo/zoo_gradability.py", *sys.argv[1:]])
    thresholds = G.calibrate(measured["calibration"], source=f"{command} (seen cameras of {phantom})")
    (out / "quality_calibration.json").write_text(json.dumps(thresholds.to_dict(), indent=1) + "\n")
    cal_eval, mea_eval = G.evaluate(measured["calibration"], thresholds), G.evaluate(measured["measurement"], thresholds)
    header = [
        "# Gradability by the grader's rules on the camera zoo",
        "",
        f"Command: `{command}`; phantom {phantom}. Held-out cameras: {', '.join(sorted(HELD_OUT))}.",
    ]
    text = G.report_markdown(cal_eval, mea_eval, thresholds, header=header)
    (out / "zoo_gradability.md").write_text(text)
    (out / "zoo_gradability.json").write_text(json.dumps(
        {"command": command, "quality": thresholds.to_dict(), "calibration": cal_eval.to_dict(),
         "measurement": mea_eval.to_dict()}, indent=1) + "\n")
    print(text)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=["degrade-calibration", "degrade-measurement", "report"])
    p.add_argument("--phantom", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-kind", type=int, default=20)
    p.add_argument("--per-camera", type=int, default=6)
    args = p.parse_args()
    if args.step == "degrade-calibration":
        degrade_calibration(args.phantom, args.out, args.per_kind)
    elif args.step == "degrade-measurement":
        degrade_measurement(args.phantom, args.out, args.per_camera)
    else:
        report(args.phantom, args.out)


if __name__ == "__main__":
    main()
