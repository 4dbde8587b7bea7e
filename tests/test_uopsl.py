"""The UOPSL model and losses: which loss reaches the sites matrix, the carried head, the geometry."""

import math

import pytest
import torch

from predilect.catalog import DEFAULT_CATALOG
from predilect.models.classifier import FundusClassifier, ModelCfg, fold, fourier_code, fundus_token_positions
from predilect.models.losses import class_targets, site_attention, site_diversity, soft_clip_loss
from predilect.models.text import CatalogTexts, TextCfg, build_tokenizer, catalog_corpus
from predilect.models.uopsl import OctGeometry, UopslCfg, UopslModel, fundus_head_init, pretrain_loss

CATALOG = DEFAULT_CATALOG.subset(["dr", "dme", "amd", "glaucoma"])


def _model(**overrides) -> UopslModel:
    torch.manual_seed(0)
    tokenizer = build_tokenizer(catalog_corpus(CATALOG), vocab_size=400)
    text = TextCfg(vocab_size=tokenizer.get_vocab_size(), context_length=40, width=32, heads=2, embed_dim=16)
    small = {"num_diseases": len(CATALOG), "widths": (8, 8, 16), "sites_per_disease": 3}
    cfg = UopslCfg(
        fundus=ModelCfg(image_size=64, **small),
        oct=ModelCfg(image_size=48, in_channels=1, **small),
        text=text,
        **overrides,
    )
    texts = CatalogTexts.build(tokenizer, CATALOG, text.context_length) if cfg.text_mode == "text" else None
    return UopslModel(cfg, texts)


def _batch(*, oct: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.float32)
    batch = {"pixels": torch.randn(4, 3, 64, 64, generator=g), "labels": labels}
    if oct:
        batch |= {"scan": torch.randn(4, 1, 48, 48, generator=g), "oct_labels": labels.flip(0)}
    return batch


def _matrix_grad(model: UopslModel, batch: dict[str, torch.Tensor]) -> float:
    model.zero_grad()
    loss, _ = pretrain_loss(model, batch)
    loss.backward()
    grads = [model.site_residual.grad] + ([model.site_gen.weight.grad] if model.site_gen is not None else [])
    return sum(float(g.abs().sum()) for g in grads if g is not None)


def test_pretrain_loss_moves_sites_matrix_only_through_oct_when_batch_has_both():
    model = _model()
    assert _matrix_grad(model, _batch(oct=False)) == 0.0  # fundus terms read P.detach()
    assert _matrix_grad(model, _batch(oct=True)) > 0.0
    assert model.carry.weight.grad is not None and float(model.carry.weight.grad.abs().sum()) > 0


def test_pretrain_loss_reports_every_term_when_matrix_learned():
    _, terms = pretrain_loss(_model(), _batch())
    assert set(terms) == {"clip_fundus", "site_fundus", "clip_oct", "site_oct", "diversity"}
    assert all(math.isfinite(v) for v in terms.values())


def test_pretrain_loss_has_no_site_terms_when_matrix_ablated():
    _, terms = pretrain_loss(_model(matrix="ablate"), _batch())
    assert set(terms) == {"clip_fundus", "clip_oct"}


def test_fundus_head_init_reproduces_global_score_when_matrix_ablated():
    # Zero sites = uniform attention = mean pooling, so the served head must give exactly the
    # global embedding's score against the normal text: the ablation exports as the same graph.
    model = _model().eval()
    classifier = FundusClassifier(model.cfg.fundus).eval()
    classifier.encoder.load_state_dict(model.fundus.state_dict())
    with torch.no_grad():
        for name, value in fundus_head_init(model, matrix="ablate").items():
            getattr(classifier.head, name).copy_(value)
        pixels = _batch()["pixels"]
        proj = model.fundus_proj(model.fundus.content(pixels).mean(dim=1))
        classes = model.class_embeddings()
        expected = model.logit_scale.exp() * proj @ (classes[1:] - classes[0]).t()
        torch.testing.assert_close(classifier(pixels), expected, rtol=1e-4, atol=1e-4)


def test_fundus_head_init_reproduces_site_logits_when_matrix_carried():
    model = _model().eval()
    classifier = FundusClassifier(model.cfg.fundus).eval()
    classifier.encoder.load_state_dict(model.fundus.state_dict())
    with torch.no_grad():
        for name, value in fundus_head_init(model, matrix="tune").items():
            getattr(classifier.head, name).copy_(value)
        pixels = _batch()["pixels"]
        expected, _ = model.fundus_site_logits(pixels, model.class_embeddings()[1:])
        torch.testing.assert_close(classifier(pixels), expected, rtol=1e-4, atol=1e-4)


def test_no_text_model_refuses_new_descriptions_when_asked_for_zero_shot():
    model = _model(text_mode="labels")
    texts = CatalogTexts.build(build_tokenizer(["a b c"]), CATALOG, 8)
    with pytest.raises(ValueError, match="--no-text"):
        model.embed_texts(texts)


def test_oct_geometry_puts_scan_columns_on_fundus_line_when_default():
    x, y = OctGeometry().positions(4)
    assert torch.allclose(y, torch.full_like(y, 0.5))
    assert torch.allclose(x[:4], x[4:8]) and bool((x[1:4] > x[:3]).all())  # rows are depth, columns lateral
    assert x[:4].mean().item() == pytest.approx(0.5)


def test_anatomical_code_is_mirror_symmetric_when_folded():
    x, y = fundus_token_positions(6)
    code = fourier_code(fold(x, y), 3).reshape(6, 6, -1)
    torch.testing.assert_close(code, code.flip(1))  # left and right eyes share one code
    assert code.shape[-1] == 12


def test_soft_clip_loss_lower_when_images_match_their_class_texts():
    classes = torch.eye(3)
    targets = class_targets(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert targets.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    scale = torch.tensor(10.0)
    good = soft_clip_loss(classes.clone(), classes, targets, logit_scale=scale)
    bad = soft_clip_loss(classes.roll(1, 0), classes, targets, logit_scale=scale)
    assert good < bad


def test_site_diversity_is_zero_when_sites_disjoint_and_one_when_identical():
    disjoint = torch.eye(2).reshape(1, 1, 2, 2)
    same = torch.full((1, 1, 2, 2), 0.5)
    positive = torch.ones(1, 1)
    assert site_diversity(disjoint, positive).item() == pytest.approx(0.0)
    assert site_diversity(same, positive).item() == pytest.approx(1.0)
    assert site_diversity(same, torch.zeros(1, 1)).item() == 0.0  # only positives count


def test_site_attention_sums_to_one_over_tokens_when_computed():
    attention = site_attention(torch.randn(2, 5, 4), torch.randn(3, 2, 4))
    assert attention.shape == (2, 3, 2, 5)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 3, 2))


def test_pretrain_loss_moves_sites_matrix_from_fundus_when_site_source_is_fundus():
    model = _model()
    model.zero_grad()
    loss, _ = pretrain_loss(model, _batch(oct=False), site_source="fundus")
    loss.backward()
    assert float(model.site_gen.weight.grad.abs().sum()) > 0.0  # the control: fundus labels shape P


def test_pretrain_loss_refuses_unknown_site_source_when_called():
    with pytest.raises(ValueError, match="site_source"):
        pretrain_loss(_model(), _batch(), site_source="both")


def test_scan_line_code_places_each_scan_on_its_own_line_when_geometry_given():
    from predilect.models.uopsl import scan_line_code

    model = _model()
    grid, freqs = model.cfg.oct.grid, model.cfg.oct.pos_freqs
    default = model.cfg.geometry
    geometry = torch.tensor([[float("nan")] * 3, [default.centre_x, default.centre_y, default.span], [0.3, 0.4, 0.4]])
    code = scan_line_code(geometry, default, grid, freqs)
    torch.testing.assert_close(code[0], model.oct.anatomy)  # no geometry: the run's default line
    torch.testing.assert_close(code[1], model.oct.anatomy)
    assert not torch.allclose(code[2], model.oct.anatomy)  # an off-centre, shorter scan
    model.eval()  # every description, no draw: the geometry is the only difference
    batch = _batch() | {"oct_geometry": geometry[[0, 1, 2, 0]]}
    _, with_lines = pretrain_loss(model, batch)
    _, without = pretrain_loss(model, _batch())
    assert with_lines["site_oct"] != without["site_oct"]


def test_span_jitter_stretches_oct_lines_in_training_only_when_set():
    model = _model()
    torch.manual_seed(3)
    _, plain = pretrain_loss(model, _batch())
    torch.manual_seed(3)
    _, stretched = pretrain_loss(model, _batch(), span_jitter=0.3)
    assert plain["clip_oct"] == stretched["clip_oct"] and plain["site_oct"] != stretched["site_oct"]
    model.eval()
    _, a = pretrain_loss(model, _batch())
    _, b = pretrain_loss(model, _batch(), span_jitter=0.3)
    assert a == b  # evaluation reads the data set's lines as they are
