"""Fused predilection attention: the Triton kernel (interpreted on CPU) and the custom op."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: the kernel runs on CPU tensors

import importlib

import pytest
import torch

from predilect.kernels import (
    MAX_QUERIES,
    byte_count,
    check_inputs,
    flop_count,
    predilection_attention,
    triton_source,
)
from predilect.kernels import _triton_predilection as kernel_module
from predilect.kernels.attention import predilection_attention_reference

if not kernel_module._INTERPRET:  # imported earlier in this process without the interpreter
    triton_source = importlib.reload(triton_source)  # the kernels are decorated at import
    kernel_module = importlib.reload(kernel_module)

OP = torch.ops.predilect.predilection_attention.default
BF16_SKIP = pytest.mark.skip(
    reason="Triton 3.9's CPU interpreter returns garbage (~1e10) from tl.dot on bfloat16 operands; "
    "bf16 is checked on CUDA by benchmarks/predilect/benchmarks/kernels/bench_predilection_attention.py --check-only"
)


def _four(args: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens, sites, weight, bias)`` from a list of the kernel's four inputs."""
    tokens, sites, weight, bias = args
    return tokens, sites, weight, bias


def _inputs(b: int, n: int, d: int, c: int, k: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = ((b, n, d), (c, k, d), (c, d), (c,))
    return [torch.randn(*shape, generator=g, dtype=torch.float64) for shape in shapes]


def _max_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return (x.double() - ref).abs().max().item()


SHAPES = [  # (B, N, D, C, K): odd N, C*K never a power of two, B = 1, D not a multiple of BLOCK_D
    (1, 197, 48, 5, 3),
    (2, 577, 40, 7, 1),
    (3, 197, 64, 28, 4),
    (1, 1, 8, 3, 5),
]
DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=BF16_SKIP)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-N{}-D{}-C{}-K{}".format(*s))
def test_kernel_within_2x_reference_error_when_sizes_odd(shape, dtype):
    args64 = _inputs(*shape)
    exact_logits, exact_map = predilection_attention_reference(*args64, return_attention=True)
    args = [a.to(dtype) for a in args64]
    b, n, _, c, _ = shape
    logits = torch.full((b, c), float("nan"), dtype=dtype)
    attention = torch.full((b, c, n), float("nan"), dtype=dtype)

    kernel_module.launch(*_four(args), logits, attention)

    assert not logits.isnan().any() and not attention.isnan().any(), "an output element was never written"
    ref_logits, ref_map = predilection_attention_reference(*args, return_attention=True)
    floor = 1e-6 if dtype == torch.float32 else 0.0
    assert _max_err(logits, exact_logits) <= 2 * _max_err(ref_logits, exact_logits) + floor
    assert _max_err(attention, exact_map) <= 2 * _max_err(ref_map, exact_map) + floor


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_writes_logits_only_when_map_not_requested(dtype):
    args64 = _inputs(2, 197, 48, 6, 3, seed=1)
    exact_logits, _ = predilection_attention_reference(*args64)
    args = [a.to(dtype) for a in args64]
    logits = torch.full((2, 6), float("nan"), dtype=dtype)

    kernel_module.launch(*_four(args), logits, None)

    ref_logits, _ = predilection_attention_reference(*args)
    floor = 1e-6 if dtype == torch.float32 else 0.0
    assert not logits.isnan().any()
    assert _max_err(logits, exact_logits) <= 2 * _max_err(ref_logits, exact_logits) + floor


SPLIT_SHAPES = [  # (B, N, D, C, K, S): slices of odd length, a slice shorter than BLOCK_N, C*K odd
    (1, 197, 48, 5, 3, 4),
    (2, 577, 40, 28, 4, 9),
    (3, 33, 24, 7, 1, 5),
    (1, 9, 8, 3, 5, 4),  # S * ceil(N / S) > N: the launcher drops the empty trailing slice
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SPLIT_SHAPES, ids=lambda s: "B{}-N{}-D{}-C{}-K{}-S{}".format(*s))
def test_split_kernel_within_2x_reference_error_when_tokens_sliced(shape, dtype):
    b, n, d, c, k, splits = shape
    args = [a.to(dtype) for a in _inputs(b, n, d, c, k, seed=splits)]
    # Exact arithmetic on the very (rounded) inputs: input quantisation is nobody's error.
    exact_logits, _ = predilection_attention_reference(*(a.double() for a in args))
    logits = torch.full((b, c), float("nan"), dtype=dtype)

    kernel_module.launch(*_four(args), logits, None, splits=splits)

    assert not logits.isnan().any(), "a logit was never written"
    ref_logits, _ = predilection_attention_reference(*args)
    floor = 1e-6 if dtype == torch.float32 else 0.0
    assert _max_err(logits, exact_logits) <= 2 * _max_err(ref_logits, exact_logits) + floor


def test_split_kernel_matches_unsplit_kernel_when_same_inputs():
    args = [a.float() for a in _inputs(2, 131, 16, 6, 2, seed=7)]
    whole, sliced = torch.full((2, 6), float("nan")), torch.full((2, 6), float("nan"))
    kernel_module.launch(*_four(args), whole, None, splits=1)
    kernel_module.launch(*_four(args), sliced, None, splits=3)
    torch.testing.assert_close(sliced, whole, atol=1e-5, rtol=1e-5)


def test_launch_raises_value_error_when_splits_not_positive():
    args = [a.float() for a in _inputs(1, 8, 8, 2, 2)]
    with pytest.raises(ValueError, match="splits"):
        kernel_module.launch(*_four(args), torch.empty(1, 2), None, splits=0)


@pytest.mark.parametrize(
    "batch,n_tokens,diseases,sm_count,expected",
    [
        (1, 576, 28, 132, 18),  # 2 programs per image, capped by 576 / 32 slices
        (1, 196, 28, 132, 6),  # 196 tokens: at most 6 slices of >= 32 tokens
        (16, 576, 28, 132, 9),  # 32 programs -> 9 slices fill 2 waves of 132 SMs
        (32, 576, 28, 132, 5),  # 64 programs: under half the SMs, still split
        (64, 576, 28, 132, 1),  # 128 programs: the split's combine cost more than it gained (H200)
        (256, 576, 28, 132, 1),  # the unsplit grid already fills the device
        (4, 20, 28, 132, 1),  # fewer than 32 tokens: never split
    ],
)
def test_choose_splits_fills_two_waves_when_batch_small(batch, n_tokens, diseases, sm_count, expected):
    assert triton_source.choose_splits(batch, n_tokens, diseases, block_c=16, sm_count=sm_count) == expected


def test_kernel_matches_reference_when_inputs_strided():
    tokens, sites, weight, bias = (a.float() for a in _inputs(2, 33, 24, 5, 2, seed=2))
    tokens_t = tokens.transpose(1, 2).contiguous().transpose(1, 2)  # same values, D-major strides
    sites_t = sites.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    out_logits = torch.full((5, 2), float("nan")).t()  # a non-contiguous output
    out_map = torch.full((2, 5, 33), float("nan"))

    kernel_module.launch(tokens_t, sites_t, weight, bias, out_logits, out_map)

    ref_logits, ref_map = predilection_attention_reference(tokens, sites, weight, bias, return_attention=True)
    torch.testing.assert_close(out_logits, ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_map, ref_map, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((1, 1025, 8), (2, 2, 8), (2, 8), (2,)), "N <= 1024"),
        (((1, 4, 1030), (2, 2, 1030), (2, 1030), (2,)), "D <= 1024"),
        (((1, 4, 8), (MAX_QUERIES + 1, 1, 8), (MAX_QUERIES + 1, 8), (MAX_QUERIES + 1,)), "C\\*K <= 512"),
        (((1, 4, 8), (2, 2, 9), (2, 8), (2,)), "inconsistent shapes"),
    ],
)
def test_check_inputs_raises_value_error_when_beyond_limits(shapes, match):
    with pytest.raises(ValueError, match=match):
        check_inputs(*(torch.ones(s) for s in shapes))


def test_check_inputs_raises_value_error_when_dtypes_mixed():
    tokens, sites, weight, bias = (a.float() for a in _inputs(1, 4, 8, 2, 2))
    with pytest.raises(ValueError, match="one dtype"):
        check_inputs(tokens.half(), sites, weight, bias)


def test_cost_model_counts_gemm_and_compulsory_bytes_when_sized():
    assert flop_count(2, 3, 4, 5, 6) == 2 * 2 * 3 * 4 * (30 + 5) + 6 * 2 * 30 * 3
    assert byte_count(2, 3, 4, 5, 6, element_size=2) == 2 * (2 * 3 * 4 + 5 * 6 * 4 + 5 * 4 + 5 + 2 * 5)
    assert byte_count(2, 3, 4, 5, 6, element_size=2, return_attention=True) > byte_count(2, 3, 4, 5, 6, element_size=2)


# ----------------------------------------------------------------------------- the custom op
@pytest.mark.parametrize("return_attention", [False, True])
def test_custom_op_passes_opcheck_when_on_cpu(return_attention):
    args = [a.float().requires_grad_() for a in _inputs(2, 9, 8, 3, 2)]
    torch.library.opcheck(OP, (*args, return_attention))


def test_custom_op_fake_shapes_when_traced_under_fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        args = [mode.from_tensor(a.float()) for a in _inputs(4, 197, 16, 7, 3)]
        logits, attention = OP(*args, True)
        _, no_map = OP(*args, False)
    assert logits.shape == (4, 7) and attention.shape == (4, 7, 197) and no_map.shape == (4, 7, 0)
    assert logits.dtype == torch.float32


def test_custom_op_gradients_match_finite_differences_when_float64():
    args = [a.requires_grad_() for a in _inputs(2, 5, 4, 3, 2)]
    assert torch.autograd.gradcheck(lambda *x: OP(*x, True), args)


def test_public_function_matches_reference_when_on_cpu():
    args = [a.float() for a in _inputs(3, 17, 8, 4, 3)]
    logits, attention = predilection_attention(*args, return_attention=True)
    ref_logits, ref_map = predilection_attention_reference(*args, return_attention=True)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(attention, ref_map)
    assert predilection_attention(*args)[1] is None


class _TinyHead(torch.nn.Module):
    def __init__(self, dim: int = 8, diseases: int = 3, sites: int = 2) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim)
        self.sites = torch.nn.Parameter(torch.randn(diseases, sites, dim))
        self.weight = torch.nn.Parameter(torch.randn(diseases, dim))
        self.bias = torch.nn.Parameter(torch.randn(diseases))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, attention = predilection_attention(
            self.proj(tokens), self.sites, self.weight, self.bias, return_attention=True
        )
        assert attention is not None  # asked for with return_attention=True
        return logits, attention


def test_torch_export_sees_one_op_when_module_exported():
    module, x = _TinyHead(), torch.randn(2, 11, 8)
    program = torch.export.export(module, (x,))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert targets.count(OP) == 1
    assert not any("softmax" in str(t) for t in targets)
    torch.testing.assert_close(program.module()(x), module(x))


def test_torch_compile_matches_eager_when_compiled_fullgraph():
    module, x = _TinyHead(), torch.randn(2, 11, 8)
    compiled = torch.compile(module, fullgraph=True)
    with torch.no_grad():
        for got, want in zip(compiled(x), module(x), strict=True):
            torch.testing.assert_close(got, want)
