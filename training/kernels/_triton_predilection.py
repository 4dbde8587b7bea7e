"""Private OpenAI Triton kernel for predilection attention (see ``predilection_attention``).

One program per (image b, block of BLOCK_C diseases). Every program streams its image's N
tokens once, in BLOCK_N x BLOCK_D tiles, and keeps nothing D-wide: because the read-out is
linear, <mean_k sum_n p_ckn t_n, w_c> = mean_k sum_n p_ckn <t_n, w_c>, so the attended
vectors collapse to one scalar value per (disease, token), v_cn = <t_n, w_c>. A program
therefore does two small GEMMs per token tile on the tensor cores (site queries x tokens for
the scores, read-out weights x tokens for the values) and an online (flash-style) softmax over
N with scalar accumulators, never materialising the B x C*K x N scores. FLOP and byte
formulas: ``_spec.flop_count`` / ``_spec.byte_count``.

Import this module only after deciding on ``TRITON_INTERPRET``: Triton reads it when the
kernel is decorated. Under the interpreter the autotuner gets a single configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._spec import check_inputs

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ----------------------------------------------------------------------------- the kernel
# Sizes are never specialised: K == 1 or D == 1 must stay tensors for the float conversions.
@triton.jit(do_not_specialize=["N", "D", "C", "K"])
def predilection_attention_kernel(
    # Argument order matters for the TensorRT AOT plugin, which passes input pointers, then
    # the extra int32 scalars, then output pointers: keep inputs | scalars | outputs.
    tokens_ptr,
    sites_ptr,
    weight_ptr,
    bias_ptr,
    N,
    D,
    C,
    K,
    stride_tb,
    stride_tn,
    stride_td,
    stride_sc,
    stride_sk,
    stride_sd,
    stride_wc,
    stride_wd,
    stride_bias,
    stride_lb,
    stride_lc,
    stride_ab,
    stride_ac,
    stride_an,
    logits_ptr,
    attn_ptr,
    RETURN_ATTN: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_c = tl.program_id(1)

    # Query rows are (disease, site) pairs, row r = c_local * BLOCK_K + k, so that the score
    # tile (BLOCK_C*BLOCK_K, BLOCK_N) reshapes to (BLOCK_C, BLOCK_K, BLOCK_N) for the K-pooling.
    # BLOCK_K is K rounded up to a power of two; padded sites are masked out of the pooling.
    rows = tl.arange(0, BLOCK_C * BLOCK_K)
    row_c = pid_c * BLOCK_C + rows // BLOCK_K
    row_k = rows % BLOCK_K
    row_mask = (row_c < C) & (row_k < K)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    k_mask = tl.arange(0, BLOCK_K) < K
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, BLOCK_D)

    tokens_b = tokens_ptr + pid_b.to(tl.int64) * stride_tb
    # 1/sqrt(D) folded with log2(e): the softmax runs on exp2.
    qk_scale = 1.4426950408889634 / tl.sqrt(D.to(tl.float32))

    m_i = tl.full((BLOCK_C, BLOCK_K), float("-inf"), tl.float32)  # running max
    l_i = tl.zeros((BLOCK_C, BLOCK_K), tl.float32)  # running softmax denominator
    acc = tl.zeros((BLOCK_C, BLOCK_K), tl.float32)  # running sum of p * v

    # Online softmax: one pass over N rescales the partial sums whenever the max grows, so
    # scores are never stored and each token tile is read once for the logits.
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + offs_n0
        n_mask = offs_n < N
        scores = tl.zeros((BLOCK_C * BLOCK_K, BLOCK_N), tl.float32)
        values = tl.zeros((BLOCK_C, BLOCK_N), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + offs_d0
            d_mask = offs_d < D
            # Tokens loaded transposed (BLOCK_D, BLOCK_N): both GEMMs then take it as the B operand.
            tok = tl.load(
                tokens_b + offs_n[None, :] * stride_tn + offs_d[:, None] * stride_td,
                mask=n_mask[None, :] & d_mask[:, None],
                other=0.0,
            )
            qry = tl.load(
                sites_ptr + row_c[:, None] * stride_sc + row_k[:, None] * stride_sk + offs_d[None, :] * stride_sd,
                mask=row_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            wgt = tl.load(
                weight_ptr + offs_c[:, None] * stride_wc + offs_d[None, :] * stride_wd,
                mask=c_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            scores = tl.dot(qry, tok, scores, input_precision=DOT_PRECISION)
            values = tl.dot(wgt, tok, values, input_precision=DOT_PRECISION)
        s3 = tl.reshape(scores, (BLOCK_C, BLOCK_K, BLOCK_N)) * qk_scale
        s3 = tl.where(n_mask[None, None, :], s3, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s3, axis=2))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s3 - m_new[:, :, None])
        l_i = l_i * alpha + tl.sum(p, axis=2)
        acc = acc * alpha + tl.sum(p * values[:, None, :], axis=2)
        m_i = m_new

    site_out = tl.where(k_mask[None, :], acc / l_i, 0.0)
    bias = tl.load(bias_ptr + offs_c * stride_bias, mask=c_mask, other=0.0).to(tl.float32)
    logits = tl.sum(site_out, axis=1) / K.to(tl.float32) + bias
    tl.store(
        logits_ptr + pid_b.to(tl.int64) * stride_lb + offs_c * stride_lc,
        logits.to(logits_ptr.dtype.element_ty),
        mask=c_mask,
    )

    if RETURN_ATTN:
        # The map needs each row's final max and denominator, known only after the whole of N.
        # A second pass over N recomputes the scores (one more small GEMM on L2-resident tokens)
        # rather than spilling unnormalised B x C*K x N scores to HBM and rescaling them, which
        # would cost exactly the traffic this kernel exists to avoid.
        inv_l = tl.where(k_mask[None, :], 1.0 / (l_i * K.to(tl.float32)), 0.0)
        attn_b = attn_ptr + pid_b.to(tl.int64) * stride_ab
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + offs_n0
            n_mask = offs_n < N
            scores = tl.zeros((BLOCK_C * BLOCK_K, BLOCK_N), tl.float32)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + offs_d0
                d_mask = offs_d < D
                tok = tl.load(
                    tokens_b + offs_n[None, :] * stride_tn + offs_d[:, None] * stride_td,
                    mask=n_mask[None, :] & d_mask[:, None],
                    other=0.0,
                )
                qry = tl.load(
                    sites_ptr + row_c[:, None] * stride_sc + row_k[:, None] * stride_sk + offs_d[None, :] * stride_sd,
                    mask=row_mask[:, None] & d_mask[None, :],
                    other=0.0,
                )
                scores = tl.dot(qry, tok, scores, input_precision=DOT_PRECISION)
            s3 = tl.reshape(scores, (BLOCK_C, BLOCK_K, BLOCK_N)) * qk_scale
            p = tl.exp2(s3 - m_i[:, :, None]) * inv_l[:, :, None]
            amap = tl.sum(p, axis=1)
            tl.store(
                attn_b + offs_c[:, None] * stride_ac + offs_n[None, :] * stride_an,
                amap.to(attn_ptr.dtype.element_ty),
                mask=c_mask[:, None] & n_mask[None, :],
            )


# ----------------------------------------------------------------------------- autotuning
@dataclass(frozen=True)
class BlockConfig:
    """One point of the tuning space; also the TensorRT plugin's tactics."""

    block_c: int
    block_n: int
    block_d: int
    num_warps: int
    num_stages: int

    def to_triton(self) -> triton.Config:
        return triton.Config(
            {"BLOCK_C": self.block_c, "BLOCK_N": self.block_n, "BLOCK_D": self.block_d},
            num_warps=self.num_warps,
            num_stages=self.num_stages,
        )


# BLOCK_C >= 16 because tl.dot needs M >= 16 for the value GEMM. The register budget is the
# score tile, BLOCK_C * BLOCK_K * BLOCK_N fp32, pruned per K below.
TUNING_SPACE: tuple[BlockConfig, ...] = (
    BlockConfig(16, 32, 64, 4, 2),
    BlockConfig(16, 64, 64, 4, 3),
    BlockConfig(16, 64, 128, 8, 3),
    BlockConfig(16, 128, 64, 8, 3),
    BlockConfig(32, 32, 64, 4, 3),
    BlockConfig(32, 64, 64, 8, 3),
    BlockConfig(32, 64, 128, 8, 2),
)
INTERPRETER_CONFIG = BlockConfig(16, 64, 32, 4, 1)
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


# ----------------------------------------------------------------------------- launcher
def launch(
    tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor, logits: Tensor, attention: Tensor | None = None
) -> None:
    """Run the kernel, writing ``logits`` (B, C) and, if given, ``attention`` (B, C, N) in place."""
    check_inputs(tokens, sites, weight, bias)
    batch, n_tokens, dim = tokens.shape
    n_diseases, n_sites, _ = sites.shape
    if tuple(logits.shape) != (batch, n_diseases):
        raise ValueError(f"logits must be {(batch, n_diseases)}, got {tuple(logits.shape)}")
    if attention is not None and tuple(attention.shape) != (batch, n_diseases, n_tokens):
        raise ValueError(f"attention must be {(batch, n_diseases, n_tokens)}, got {tuple(attention.shape)}")
    if batch == 0:
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
        DOT_PRECISION="ieee" if tokens.dtype == torch.float32 else "tf32",
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
