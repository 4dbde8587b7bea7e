"""Paired OCT (the upper bound's data), OCT partners of a fundus batch, and the OCT-CoDA loss."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from predilect.catalog import load_catalog
from predilect.manifest import Record, read_manifest
from predilect.models.coda import CodaWeights, coda_loss, contrastive_distillation, prototype_distillation
from predilect.training.experiment_cli import main as experiment_main
from predilect.training.phantom.generate import add_paired_oct, generate
from predilect.training.stages import OctPartners


@pytest.fixture(scope="module")
def paired_phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("paired")
    generate(out, preset="hard", count=24, oct_count=10, seed=4, width=320, height=240, workers=1)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    add_paired_oct(out, workers=1)
    return out, before


def test_add_paired_oct_draws_each_training_eye_and_changes_nothing_when_added(paired_phantom):
    out, before = paired_phantom
    catalog = load_catalog(out / "phantom_catalog.json")
    fundus = {(r.patient_id, r.eye): r for r in read_manifest(out / "manifest.csv", catalog=catalog)}
    paired = read_manifest(out / "oct_paired_manifest.csv", catalog=catalog)
    assert len(paired) == sum(r.split == "train" for r in fundus.values())
    for scan in paired:
        photo = fundus[(scan.patient_id, scan.eye)]
        assert photo.split == "train" and scan.labels == photo.labels  # graded as the photograph is
        assert scan.extra["true_labels"] == photo.extra["true_labels"] and scan.path.is_file()
        assert (out / scan.extra["fundus_path"]).resolve() == photo.path.resolve()
    assert {p: (out / p).read_bytes() for p in before} == before  # the phantom as it was


def _record(patient: str, eye: str) -> Record:
    return Record(path=Path(f"{patient}{eye}.png"), labels=frozenset(), patient_id=patient, eye=eye)


def test_oct_partners_pick_same_class_or_own_eye_when_paired():
    fundus = [_record("a", "R"), _record("b", "L"), _record("c", "R")]
    f_targets = np.array([[1, 0], [0, 1], [0, 0]], np.float32)
    octs = [_record("x", "R"), _record("b", "L"), _record("y", "L"), _record("z", "R")]
    o_targets = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], np.float32)
    same_class = OctPartners(fundus, f_targets, octs, o_targets, pairing="same_class", seed=0)
    for batch in range(20):
        assert same_class.pick([0, 1, 2], epoch=0, batch=batch) == [0, 2, 3]
    same_eye = OctPartners(fundus, f_targets, octs, o_targets, pairing="same_eye", seed=0)
    assert same_eye.paired == 1 and same_eye.pick([1], epoch=3, batch=1) == [1]
    assert same_eye.pick([0, 2], epoch=3, batch=1) == [0, 3]  # no own scan: its class's


def test_coda_distillation_terms_vanish_when_student_matches_teacher():
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    sims = torch.randn(3, 5)
    assert prototype_distillation(sims, labels, sims, labels).item() == pytest.approx(0.0)
    matched = contrastive_distillation(sims, labels, sims, labels, temperature=0.1)
    crossed = contrastive_distillation(sims, labels, sims.roll(1, 0), labels, temperature=0.1)
    assert matched < crossed


def _coda_model():
    from predilect.catalog import DEFAULT_CATALOG
    from predilect.models.classifier import ModelCfg
    from predilect.models.text import CatalogTexts, TextCfg, build_tokenizer, catalog_corpus
    from predilect.models.uopsl import UopslCfg, UopslModel

    catalog = DEFAULT_CATALOG.subset(["dr", "dme"])
    torch.manual_seed(0)
    tokenizer = build_tokenizer(catalog_corpus(catalog), vocab_size=300)
    text = TextCfg(vocab_size=tokenizer.get_vocab_size(), context_length=40, width=32, heads=2, embed_dim=16)
    texts = CatalogTexts.build(tokenizer, catalog, text.context_length)
    small = {"num_diseases": 2, "widths": (8, 8, 16), "sites_per_disease": 2}
    cfg = UopslCfg(
        fundus=ModelCfg(image_size=32, **small),
        oct=ModelCfg(image_size=32, in_channels=1, **small),
        text=text,
        matrix="ablate",
        concepts=len(texts.owner),
    )
    return UopslModel(cfg, texts)


def test_coda_loss_distils_into_the_student_only_when_teacher_detached():
    model = _coda_model()
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    batch = {"pixels": torch.randn(4, 3, 32, 32), "labels": labels, "scan": torch.randn(4, 1, 32, 32)}
    batch["oct_labels"] = labels
    only = CodaWeights(clip_fundus=0, clip_oct=0, cls_fundus=0, cls_oct=0)  # the distillation terms alone
    loss, terms = coda_loss(model, batch, weights=only)
    assert {"prototype", "contrast", "cls_oct", "cls_fundus", "clip_oct", "clip_fundus"} == set(terms)
    loss.backward()
    fundus_grad = sum(float(p.grad.abs().sum()) for p in model.fundus.parameters() if p.grad is not None)
    oct_grads = [p.grad for p in model.oct.parameters() if p.grad is not None]
    assert fundus_grad > 0 and all(float(g.abs().sum()) == 0 for g in oct_grads)


def test_experiment_runs_every_new_control_end_to_end_when_asked(phantom_manifest, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantom_manifest.parent, data)
    add_paired_oct(data, workers=1)
    variants = "full,shuffled_redrawn,no_site_oct,fundus_sites,random_sites,mean_pool,coda,paired"
    argv = ["--manifest", str(data / "manifest.csv"), "--out", str(tmp_path / "grid"), "--seeds", "0"]
    argv += ["--variants", variants, "--resamples", "20"]
    for option in ("data.preprocess.size=64", "model.widths=[8, 16, 32]", "loop.batch_size=8", "loop.epochs=1"):
        argv += ["--set", option]
    argv += ["--set", "pretrain.in_memory=true", "--pretrain-set", "data.oct.size=64"]
    assert experiment_main(argv) == 0
    cells = json.loads((tmp_path / "grid" / "summary.json").read_text())["cells"]
    assert set(cells) == {f"{v}/seed0" for v in variants.split(",")}
    config = json.loads((tmp_path / "grid" / "coda" / "seed0" / "pretrain" / "config.json").read_text())
    assert config["pretrain"]["objective"] == "coda" and config["pretrain"]["oct_pairing"] == "same_class"
    paired = json.loads((tmp_path / "grid" / "paired" / "seed0" / "pretrain" / "config.json").read_text())
    assert paired["data"]["oct_manifest"].endswith("oct_paired_manifest.csv")
    assert not (tmp_path / "grid" / "random_sites" / "seed0" / "pretrain").exists()  # full's stage 1
