"""What the fused kernel accepts, and what it costs; imports no Triton."""

from __future__ import annotations

import torch
from torch import Tensor

MAX_TOKENS = 1024  # N
MAX_DIM = 1024  # D
MAX_QUERIES = 512  # C * K
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _shape_error(tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor) -> str | None:
    if tokens.dim() != 3 or sites.dim() != 3 or weight.dim() != 2 or bias.dim() != 1:
        return (
            "expected tokens (B, N, D), sites (C, K, D), weight (C, D), bias (C,); got "
            f"{tuple(tokens.shape)}, {tuple(sites.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}"
        )
    dim = tokens.shape[2]
    n_diseases = sites.shape[0]
    if sites.shape[2] != dim or tuple(weight.shape) != (n_diseases, dim) or tuple(bias.shape) != (n_diseases,):
        return (
            f"inconsistent shapes: tokens {tuple(tokens.shape)}, sites {tuple(sites.shape)}, "
            f"weight {tuple(weight.shape)}, bias {tuple(bias.shape)}"
        )
    return None


def _limit_error(tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor) -> str | None:
    n_tokens, dim = tokens.shape[1], tokens.shape[2]
    queries = sites.shape[0] * sites.shape[1]
    if not (1 <= n_tokens <= MAX_TOKENS and 1 <= dim <= MAX_DIM and 1 <= queries <= MAX_QUERIES):
        return (
            f"predilection attention supports 1 <= N <= {MAX_TOKENS}, 1 <= D <= {MAX_DIM}, "
            f"1 <= C*K <= {MAX_QUERIES}; got N={n_tokens}, D={dim}, C*K={queries}"
        )
    dtypes = {tokens.dtype, sites.dtype, weight.dtype, bias.dtype}
    if len(dtypes) != 1 or tokens.dtype not in SUPPORTED_DTYPES:
        return f"all inputs must share one dtype among float32, float16, bfloat16; got {sorted(map(str, dtypes))}"
    if len({t.device for t in (tokens, sites, weight, bias)}) != 1:
        return "all inputs must be on the same device"
    return None


def check_inputs(tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor) -> None:
    """Raise ValueError unless shapes agree and sizes, dtypes and devices are within the limits."""
    error = _shape_error(tokens, sites, weight, bias) or _limit_error(tokens, sites, weight, bias)
    if error:
        raise ValueError(error)


def is_supported(tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor) -> bool:
    """Whether ``check_inputs`` would accept these tensors."""
    return _shape_error(tokens, sites, weight, bias) is None and _limit_error(tokens, sites, weight, bias) is None


def flop_count(batch: int, tokens: int, dim: int, diseases: int, sites: int, *, return_attention: bool = False) -> int:
    """FLOPs the fused kernel performs (a multiply-add counts 2).

    scores  2*B*N*D*C*K   site queries x tokens
    values  2*B*N*D*C     read-out weights x tokens (the attended D-vectors never exist)
    softmax 6*B*C*K*N     scale, max, exp, sum, rescale, value-weighted sum
    map     2*B*N*D*C*K + 4*B*C*K*N more when the attention map is requested (scores recomputed)
    """
    queries = diseases * sites
    total = 2 * batch * tokens * dim * (queries + diseases) + 6 * batch * queries * tokens
    if return_attention:
        total += 2 * batch * tokens * dim * queries + 4 * batch * queries * tokens
    return total


def byte_count(
    batch: int, tokens: int, dim: int, diseases: int, sites: int, *, element_size: int, return_attention: bool = False
) -> int:
    """Compulsory DRAM traffic: every input read once, every output written once.

    read  B*N*D (tokens) + C*K*D (sites) + C*D (weight) + C (bias) elements
    write B*C (logits) + B*C*N (attention map, when requested) elements
    Re-reads of a token tile by the cdiv(C, BLOCK_C) programs of one image are meant to hit L2.
    """
    elements = batch * tokens * dim + diseases * sites * dim + diseases * dim + diseases + batch * diseases
    if return_attention:
        elements += batch * diseases * tokens
    return elements * element_size
