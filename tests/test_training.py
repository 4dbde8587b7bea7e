"""Training on phantom data, through the CLI and the library."""

import json

import numpy as np

from predilect.catalog import DEFAULT_CATALOG
from predilect.preprocess import PreprocessCfg, Preprocessor
from predilect.training.checkpoint import load_checkpoint
from predilect.training.data import load_fundus_pixels, load_oct_scans
from predilect.training.manifest import read_manifest
from predilect.training.train_cli import main as train_main


def test_train_cli_writes_checkpoint_and_metrics_when_run_on_phantom(phantom_manifest, tmp_path, capsys):
    out = tmp_path / "ckpt" / "model.safetensors"
    rc = train_main(
        [
            "--manifest",
            str(phantom_manifest),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--oct-epochs",
            "1",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "OCT teaching epoch 1/1" in text and "held-out macro AUROC" in text
    model, meta = load_checkpoint(out)
    assert meta.catalog == DEFAULT_CATALOG and meta.preprocess == PreprocessCfg()
    metrics = json.loads((out.parent / "metrics.json").read_text())
    assert metrics["version"] == meta.version and metrics["heldout_macro_auroc"] == meta.metrics["heldout_macro_auroc"]


def test_train_learns_held_out_diseases_when_trained_on_small_phantom(tmp_path):
    # Chance is 0.5; a model that did not learn (broken loss, frozen weights, shuffled labels)
    # stays near it. The easy phantom is separable, so a few epochs must get far above it.
    from predilect.training.phantom import generate
    from predilect.training.train import TrainCfg, train

    manifest = generate(tmp_path / "phantom", count=320, oct_count=0, seed=3, width=512, height=384, workers=2)
    result = train(manifest, tmp_path / "model.safetensors", oct_manifest=None, cfg=TrainCfg(epochs=12, seed=0))
    assert result.heldout_macro_auroc >= 0.8, result.heldout_auroc


def test_train_gives_same_version_when_run_twice_with_same_seed(phantom_manifest, tmp_path):
    from predilect.training.train import TrainCfg, train

    cfg = TrainCfg(epochs=1, oct_epochs=0, freeze_sites_epochs=0)
    first = train(phantom_manifest, tmp_path / "a.safetensors", oct_manifest=None, cfg=cfg)
    second = train(phantom_manifest, tmp_path / "b.safetensors", oct_manifest=None, cfg=cfg)
    assert first.meta.version == second.meta.version


def test_training_tensors_equal_serving_pipeline_when_same_files(phantom_manifest, tmp_path):
    records = read_manifest(phantom_manifest, split="test")[:5]
    cached = load_fundus_pixels(records, PreprocessCfg(), cache_dir=tmp_path)
    again = load_fundus_pixels(records, PreprocessCfg(), cache_dir=tmp_path)  # from the cache file
    direct = Preprocessor(PreprocessCfg()).run_strict([r.path.read_bytes() for r in records])
    assert np.array_equal(cached, direct) and np.array_equal(again, direct)


def test_oct_scans_load_normalised_when_read(phantom_manifest):
    records = read_manifest(phantom_manifest.with_name("oct_manifest.csv"))[:4]
    scans = load_oct_scans(records, size=64)
    assert scans.shape == (4, 1, 64, 64) and np.isfinite(scans).all() and scans.std() > 0.1
