import json
from pathlib import Path
from predilect.catalog import load_catalog
from predilect.preprocess import PreprocessCfg
from predilect.quality import default_quality_cfg
from predilect.training import gradability
phantom = Path("/tmp/i12/hard")
catalog = load_catalog(phantom / "phantom_catalog.json")
cal, mea = gradability.degraded_sets(phantom / "manifest.csv", catalog, Path("/tmp/i12g3"), count_per_kind=60, seeds=(1, 2))
pre = PreprocessCfg(size=128)
c128, m128 = gradability.measure_records(cal, pre), gradability.measure_records(mea, pre)
def brief(ev):
    d = ev.to_dict()
    return {"clean_pass": d["clean_pass"], "flagged": d["flagged"]}
print("224 thresholds at 128, held-out:", json.dumps(brief(gradability.evaluate(m128, default_quality_cfg())), default=str)[:1500])
cfg = gradability.calibrate(c128, clean_quantile=0.995, source="128 px")
print("128 thresholds:", cfg.thresholds)
print("128 calibration at 128, held-out:", json.dumps(brief(gradability.evaluate(m128, cfg)), default=str)[:1500])
