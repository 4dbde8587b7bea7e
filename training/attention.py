"""Predilection cross-attention: C x K learned site queries attend over N patch tokens.

Shapes (B images, N tokens of width D, C diseases, K sites per disease):
    tokens  (B, N, D)   keys and values
    sites   (C, K, D)   the predilection-sites matrix, one query per (disease, site)
    weight  (C, D), bias (C,)   per-disease read-out
    -> logits (B, C), and on request the attention map (B, C, N): each disease's
       softmax weights over the tokens, averaged over its K sites.

This module holds the pure-PyTorch reference: it is the CPU implementation and the one
every export traces. The fused Triton kernel sits beside it (``predilect.training.kernels``,
used by the model on CUDA); ``use_fused_attention`` is the one switch, and export forces the
reference on (timm's fused_attn pattern). ``PREDILECT_FUSED_ATTN=0`` turns the kernel off.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch
from torch import Tensor

_FUSED_ENABLED = os.environ.get("PREDILECT_FUSED_ATTN", "1") != "0"
_EXPORTING = False


def use_fused_attention() -> bool:
    """Whether models should call the fused kernel (never while exporting)."""
    return _FUSED_ENABLED and not _EXPORTING


@contextlib.contextmanager
def reference_attention() -> Iterator[None]:
    """Force the reference path, e.g. around ``torch.onnx.export``."""
    global _EXPORTING
    previous, _EXPORTING = _EXPORTING, True
    try:
        yield
    finally:
        _EXPORTING = previous


def predilection_attention_reference(
    tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor, *, return_attention: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Reference predilection attention; see the module docstring for shapes."""
    batch, n_tokens, dim = tokens.shape
    n_diseases, n_sites, _ = sites.shape
    queries = sites.reshape(n_diseases * n_sites, dim)
    scores = torch.matmul(tokens, queries.t()).transpose(1, 2) * (1.0 / math.sqrt(dim))  # (B, CK, N)
    attn = torch.softmax(scores, dim=-1)
    context = torch.matmul(attn, tokens)  # (B, CK, D)
    pooled = context.reshape(batch, n_diseases, n_sites, dim).mean(dim=2)  # (B, C, D)
    logits = (pooled * weight).sum(dim=-1) + bias
    attention_map = attn.reshape(batch, n_diseases, n_sites, n_tokens).mean(dim=2) if return_attention else None
    return logits, attention_map
