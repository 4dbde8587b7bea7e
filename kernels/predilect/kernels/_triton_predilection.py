"""Private PyTorch launcher of the Triton predilection-attention kernels (see ``triton_source``).

Import this module only after deciding on ``TRITON_INTERPRET``: Triton reads it when the
kernels are decorated. Under the interpreter the autotuner gets a single configuration.
"""

from __future__ import annotations

import os

import torch
import triton
from torch import Tensor

from predilect.kernels._spec import check_inputs
from predilect.kernels.triton_source import (
    COMBINE_BLOCK_C,
    INTERPRETER_CONFIG,
    TUNING_SPACE,
    BlockConfig,
    choose_splits,
    predilection_attention_kernel,
    predilection_combine_kernel,
    predilection_partial_kernel,
)

__all__ = ["TUNING_SPACE", "BlockConfig", "forward", "launch", "predilection_attention_kernel"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_MAX_TILE = 32 * 1024  # score-tile elements per program worth timing


def _prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    block_k = triton.next_power_of_2(int(named_args["K"]))
    kept = [cfg for cfg in configs if cfg.kwargs["BLOCK_C"] * block_k * cfg.kwargs["BLOCK_N"] <= _MAX_TILE]
    return kept or [min(configs, key=lambda cfg: cfg.kwargs["BLOCK_C"] * cfg.kwargs["BLOCK_N"])]


_CONFIGS = [INTERPRETER_CONFIG.to_triton()] if _INTERPRET else [cfg.to_triton() for cfg in TUNING_SPACE]
_autotuned_kernel = triton.autotune(
    configs=_CONFIGS,
    key=["N", "D", "C", "K", "RETURN_ATTN"],
    prune_configs_by={"early_config_prune": _prune},
)(predilection_attention_kernel)
# The split kernel keeps BLOCK_C fixed (the workspace and the combine grid depend on it) and
# tunes the token/feature tiles; "chunk" in the key retunes when the slice length changes.
_SPLIT_BLOCK_C = 16
_SPLIT_CONFIGS = [
    cfg.to_triton() for cfg in ((INTERPRETER_CONFIG,) if _INTERPRET else TUNING_SPACE) if cfg.block_c == _SPLIT_BLOCK_C
]
_autotuned_partial = triton.autotune(
    configs=_SPLIT_CONFIGS,
    key=["N", "D", "C", "K", "chunk"],
    prune_configs_by={"early_config_prune": _prune},
)(predilection_partial_kernel)


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return int(torch.cuda.get_device_properties(device).multi_processor_count)


def auto_splits(batch: int, n_tokens: int, n_diseases: int, device: torch.device) -> int:
    """Token slices per image for this device (1 on CPU, where the grid is simulated)."""
    return choose_splits(batch, n_tokens, n_diseases, block_c=_SPLIT_BLOCK_C, sm_count=_sm_count(device))


def _launch_split(
    tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor, logits: Tensor, splits: int, precision: str
) -> None:
    batch, n_tokens, dim = tokens.shape
    n_diseases, n_sites, _ = sites.shape
    block_k = triton.next_power_of_2(n_sites)
    chunk = triton.cdiv(n_tokens, splits)
    splits = triton.cdiv(n_tokens, chunk)  # no empty trailing slice
    partial = torch.empty((3, batch, splits, n_diseases, block_k), device=tokens.device, dtype=torch.float32)
    _autotuned_partial[(batch, triton.cdiv(n_diseases, _SPLIT_BLOCK_C), splits)](
        tokens,
        sites,
        weight,
        n_tokens,
        dim,
        n_diseases,
        n_sites,
        chunk,
        *tokens.stride(),
        *sites.stride(),
        *weight.stride(),
        partial,
        DOT_PRECISION=precision,
        BLOCK_K=block_k,
    )
    predilection_combine_kernel[(batch, triton.cdiv(n_diseases, COMBINE_BLOCK_C))](
        partial,
        bias,
        n_diseases,
        n_sites,
        splits,
        bias.stride(0),
        *logits.stride(),
        logits,
        BLOCK_K=block_k,
        BLOCK_C=COMBINE_BLOCK_C,
    )


def launch(
    tokens: Tensor,
    sites: Tensor,
    weight: Tensor,
    bias: Tensor,
    logits: Tensor,
    attention: Tensor | None = None,
    *,
    splits: int | None = None,
) -> None:
    """Run the kernel, writing ``logits`` (B, C) and, if given, ``attention`` (B, C, N) in place.

    ``splits``: token slices per image (None: enough to fill the device's SMs). The attention
    map needs each row's final softmax statistics, so a map request runs unsplit.
    """
    check_inputs(tokens, sites, weight, bias)
    batch, n_tokens, dim = tokens.shape
    n_diseases, n_sites, _ = sites.shape
    if tuple(logits.shape) != (batch, n_diseases):
        raise ValueError(f"logits must be {(batch, n_diseases)}, got {tuple(logits.shape)}")
    if attention is not None and tuple(attention.shape) != (batch, n_diseases, n_tokens):
        raise ValueError(f"attention must be {(batch, n_diseases, n_tokens)}, got {tuple(attention.shape)}")
    if splits is not None and splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    if batch == 0:
        return
    precision = "ieee" if tokens.dtype == torch.float32 else "tf32"
    if attention is None:
        splits = auto_splits(batch, n_tokens, n_diseases, tokens.device) if splits is None else splits
        if splits > 1:
            _launch_split(tokens, sites, weight, bias, logits, splits, precision)
            return
    attn_strides = attention.stride() if attention is not None else (0, 0, 0)
    grid = lambda meta: (batch, triton.cdiv(n_diseases, meta["BLOCK_C"]))  # noqa: E731
    _autotuned_kernel[grid](
        tokens,
        sites,
        weight,
        bias,
        n_tokens,
        dim,
        n_diseases,
        n_sites,
        *tokens.stride(),
        *sites.stride(),
        *weight.stride(),
        bias.stride(0),
        *logits.stride(),
        *attn_strides,
        logits,
        attention,
        RETURN_ATTN=attention is not None,
        DOT_PRECISION=precision,
        BLOCK_K=triton.next_power_of_2(n_sites),
    )


def forward(
    tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor, return_attention: bool
) -> tuple[Tensor, Tensor]:
    """Allocate the outputs and launch; the map is (B, C, 0) when not requested."""
    batch, n_tokens, _ = tokens.shape
    n_diseases = sites.shape[0]
    logits = tokens.new_empty((batch, n_diseases))
    attention = tokens.new_empty((batch, n_diseases, n_tokens if return_attention else 0))
    launch(tokens, sites, weight, bias, logits, attention if return_attention else None)
    return logits, attention
