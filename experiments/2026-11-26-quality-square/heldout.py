"""Held-out gradability when a 128-px model is served, before and after the quality square (issue #12).

Reads the degraded hard-phantom sets that `predilect gradability --phantom /tmp/i12/hard --also /tmp/i12/easy
--out /tmp/i12g3` wrote (nothing is regenerated) and measures them through `gradability.measure_records`,
i.e. `Preprocessor.run_with_quality` -> `quality.measure`, the squares the served steps grade:

* 224-px model (PreprocessCfg()): the criterion's figures;
* 128-px model before the change: PreprocessCfg(size=128, quality_size=128) decodes for 128 px and grades
  the model input, exactly what the code before this change did for a 128-px model;
* 128-px model after: PreprocessCfg(size=128), quality_size 224 (the default).

Then calibrates on the calibration set through the 128-px model's preprocessing and compares with the
packaged thresholds. Prints only what it measured.
"""

import json
from pathlib import Path

import numpy as np

from predilect.catalog import load_catalog
from predilect.preprocess import PreprocessCfg
from predilect.quality import default_quality_cfg
from predilect.training import gradability
from predilect.training.manifest import read_manifest

PHANTOM, SETS = Path("/tmp/i12/hard"), Path("/tmp/i12g3")
catalog = load_catalog(PHANTOM / "phantom_catalog.json")


def records(folder: Path) -> list:
    clean = read_manifest(folder / "clean_manifest.csv", catalog=catalog)
    copies = read_manifest(folder / "degradation_manifest.csv", catalog=catalog)
    return [*clean, *(r for r in copies if r.extra.get("degradation", "none") not in ("", "none"))]


held_out, calibration = records(SETS / "measurement"), records(SETS / "calibration")
packaged = default_quality_cfg()
configs = {
    "224-px model": PreprocessCfg(),
    "128-px model, before (grades its 128-px input)": PreprocessCfg(size=128, quality_size=128),
    "128-px model, after (grades a 224-px square)": PreprocessCfg(size=128),
}
measured = {name: gradability.measure_records(held_out, cfg) for name, cfg in configs.items()}
for name, m in measured.items():
    ev = gradability.evaluate(m, packaged).to_dict()
    row = {"clean_pass": ev["clean_pass"]["hits"], "clean_total": ev["clean_pass"]["total"]}
    row |= {k: f"{v['hits']}/{v['total']}" for k, v in ev["flagged"].items()}
    print(f"held-out {name} (square {m.size} px):", json.dumps(row))
a, b = measured["224-px model"], measured["128-px model, after (grades a 224-px square)"]
same = np.array_equal(np.nan_to_num(a.measures, nan=-1), np.nan_to_num(b.measures, nan=-1))
print("held-out measures of the 128-px model after == those of the 224-px model, image by image:", same)
cal = gradability.calibrate(gradability.measure_records(calibration, PreprocessCfg(size=128)), source="128-px model")
print("calibrated through the 128-px model: size", cal.size, "thresholds == packaged:", dict(cal.thresholds) == dict(packaged.thresholds))
