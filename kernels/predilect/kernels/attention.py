"""Predilection cross-attention: C x K learned site queries attend over N patch tokens.

Shapes (B images, N tokens of width D, C diseases, K sites per disease):
    tokens  (B, N, D)   keys and values
    sites   (C, K, D)   the predilection-sites matrix, one query per (disease, site)
    weight  (C, D), bias (C,)   per-disease read-out
    -> logits (B, C), and on request the attention map (B, C, N): each disease's
       softmax weights over the tokens, averaged over its K sites.

This module holds the pure-PyTorch reference: it is the CPU implementation and the one
every export traces. The fused Triton kernel sits beside it (``predilect.kernels``,
used by the model on CUDA); ``use_fused_attention`` is the one switch, and export forces the
reference on (timm's fused_attn pattern). ``PREDILECT_FUSED_ATTN=0`` turns the kernel off.
``custom_op_attention`` is the one way to get the ``predilect::predilection_attention`` custom op
on every device (its CPU implementation is this reference): ``torch.export`` for Torch-TensorRT
needs that one op node in the graph even when it traces on a CPU.
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
_CUSTOM_OP = False


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


def use_custom_op_attention() -> bool:
    """Whether models should call the custom op on every device (inside ``custom_op_attention``).

    ``reference_attention`` wins when both are active: the ONNX export never sees the op.
    """
    return _CUSTOM_OP and not _EXPORTING


@contextlib.contextmanager
def custom_op_attention() -> Iterator[None]:
    """Route attention through the ``predilect::predilection_attention`` op on CPU too, e.g. around ``torch.export``."""
    global _CUSTOM_OP
    previous, _CUSTOM_OP = _CUSTOM_OP, True
    try:
        yield
    finally:
        _CUSTOM_OP = previous


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
