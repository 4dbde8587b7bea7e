import math

import numpy as np
import pytest
import torch

from predilect.training.attention import (
    predilection_attention_reference,
    reference_attention,
    use_fused_attention,
)
from predilect.training.model import FundusClassifier, ModelCfg


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
