"""Checkpoint format and ONNX export of the served model."""

from pathlib import Path

import numpy as np
import pytest
import torch

from predilect import contract
from predilect.build.export import check_parity, export_onnx, onnx_probabilities
from predilect.build.export_cli import main as export_main
from predilect.catalog import DEFAULT_CATALOG
from predilect.models.checkpoint import load_checkpoint, read_meta, save_checkpoint
from predilect.models.classifier import FundusClassifier, ModelCfg
from predilect.preprocess import PreprocessCfg

CFG = PreprocessCfg(size=64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = FundusClassifier(ModelCfg(num_diseases=len(DEFAULT_CATALOG), image_size=64, widths=(8, 16, 32)))
    # Non-trivial BatchNorm statistics, so that eval-mode export is exercised.
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 64, 64) * 2 + 0.5)
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(path, model, preprocess=CFG, catalog=DEFAULT_CATALOG, metrics={"heldout_macro_auroc": 0.5})
    return path


def test_checkpoint_round_trips_weights_and_metadata_when_saved(checkpoint):
    model, meta = load_checkpoint(checkpoint)
    assert meta.catalog == DEFAULT_CATALOG and meta.preprocess == CFG
    assert meta.metrics == {"heldout_macro_auroc": 0.5}
    assert meta.version.startswith("1+") and len(meta.version) == 10
    assert not model.training


def test_checkpoint_rejects_file_when_not_predilect(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a predilect checkpoint"):
        read_meta(tmp_path / "other.safetensors")


def test_checkpoint_rejects_mismatch_when_catalog_size_differs(tmp_path):
    model = FundusClassifier(ModelCfg(num_diseases=2, image_size=64, widths=(4, 4, 8)))
    with pytest.raises(ValueError, match="catalog"):
        save_checkpoint(tmp_path / "m.safetensors", model, preprocess=CFG, catalog=DEFAULT_CATALOG)


def test_export_writes_dynamic_batch_and_metadata_when_exported(checkpoint, tmp_path):
    import onnx

    out = tmp_path / "model.onnx"
    meta = export_onnx(checkpoint, out)
    graph = onnx.load(str(out))
    props = {p.key: p.value for p in graph.metadata_props}
    assert props[contract.KEY_MODEL_VERSION] == meta.version
    assert props[contract.KEY_CATALOG] == DEFAULT_CATALOG.to_json()
    assert PreprocessCfg.from_json(props[contract.KEY_PREPROCESS]) == CFG
    (inp,) = graph.graph.input
    assert inp.name == contract.PIXELS and inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 3, 7):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
        assert onnx_probabilities(out, x).shape == (batch, len(DEFAULT_CATALOG))


def test_export_parity_within_1e4_when_run_under_onnxruntime(checkpoint, tmp_path):
    out = tmp_path / "model.onnx"
    export_onnx(checkpoint, out)
    x = (np.random.default_rng(1).standard_normal((11, 3, 64, 64)) * 1.5).astype(np.float32)
    report = check_parity(checkpoint, out, x)
    assert report.ok and report.max_abs_prob_diff <= 1e-4 and report.images == 11


def test_export_cli_exits_zero_when_parity_holds(checkpoint, tmp_path, capsys):
    assert export_main(["--checkpoint", str(checkpoint.parent), "--out", str(tmp_path / "onnx")]) == 0
    assert "OK" in capsys.readouterr().out and (tmp_path / "onnx" / "model.onnx").is_file()


def test_export_serves_evidence_map_when_model_heatmap_is_evidence(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    cfg = ModelCfg(num_diseases=len(DEFAULT_CATALOG), image_size=64, widths=(8, 16, 32))
    model = FundusClassifier(ModelCfg(**{**cfg.__dict__, "backbone": "conv-local", "heatmap": "evidence"})).eval()
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, preprocess=CFG, catalog=DEFAULT_CATALOG)
    export_onnx(path, tmp_path / "model.onnx")
    x = np.random.default_rng(2).standard_normal((3, 3, 64, 64)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    _, served = session.run([contract.LOGITS, contract.ATTENTION], {contract.PIXELS: x})
    with torch.inference_mode():
        _, want = model.forward_with_attention(torch.from_numpy(x))
    np.testing.assert_allclose(served, want.numpy(), atol=1e-5)
    assert (served >= 0).all() and not np.allclose(served.sum(axis=(2, 3)), 1.0)  # evidence, not attention
