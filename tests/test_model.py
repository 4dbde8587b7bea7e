import math

import numpy as np
import pytest
import torch

from predilect.errors import ConfigError
from predilect.kernels.attention import (
    predilection_attention_reference,
    reference_attention,
    use_fused_attention,
)
from predilect.models.classifier import FundusClassifier, ModelCfg, evidence_map


def _naive(tokens, sites, weight, bias):
    """Loop-by-loop definition, float64: one query at a time, straight from the formula."""
    b_, n_, d_ = tokens.shape
    c_, k_, _ = sites.shape
    logits = torch.zeros(b_, c_, dtype=torch.float64)
    maps = torch.zeros(b_, c_, n_, dtype=torch.float64)
    for b in range(b_):
        for c in range(c_):
            pooled = torch.zeros(d_, dtype=torch.float64)
            for k in range(k_):
                w = torch.softmax(tokens[b] @ sites[c, k] / math.sqrt(d_), dim=0)
                pooled += w @ tokens[b] / k_
                maps[b, c] += w / k_
            logits[b, c] = pooled @ weight[c] + bias[c]
    return logits, maps


@pytest.mark.parametrize("b,n,d,c,k", [(1, 7, 5, 3, 2), (3, 197, 16, 6, 3)])
def test_attention_reference_matches_naive_definition_when_sizes_odd(b, n, d, c, k):
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(*s, generator=g, dtype=torch.float64) for s in ((b, n, d), (c, k, d), (c, d), (c,))]
    logits, maps = predilection_attention_reference(*args, return_attention=True)
    ref_logits, ref_maps = _naive(*args)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(maps, ref_maps)
    torch.testing.assert_close(maps.sum(-1), torch.ones(b, c, dtype=torch.float64))


def test_reference_attention_context_disables_fused_path_when_exporting():
    before = use_fused_attention()
    with reference_attention():
        assert not use_fused_attention()
    assert use_fused_attention() == before


def test_fundus_classifier_shapes_when_forwarded():
    cfg = ModelCfg(num_diseases=6, image_size=64, widths=(8, 8, 16), sites_per_disease=3)
    model = FundusClassifier(cfg).eval()
    x = torch.randn(2, 3, 64, 64)
    logits, maps = model.forward_with_attention(x)
    assert model(x).shape == (2, 6) and logits.shape == (2, 6)
    assert maps.shape == (2, 6, 4, 4)


def test_fundus_classifier_output_independent_of_batch_when_eval():
    cfg = ModelCfg(num_diseases=4, image_size=64, widths=(8, 8, 16))
    model = FundusClassifier(cfg).eval()
    x = torch.randn(5, 3, 64, 64)
    with torch.inference_mode():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(together.numpy(), alone.numpy(), atol=1e-5)


def test_model_cfg_rejects_size_when_not_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        _ = ModelCfg(num_diseases=2, image_size=100).grid


def test_model_cfg_round_trips_when_serialised():
    cfg = ModelCfg(num_diseases=6, widths=(4, 8, 16))
    assert ModelCfg.from_json(cfg.to_json()) == cfg


def test_evidence_map_sums_to_logit_less_bias_when_unclipped():
    g = torch.Generator().manual_seed(1)
    tokens, sites, weight, bias = (
        torch.randn(*s, generator=g, dtype=torch.float64) for s in ((2, 13, 7), (3, 2, 7), (3, 7), (3,))
    )
    logits, attention = predilection_attention_reference(tokens, sites, weight, bias, return_attention=True)
    assert attention is not None
    share = attention * torch.einsum("bnd,cd->bcn", tokens, weight)
    torch.testing.assert_close(share.sum(-1), logits - bias)
    evidence = evidence_map(attention, tokens, weight)
    torch.testing.assert_close(evidence, share.clamp_min(0))
    assert (evidence >= 0).all() and (evidence > 0).any() and (share < 0).any()


def test_fundus_classifier_returns_evidence_map_when_configured():
    cfg = ModelCfg(num_diseases=3, image_size=64, widths=(8, 8, 16), heatmap="evidence")
    model = FundusClassifier(cfg).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        logits, maps = model.forward_with_attention(x)
        tokens = model.encoder(x)
        _, attention = model.head(tokens, return_attention=True)
        want = evidence_map(attention, tokens, model.head.weight).reshape(2, 3, 4, 4)
    torch.testing.assert_close(maps, want)
    torch.testing.assert_close(logits, model(x))
    assert ModelCfg.from_json(cfg.to_json()).heatmap == "evidence"


def test_model_cfg_rejects_heatmap_when_unknown():
    with pytest.raises(ConfigError, match="heatmap"):
        ModelCfg(num_diseases=2, heatmap="gradcam")


@pytest.mark.parametrize(
    "backbone,cell,first,last", [("conv", 3, 12, 87), ("conv-local", 3, 36, 75), ("conv-local8", 6, 36, 67)]
)
def test_conv_token_sees_receptive_field_when_backbone_chosen(backbone, cell, first, last):
    """The token of cell (c, c) (pixels 48-63 of 128 at stride 16, 48-55 at stride 8) depends on
    pixels first..last in each axis: centred on its cell for the local backbones."""
    cfg = ModelCfg(num_diseases=2, image_size=128, widths=(8, 8, 16), backbone=backbone)
    body = FundusClassifier(cfg).eval().encoder.backbone.body
    assert isinstance(body, torch.nn.Sequential)
    x = torch.randn(1, 3, 128, 128, requires_grad=True)
    (grad,) = torch.autograd.grad(body(x)[0, :, cell, cell].square().sum(), x)
    rows, cols = torch.nonzero(grad.abs().sum(dim=(0, 1)) > 0, as_tuple=True)
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (first, last, first, last)
