import pickle, json
from predilect.catalog import load_catalog
from predilect.manifest import read_manifest
from predilect.preprocess import PreprocessCfg
from predilect.quality import default_quality_cfg
from predilect.training import gradability as G
cat = load_catalog("/tmp/grade/hard/phantom_catalog.json")
recs = [r for r in read_manifest("/tmp/grade/hard/manifest.csv", catalog=cat) if r.split == "test"]
recs += [r for r in read_manifest("/tmp/grade/grad1/measurement/degradation_manifest.csv", catalog=cat) if r.extra.get("degradation", "none") != "none"]
m = G.measure_records(recs, PreprocessCfg())
ev = G.evaluate(m, default_quality_cfg())
print("clean", ev.clean_pass.hits, ev.clean_pass.total)
for k, r in ev.flagged.items(): print(k, r.hits, r.total)
print("\n".join(G.camera_table(ev)))
json.dump(ev.to_dict(), open("/tmp/grade/hard_eval.json", "w"), indent=1)
