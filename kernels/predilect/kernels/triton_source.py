"""The Triton kernels of predilection attention; imports Triton only (no torch).

Both the PyTorch launcher (``_triton_predilection``) and the TensorRT AOT plugin
(``predilect.build.tensorrt.plugin``) compile these very functions, so a serving container can
build engines without installing torch.

Work split. One program handles one image b, a block of BLOCK_C diseases and one slice of the
N tokens. Every program streams its tokens once, in BLOCK_N x BLOCK_D tiles, and keeps nothing
D-wide: because the read-out is linear, <mean_k sum_n p_ckn t_n, w_c> = mean_k sum_n p_ckn
<t_n, w_c>, so the attended vectors collapse to one scalar value per (disease, token),
v_cn = <t_n, w_c>. A program does two small GEMMs per token tile on the tensor cores (site
queries x tokens for the scores, read-out weights x tokens for the values) and an online
(flash-style) softmax over its tokens with scalar accumulators (running max m, denominator l,
numerator acc per (disease, site)), never materialising the B x C*K x N scores.

* ``predilection_attention_kernel``: grid (B, cdiv(C, BLOCK_C)); one slice = all N tokens;
  writes the logits (and optionally the attention map). The TensorRT plugin's kernel.
* ``predilection_partial_kernel``: grid (B, cdiv(C, BLOCK_C), S); slice s covers tokens
  [s * chunk, (s + 1) * chunk) and writes its (m, l, acc) to a workspace; then
  ``predilection_combine_kernel`` (grid (B, cdiv(C, BLOCK_C))) merges the S slices exactly
  (flash-decoding's split-KV reduction). Small batches use it to fill the SMs: B = 1 with
  C = 28 gives 2 programs unsplit, 2 * S split.

Sizes are never specialised: K == 1 or D == 1 must stay tensors for the float conversions.
FLOP and byte formulas: ``_spec.flop_count`` / ``_spec.byte_count``.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl


@triton.jit
def _scan_tokens(
    tokens_b,
    sites_ptr,
    weight_ptr,
    n_start,
    n_end,
    D,
    C,
    K,
    pid_c,
    stride_tn,
    stride_td,
    stride_sc,
    stride_sk,
    stride_sd,
    stride_wc,
    stride_wd,
    DOT_PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Online softmax over tokens [n_start, n_end): (m, l, acc), each (BLOCK_C, BLOCK_K) fp32 in log2 units."""
    # Query rows are (disease, site) pairs, row r = c_local * BLOCK_K + k, so that the score
    # tile (BLOCK_C*BLOCK_K, BLOCK_N) reshapes to (BLOCK_C, BLOCK_K, BLOCK_N) for the K-pooling.
    # BLOCK_K is K rounded up to a power of two; padded sites are masked out of the pooling.
    rows = tl.arange(0, BLOCK_C * BLOCK_K)
    row_c = pid_c * BLOCK_C + rows // BLOCK_K
    row_k = rows % BLOCK_K
    row_mask = (row_c < C) & (row_k < K)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, BLOCK_D)
    # 1/sqrt(D) folded with log2(e): the softmax runs on exp2.
    qk_scale = 1.4426950408889634 / tl.sqrt(D.to(tl.float32))

    m_i = tl.full((BLOCK_C, BLOCK_K), float("-inf"), tl.float32)  # running max
    l_i = tl.zeros((BLOCK_C, BLOCK_K), tl.float32)  # running softmax denominator
    acc = tl.zeros((BLOCK_C, BLOCK_K), tl.float32)  # running sum of p * v
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n = n0 + offs_n0
        n_mask = offs_n < n_end
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
        # An empty slice keeps m = -inf; guard the rescale so it yields 0 instead of NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s3 - m_safe[:, :, None])
        l_i = l_i * alpha + tl.sum(p, axis=2)
        acc = acc * alpha + tl.sum(p * values[:, None, :], axis=2)
        m_i = m_new
    return m_i, l_i, acc


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
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    k_mask = tl.arange(0, BLOCK_K) < K
    tokens_b = tokens_ptr + pid_b.to(tl.int64) * stride_tb

    m_i, l_i, acc = _scan_tokens(
        tokens_b,
        sites_ptr,
        weight_ptr,
        0,
        N,
        D,
        C,
        K,
        pid_c,
        stride_tn,
        stride_td,
        stride_sc,
        stride_sk,
        stride_sd,
        stride_wc,
        stride_wd,
        DOT_PRECISION,
        BLOCK_K,
        BLOCK_C,
        BLOCK_N,
        BLOCK_D,
    )

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
        rows = tl.arange(0, BLOCK_C * BLOCK_K)
        row_c = pid_c * BLOCK_C + rows // BLOCK_K
        row_k = rows % BLOCK_K
        row_mask = (row_c < C) & (row_k < K)
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_d0 = tl.arange(0, BLOCK_D)
        qk_scale = 1.4426950408889634 / tl.sqrt(D.to(tl.float32))
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


@triton.jit(do_not_specialize=["N", "D", "C", "K", "chunk"])
def predilection_partial_kernel(
    tokens_ptr,
    sites_ptr,
    weight_ptr,
    N,
    D,
    C,
    K,
    chunk,
    stride_tb,
    stride_tn,
    stride_td,
    stride_sc,
    stride_sk,
    stride_sd,
    stride_wc,
    stride_wd,
    partial_ptr,  # fp32 (3, B, S, C, BLOCK_K), contiguous: m, l, acc
    DOT_PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_s = tl.program_id(2)
    n_splits = tl.num_programs(2)
    n_batch = tl.num_programs(0)
    n_start = pid_s * chunk
    n_end = tl.minimum(n_start + chunk, N)
    tokens_b = tokens_ptr + pid_b.to(tl.int64) * stride_tb
    m_i, l_i, acc = _scan_tokens(
        tokens_b,
        sites_ptr,
        weight_ptr,
        n_start,
        n_end,
        D,
        C,
        K,
        pid_c,
        stride_tn,
        stride_td,
        stride_sc,
        stride_sk,
        stride_sd,
        stride_wc,
        stride_wd,
        DOT_PRECISION,
        BLOCK_K,
        BLOCK_C,
        BLOCK_N,
        BLOCK_D,
    )
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, BLOCK_K)
    mask = (offs_c < C)[:, None] & (offs_k < BLOCK_K)[None, :]
    plane = n_batch.to(tl.int64) * n_splits * C * BLOCK_K
    base = partial_ptr + ((pid_b.to(tl.int64) * n_splits + pid_s) * C) * BLOCK_K
    where = base + offs_c[:, None] * BLOCK_K + offs_k[None, :]
    tl.store(where, m_i, mask=mask)
    tl.store(where + plane, l_i, mask=mask)
    tl.store(where + 2 * plane, acc, mask=mask)


@triton.jit(do_not_specialize=["C", "K", "S"])
def predilection_combine_kernel(
    partial_ptr,
    bias_ptr,
    C,
    K,
    S,
    stride_bias,
    stride_lb,
    stride_lc,
    logits_ptr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Merge S token slices: M = max m_s, site = sum acc_s 2^(m_s - M) / sum l_s 2^(m_s - M)."""
    pid_b = tl.program_id(0)
    pid_c = tl.program_id(1)
    n_batch = tl.num_programs(0)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, BLOCK_K)
    c_mask = offs_c < C
    mask = c_mask[:, None] & (offs_k < BLOCK_K)[None, :]
    plane = n_batch.to(tl.int64) * S * C * BLOCK_K
    m_all = tl.full((BLOCK_C, BLOCK_K), float("-inf"), tl.float32)
    for s in range(S):
        base = partial_ptr + ((pid_b.to(tl.int64) * S + s) * C) * BLOCK_K
        m_s = tl.load(base + offs_c[:, None] * BLOCK_K + offs_k[None, :], mask=mask, other=float("-inf"))
        m_all = tl.maximum(m_all, m_s)
    m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
    l_all = tl.zeros((BLOCK_C, BLOCK_K), tl.float32)
    acc_all = tl.zeros((BLOCK_C, BLOCK_K), tl.float32)
    for s in range(S):
        where = partial_ptr + ((pid_b.to(tl.int64) * S + s) * C) * BLOCK_K + offs_c[:, None] * BLOCK_K + offs_k[None, :]
        m_s = tl.load(where, mask=mask, other=float("-inf"))
        scale = tl.exp2(m_s - m_safe)
        l_all += tl.load(where + plane, mask=mask, other=0.0) * scale
        acc_all += tl.load(where + 2 * plane, mask=mask, other=0.0) * scale
    k_mask = offs_k < K
    site_out = tl.where(k_mask[None, :], acc_all / tl.where(k_mask[None, :], l_all, 1.0), 0.0)
    bias = tl.load(bias_ptr + offs_c * stride_bias, mask=c_mask, other=0.0).to(tl.float32)
    logits = tl.sum(site_out, axis=1) / K.to(tl.float32) + bias
    tl.store(
        logits_ptr + pid_b.to(tl.int64) * stride_lb + offs_c * stride_lc,
        logits.to(logits_ptr.dtype.element_ty),
        mask=c_mask,
    )


# ----------------------------------------------------------------------------- tuning space
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
# score tile, BLOCK_C * BLOCK_K * BLOCK_N fp32, pruned per K by the launcher.
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
COMBINE_BLOCK_C = 16
MIN_SPLIT_TOKENS = 32  # a token slice shorter than this costs more in combining than it gains


def choose_splits(batch: int, n_tokens: int, n_diseases: int, *, block_c: int, sm_count: int) -> int:
    """Token slices per image so that B x cdiv(C, block_c) x S programs reach about 2 waves of the SMs.

    1 (no split) once the unsplit grid fills half the SMs or more: measured on an H200, 128
    unsplit programs (B = 64, C = 22) ran faster than the split's 3 slices plus its combine
    (bf16, N x D = 576 x 768: 141 vs 164 us; 196 x 128: 14.6 vs 17.5 us), while 32 programs
    (B = 16) gained 2.4x from splitting: past half a wave, the combine costs more than the
    occupancy it buys.
    Never slices shorter than ``MIN_SPLIT_TOKENS`` tokens.
    """
    if batch < 1 or n_tokens < 1 or sm_count < 1:
        return 1
    programs = batch * triton.cdiv(n_diseases, block_c)
    if 2 * programs >= sm_count:
        return 1
    wanted = triton.cdiv(2 * sm_count, programs)
    return max(1, min(wanted, n_tokens // MIN_SPLIT_TOKENS))
