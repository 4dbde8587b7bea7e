"""Operating points into the checkpoint's catalog, the catalog's way to the served rules, the exported
ATTENTION output, and the heatmap-localisation scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from predilect import contract
from predilect.build.operating_points import (
    operating_points,
    rates,
    threshold_for_sensitivity,
    with_thresholds,
    write_catalog,
)
from predilect.catalog import DEFAULT_CATALOG
from predilect.preprocess import PreprocessCfg

CFG = PreprocessCfg(size=64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from predilect.models.checkpoint import save_checkpoint
    from predilect.models.classifier import FundusClassifier, ModelCfg

    torch.manual_seed(0)
    model = FundusClassifier(ModelCfg(num_diseases=len(DEFAULT_CATALOG), image_size=64, widths=(8, 16, 32)))
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(path, model, preprocess=CFG, catalog=DEFAULT_CATALOG)
    return path


@pytest.mark.parametrize(
    ("labels", "scores", "target", "threshold"),
    [
        ([1, 1, 1, 1, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.5, 0.1], 0.75, 0.7),  # 3 of 4 positives at >= 0.7
        ([1, 1, 1, 1, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.5, 0.1], 1.0, 0.6),
        ([1, 1, 1, 1, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.5, 0.1], 0.9, 0.6),  # ceil(0.9 x 4) = 4
        ([1, 0], [1.0, 0.0], 0.5, 1.0 - 1e-6),  # kept inside (0, 1)
    ],
)
def test_threshold_for_sensitivity_is_highest_reaching_target_when_scored(
    labels: list[int], scores: list[float], target: float, threshold: float
) -> None:
    chosen = threshold_for_sensitivity(np.array(labels), np.array(scores), target)
    assert chosen is not None and chosen == pytest.approx(threshold)
    assert rates(np.array(labels), np.array(scores), chosen).sensitivity >= target
    assert threshold_for_sensitivity(np.array([0, 0]), np.array([0.2, 0.3]), target) is None


def test_operating_points_keep_catalog_threshold_and_say_so_when_no_validation_positives() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((40, len(DEFAULT_CATALOG)))
    labels[:10, 0] = 1
    scores = rng.uniform(0, 1, labels.shape)
    scores[:10, 0] += 1.0
    points = operating_points(DEFAULT_CATALOG, (labels, scores.clip(0, 1)), target_sensitivity=0.9)
    assert points[0].chosen and points[0].validation.sensitivity >= 0.9 and points[0].validation.specificity == 1.0
    assert not points[1].chosen and points[1].threshold == DEFAULT_CATALOG.diseases[1].threshold
    assert np.isnan(points[1].validation.sensitivity)


def test_thresholds_travel_from_checkpoint_to_onnx_to_served_rules_when_written(
    checkpoint: Path, tmp_path: Path
) -> None:
    import onnx

    from predilect.build.export import export_onnx
    from predilect.models.checkpoint import load_checkpoint, read_meta
    from predilect.serving.configs import ServingOptions
    from predilect.serving.repository import assemble

    labels = np.eye(len(DEFAULT_CATALOG))
    scores = np.full(labels.shape, 0.1) + 0.5 * labels
    points = operating_points(DEFAULT_CATALOG, (labels, scores), target_sensitivity=1.0)
    updated = with_thresholds(DEFAULT_CATALOG, points)
    out = write_catalog(checkpoint, updated, tmp_path / "tuned.safetensors")
    before, after = load_checkpoint(checkpoint), load_checkpoint(out)
    assert after[1].catalog == updated and after[1].catalog.thresholds == pytest.approx([0.6] * len(DEFAULT_CATALOG))
    assert after[1].version == before[1].version, "the weights, and so the version, are unchanged"
    for name, tensor in before[0].state_dict().items():
        assert torch.equal(tensor, after[0].state_dict()[name])
    assert read_meta(checkpoint).catalog == DEFAULT_CATALOG, "the source checkpoint is untouched"
    onnx_path = tmp_path / "model.onnx"
    export_onnx(out, onnx_path)
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert props[contract.KEY_CATALOG] == updated.to_json()
    repository = assemble(onnx_path, tmp_path / "repo", ServingOptions(layout="split"))
    from predilect.serving.triton_config import read_config

    params = read_config(repository / contract.ENSEMBLE / contract.CONFIG_FILENAME).parameters
    rules = json.loads(params[contract.KEY_RULES].string_value)
    assert [d["threshold"] for d in rules["diseases"]] == pytest.approx(updated.thresholds)
    assert params[contract.KEY_CATALOG_DIGEST].string_value == updated.digest() != DEFAULT_CATALOG.digest()
    post = read_config(repository / contract.POSTPROCESS_MODEL / contract.CONFIG_FILENAME)
    assert post.parameters[contract.KEY_RULES].string_value == params[contract.KEY_RULES].string_value


def test_write_catalog_raises_value_error_when_catalog_ids_differ(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ"):
        write_catalog(checkpoint, DEFAULT_CATALOG.subset(DEFAULT_CATALOG.ids[:2]), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_operating_points_cli_writes_thresholds_and_report_when_manifest_has_val(
    checkpoint: Path, phantom_manifest: Path, tmp_path: Path, capsys
) -> None:
    from predilect.build.operating_points_cli import main
    from predilect.models.checkpoint import read_meta

    out, report = tmp_path / "tuned" / checkpoint.name, tmp_path / "points.md"
    argv = ["--checkpoint", str(checkpoint), "--manifest", str(phantom_manifest), "--out", str(out.parent)]
    assert main([*argv, "--report", str(report), "--target-sensitivity", "0.8"]) == 0
    data = json.loads(report.with_suffix(".json").read_text())
    chosen = {p["disease"]: p["threshold"] for p in data["points"]}
    assert read_meta(out).catalog.thresholds == pytest.approx([chosen[d] for d in DEFAULT_CATALOG.ids])
    assert "| disease | threshold |" in report.read_text() and "test specificity" in capsys.readouterr().out
    assert main([*argv, "--target-sensitivity", "1.5"]) == 2


def test_export_writes_attention_equal_to_model_when_model_has_it(checkpoint: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    from predilect.build.export import export_onnx
    from predilect.models.checkpoint import load_checkpoint

    out = tmp_path / "model.onnx"
    export_onnx(checkpoint, out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [contract.LOGITS, contract.ATTENTION]
    x = np.random.default_rng(2).standard_normal((3, 3, 64, 64)).astype(np.float32)
    logits, attention = session.run(None, {contract.PIXELS: x})
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        want_logits, want_attention = model.forward_with_attention(torch.from_numpy(x))
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(attention, want_attention.numpy(), atol=1e-5)
    assert attention.shape == (3, len(DEFAULT_CATALOG), 4, 4)
    np.testing.assert_allclose(attention.sum(axis=(2, 3)), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- localisation scoring


def test_score_peak_hits_when_peak_cell_overlaps_drawn_lesion_and_reports_chance() -> None:
    from predilect.lesions import DrawnImage, Lesion, score_peak

    drawn = DrawnImage("a.jpg", 800, 600, (Lesion("dr", 0.30, 0.25, 0.02), Lesion("amd", 0.7, 0.7, 0.05)))
    box = (0.125, 0.0, 0.875, 1.0)  # a 600 px square centred in the 800 px frame
    attention = np.zeros((4, 4))
    attention[0, 1] = 1.0  # the cell x 250-400 px, y 0-150 px; the dr lesion: centre (240, 150), radius 16 px
    lit = np.ones((4, 4), dtype=bool)
    hit, centre_hit, chance, centre_chance = score_peak(attention, box, drawn, "dr", lit)
    assert hit and not centre_hit, "the lesion reaches 10 px into the cell; the cell's centre is outside it"
    attention[:] = 0.0
    attention[3, 3] = 1.0
    assert score_peak(attention, box, drawn, "dr", lit).hit is False
    assert 0.0 < chance <= 4 / 16, "a random lit cell rarely meets a small lesion"
    assert centre_chance == 0.0, "no cell centre lies inside the small dr disc"
    assert score_peak(attention, box, drawn, "amd", lit)[:2] == (True, False)


def test_read_lesions_raises_naming_line_when_record_is_malformed(tmp_path: Path) -> None:
    from predilect.lesions import read_lesions

    path = tmp_path / "lesions.jsonl"
    path.write_text('{"path": "a.jpg", "width": 8, "height": 6, "lesions": []}\n{"path": "b.jpg"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_lesions(path)


def test_localisation_cli_scores_model_diseases_only_when_phantom_has_unlearned_category(
    pipeline, tmp_path: Path
) -> None:
    """A phantom whose catalog holds a category the model never learned (zero-shot ones) is read
    on its own catalog; the report scores the model's diseases only."""
    import dataclasses
    import shutil

    from predilect.build.export import read_onnx_meta
    from predilect.build.localisation_cli import main
    from predilect.catalog import DEFAULT_CATALOG
    from predilect.manifest import read_manifest, write_manifest

    source = pipeline.manifest.parent
    phantom = tmp_path / "phantom"
    shutil.copytree(source, phantom)
    model_catalog = read_onnx_meta(pipeline.onnx)[0]
    extra = next(d for d in DEFAULT_CATALOG.ids if d not in model_catalog.ids)
    wider = DEFAULT_CATALOG.subset([*model_catalog.ids, extra])
    records = read_manifest(phantom / "manifest.csv", catalog=model_catalog)
    first_test = next(i for i, r in enumerate(records) if r.split == "test")
    records[first_test] = dataclasses.replace(records[first_test], labels=frozenset({extra}))
    write_manifest(phantom / "manifest.csv", records, catalog=wider)
    (phantom / "phantom_catalog.json").write_text(json.dumps(wider.to_dict()), encoding="utf-8")
    report = tmp_path / "localisation.md"
    assert main(["--onnx", str(pipeline.onnx), "--phantom", str(phantom), "--report", str(report)]) == 0
    scored = json.loads(report.with_suffix(".json").read_text())
    assert extra not in json.dumps(scored) and "glaucoma" in report.read_text()
