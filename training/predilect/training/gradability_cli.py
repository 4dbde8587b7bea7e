"""`predilect gradability`: calibrate the gradability thresholds on a phantom and measure them.

Makes degraded copies of the phantom's train+val images (calibration) and of its test images
(measurement, another seed), measures every image through the served preprocessing and
``predilect.quality``, picks the thresholds on the calibration set, and reports flag rates per
degradation type and the clean pass rate on the held-out set -- and on the test split of any
``--also`` phantom, with the same thresholds. Writes ``quality_calibration.json`` (the
thresholds; ``predilect assemble --quality`` serves it, and the packaged default
``predilect/quality_calibration.json`` is a copy), ``gradability.json`` and ``gradability.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from predilect.catalog import load_catalog
from predilect.cli import CommandError, add_dataclass_options, command, dataclass_from_args
from predilect.preprocess import PreprocessCfg
from predilect.training import gradability
from predilect.training.phantom.generate import FUNDUS_MANIFEST, PHANTOM_CATALOG, PHANTOM_INFO


@dataclass(frozen=True)
class GradabilityOptions:
    count_per_kind: int = field(default=60, metadata={"help": "degraded copies per degradation kind and set"})
    clean_quantile: float = field(default=0.995, metadata={"help": "clean calibration quantile each check allows"})
    seed: int = field(default=1, metadata={"help": "degradation seed of the calibration set (measurement: seed + 1)"})


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predilect gradability",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="On a site's own graded photographs, through its server: predilect gradability --manifest "
        "LABELLED.csv --out DIR [--server HOST:PORT] (see its --help and docs/SITE_CALIBRATION.md).",
    )
    p.add_argument("--phantom", type=Path, required=True, help="a `predilect phantom` output folder")
    p.add_argument("--also", type=Path, nargs="*", default=[], help="more phantom folders: measure their test split")
    p.add_argument("--out", type=Path, required=True, help="folder for the degraded sets, calibration and results")
    add_dataclass_options(p, GradabilityOptions, title="calibration")
    return p


def _phantom_description(folder: Path) -> str:
    info = folder / PHANTOM_INFO
    if not info.is_file():
        return str(folder)
    data = json.loads(info.read_text(encoding="utf-8"))
    return f"{folder} (preset {data.get('preset', '?')}, seed {data.get('seed', '?')})"


def _check_phantom(folder: Path) -> Path:
    manifest = folder / FUNDUS_MANIFEST
    if not manifest.is_file() or not (folder / PHANTOM_CATALOG).is_file():
        raise CommandError(f"{folder} is not a phantom folder: it needs {FUNDUS_MANIFEST} and {PHANTOM_CATALOG}")
    return manifest


@command("gradability")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = dataclass_from_args(GradabilityOptions, args)
    manifest = _check_phantom(args.phantom)
    for folder in args.also:
        _check_phantom(folder)
    catalog = load_catalog(args.phantom / PHANTOM_CATALOG)
    preprocess = PreprocessCfg()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"degrading {opts.count_per_kind} images per kind into {out} ...", flush=True)
    calibration_set, measurement_set = gradability.degraded_sets(
        manifest, catalog, out, count_per_kind=opts.count_per_kind, seeds=(opts.seed, opts.seed + 1)
    )
    print(f"measuring {len(calibration_set)} calibration and {len(measurement_set)} held-out images ...", flush=True)
    calibration = gradability.measure_records(calibration_set, preprocess)
    measurement = gradability.measure_records(measurement_set, preprocess)
    command_line = "predilect gradability " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    cfg = gradability.calibrate(
        calibration,
        clean_quantile=opts.clean_quantile,
        source=f"{command_line} on {_phantom_description(args.phantom)}",
    )
    (out / "quality_calibration.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n", encoding="utf-8")
    results: dict[str, Any] = {
        "command": command_line,
        "date": datetime.date.today().isoformat(),
        "phantom": _phantom_description(args.phantom),
        "quality": cfg.to_dict(),
        "calibration": gradability.evaluate(calibration, cfg).to_dict(),
        "measurement": gradability.evaluate(measurement, cfg).to_dict(),
        "also": {},
    }
    header = [
        "# Gradability: calibration and held-out measurement",
        "",
        f"Command: `{command_line}`; date {results['date']}; calibrated on {results['phantom']}.",
        "Images pass through the served preprocessing and `predilect.quality` exactly as in the ensemble.",
        "Target: flag >= 95% of degraded images of every type while passing >= 95% of clean ones.",
    ]
    text = gradability.report_markdown(
        gradability.evaluate(calibration, cfg), gradability.evaluate(measurement, cfg), cfg, header=header
    )
    for folder in args.also:
        other_catalog = load_catalog(folder / PHANTOM_CATALOG)
        other_set = gradability.degraded_set(
            folder / FUNDUS_MANIFEST,
            other_catalog,
            out / f"also-{folder.name}",
            splits=("test",),
            count_per_kind=opts.count_per_kind,
            seed=opts.seed + 10,
        )
        clean = sum(r.extra.get("degradation", gradability.CLEAN) == gradability.CLEAN for r in other_set)
        evaluation = gradability.evaluate(gradability.measure_records(other_set, preprocess), cfg)
        results["also"][_phantom_description(folder)] = evaluation.to_dict()
        text += gradability.report_markdown(
            evaluation,
            evaluation,
            cfg,
            header=[f"# Same thresholds on the test split of {_phantom_description(folder)} ({clean} clean)"],
        ).split("## Calibration set")[0]
    (out / "gradability.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (out / "gradability.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {out / 'quality_calibration.json'}, {out / 'gradability.md'}")
    return 0
