"""``predilect::predilection_attention``: one custom op, fused on CUDA, the reference elsewhere.

Layers (as flash-attn's ``flash_attn_interface``): the private Triton kernel
(``_triton_predilection``) -> this custom op with a fake (meta) implementation and an
autograd formula, so that torch.compile and torch.export see one opaque node -> the public
``predilection_attention`` below.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from predilect.kernels._spec import check_inputs
from predilect.kernels.attention import predilection_attention_reference

OP_NAME = "predilect::predilection_attention"


@torch.library.custom_op(OP_NAME, mutates_args=())
def _predilection_attention_op(
    tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor, return_attention: bool
) -> tuple[Tensor, Tensor]:
    """Default (CPU) implementation: the pure-PyTorch reference. The map is (B, C, 0) when not requested."""
    logits, attention = predilection_attention_reference(tokens, sites, weight, bias, return_attention=return_attention)
    if attention is None:
        attention = tokens.new_empty((tokens.shape[0], sites.shape[0], 0))
    return logits, attention


@_predilection_attention_op.register_kernel("cuda")
def _predilection_attention_cuda(
    tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor, return_attention: bool
) -> tuple[Tensor, Tensor]:
    from predilect.kernels import _triton_predilection  # Triton only when a CUDA tensor arrives

    with torch.cuda.device(tokens.device):
        return _triton_predilection.forward(tokens, sites, weight, bias, return_attention)


@_predilection_attention_op.register_fake
def _predilection_attention_fake(
    tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor, return_attention: bool
) -> tuple[Tensor, Tensor]:
    batch, n_tokens, _ = tokens.shape
    n_diseases = sites.shape[0]
    return (
        tokens.new_empty((batch, n_diseases)),
        tokens.new_empty((batch, n_diseases, n_tokens if return_attention else 0)),
    )


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:
    tokens, sites, weight, bias, _ = inputs
    ctx.save_for_backward(tokens, sites, weight, bias)


def _backward(
    ctx: torch.autograd.function.FunctionCtx, grad_logits: Tensor | None, grad_attention: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, None]:
    tokens, sites, weight, bias = ctx.saved_tensors  # type: ignore[attr-defined]  # set by save_for_backward
    return (*attention_backward(tokens, sites, weight, bias, grad_logits, grad_attention), None)


def attention_backward(
    tokens: Tensor,
    sites: Tensor,
    weight: Tensor,
    bias: Tensor,
    grad_logits: Tensor | None,
    grad_attention: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (tokens, sites, weight, bias), recomputing the softmax (no saved B x C*K x N)."""
    batch, n_tokens, dim = tokens.shape
    n_diseases, n_sites, _ = sites.shape
    compute = torch.promote_types(tokens.dtype, torch.float32)
    t, w = tokens.to(compute), weight.to(compute)
    q = sites.to(compute).reshape(n_diseases * n_sites, dim)
    scale = 1.0 / math.sqrt(dim)
    probs = torch.softmax(torch.matmul(t, q.t()).transpose(1, 2) * scale, dim=-1)  # (B, CK, N)
    g_logits = grad_logits.to(compute) if grad_logits is not None else t.new_zeros((batch, n_diseases))
    pooled = torch.matmul(probs, t).reshape(batch, n_diseases, n_sites, dim).mean(dim=2)  # (B, C, D)
    g_bias = g_logits.sum(dim=0)
    g_weight = torch.einsum("bc,bcd->cd", g_logits, pooled)
    g_context = (g_logits.unsqueeze(-1) * w / n_sites).unsqueeze(2).expand(batch, n_diseases, n_sites, dim)
    g_context = g_context.reshape(batch, n_diseases * n_sites, dim)
    g_probs = torch.matmul(g_context, t.transpose(1, 2))  # (B, CK, N)
    if grad_attention is not None and grad_attention.numel():
        g_map = (grad_attention.to(compute) / n_sites).unsqueeze(2).expand(batch, n_diseases, n_sites, n_tokens)
        g_probs = g_probs + g_map.reshape(batch, n_diseases * n_sites, n_tokens)
    g_scores = probs * (g_probs - (probs * g_probs).sum(dim=-1, keepdim=True)) * scale
    g_tokens = torch.matmul(probs.transpose(1, 2), g_context) + torch.matmul(g_scores.transpose(1, 2), q)
    g_sites = torch.einsum("bqn,bnd->qd", g_scores, t).reshape(n_diseases, n_sites, dim)
    return g_tokens.to(tokens.dtype), g_sites.to(sites.dtype), g_weight.to(weight.dtype), g_bias.to(bias.dtype)


_predilection_attention_op.register_autograd(_backward, setup_context=_setup_context)


def predilection_attention(
    tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor, *, return_attention: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Fused predilection attention (Triton on CUDA, the reference on CPU).

    Args:
        tokens: (B, N, D) patch tokens, keys and values; N <= 1024, D <= 1024.
        sites: (C, K, D) predilection-sites matrix, one query per (disease, site); C*K <= 512.
        weight: (C, D) and bias: (C,) per-disease read-out.
        return_attention: also return each disease's attention map.

    All four share one dtype (float32, float16 or bfloat16) and one device; CUDA accumulates
    in float32 and returns the input dtype.

    Returns:
        logits (B, C), and the attention map (B, C, N) (mean over K of the softmax weights
        over the tokens) or None.
    """
    check_inputs(tokens, sites, weight, bias)
    logits, attention = _predilection_attention_op(tokens, sites, weight, bias, return_attention)
    return logits, attention if return_attention else None
