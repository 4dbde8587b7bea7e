"""Fused predilection attention vs eager reference vs SDPA composition vs torch.compile(reference).

    python -m predilect.benchmarks.kernels.bench_predilection_attention [--check-only] [--perf-report]

Needs a CUDA GPU (exits with status 2 otherwise). Order of work: correctness of every
implementation against a float64 reference (fp32, fp16, bf16; exits 1 on failure), then the
device ceilings (a large bf16 matmul for TFLOP/s, a large device-to-device copy for GB/s), then
the sweep B x N x D x K with C = 28: median time over many CUDA-event-timed runs, achieved
GB/s and TFLOP/s (``training.kernels.byte_count`` / ``flop_count``: the same compulsory
traffic and useful FLOPs for every implementation) and their share of the ceilings. Writes a
markdown table to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from predilect.training.kernels import byte_count, flop_count, predilection_attention, predilection_attention_reference

RESULTS = Path(__file__).resolve().parent.parent / "results"
BATCHES = (1, 8, 64, 256)
TOKENS = (196, 576)
DIMS = (384, 768)
DISEASES = 28
SITES = (4, 8)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

Impl = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------- implementations
def fused(tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return predilection_attention(tokens, sites, weight, bias)[0]


def eager(tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return predilection_attention_reference(tokens, sites, weight, bias)[0]


def sdpa(tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Scores, softmax and values through SDPA (one head, C*K queries); pooling and read-out eager."""
    batch, _, dim = tokens.shape
    n_diseases, n_sites, _ = sites.shape
    queries = sites.reshape(1, 1, n_diseases * n_sites, dim).expand(batch, 1, -1, -1)
    context = F.scaled_dot_product_attention(queries, tokens.unsqueeze(1), tokens.unsqueeze(1))  # (B, 1, CK, D)
    pooled = context.reshape(batch, n_diseases, n_sites, dim).mean(dim=2)
    return (pooled * weight).sum(dim=-1) + bias


# One specialisation per swept shape (32 of them): lift Dynamo's default limit of 8 recompiles,
# past which it would silently fall back to eager.
torch._dynamo.config.recompile_limit = 64
_compiled_reference = torch.compile(eager, dynamic=False)


def compiled(tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return _compiled_reference(tokens, sites, weight, bias)


IMPLS: dict[str, Impl] = {"fused": fused, "eager": eager, "sdpa": sdpa, "compiled": compiled}


# ----------------------------------------------------------------------------- helpers
def make_inputs(
    batch: int, tokens: int, dim: int, diseases: int, sites: int, dtype: torch.dtype, seed: int = 0
) -> list[Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    shapes = ((batch, tokens, dim), (diseases, sites, dim), (diseases, dim), (diseases,))
    return [torch.randn(*s, generator=g, device="cuda", dtype=torch.float32).to(dtype) for s in shapes]


def time_ms(fn: Callable[[], object], *, warmup: int = 10, reps: int = 100) -> float:
    """Median of ``reps`` CUDA-event timings, one launch each."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends, strict=True):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))


@dataclass(frozen=True)
class Ceilings:
    tflops: float  # bf16 dense matmul
    gbps: float  # device-to-device copy, read + write


def measure_ceilings() -> Ceilings:
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    matmul_ms = time_ms(lambda: torch.mm(a, b), reps=30)
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src), reps=30)
    return Ceilings(tflops=2 * n**3 / matmul_ms / 1e9, gbps=2 * src.numel() / copy_ms / 1e6)


# ----------------------------------------------------------------------------- correctness first
def check_correctness() -> list[str]:
    """Fused within 2x the reference's own error against float64 (+ a small floor); the other
    implementations, whose arithmetic differs more (SDPA kernels, Inductor fusions), within 4x."""
    failures = []
    cases = [(1, 197, 384, 28, 4), (3, 577, 768, 28, 8), (2, 196, 100, 5, 3)]
    for (batch, n, d, c, k), (name, dtype) in itertools.product(cases, DTYPES.items()):
        exact = make_inputs(batch, n, d, c, k, torch.float64, seed=batch)
        want = eager(*exact)
        args = [t.to(dtype) for t in exact]
        ref_err = (eager(*args).double() - want).abs().max().item()
        floor = 1e-5 if dtype == torch.float32 else 1e-3
        logits, attention = predilection_attention(*args, return_attention=True)
        _, exact_map = predilection_attention_reference(*exact, return_attention=True)
        _, ref_map = predilection_attention_reference(*args, return_attention=True)
        map_err = (attention.double() - exact_map).abs().max().item()
        map_ref = (ref_map.double() - exact_map).abs().max().item()
        if not map_err <= 2 * map_ref + floor / n:  # map entries are O(1/N)
            failures.append(f"fused map {name} {(batch, n, d, c, k)}: {map_err:.2e} vs reference {map_ref:.2e}")
        for impl_name, impl in IMPLS.items():
            err = (impl(*args).double() - want).abs().max().item()
            allowed = (2 if impl_name == "fused" else 4) * ref_err + floor
            if not (math.isfinite(err) and err <= allowed):
                failures.append(f"{impl_name} {name} {(batch, n, d, c, k)}: {err:.2e} vs reference {ref_err:.2e}")
    return failures


# ----------------------------------------------------------------------------- the sweep
def sweep(dtype: torch.dtype, ceilings: Ceilings, reps: int) -> list[str]:
    rows = []
    for batch, n, d, k in itertools.product(BATCHES, TOKENS, DIMS, SITES):
        args = make_inputs(batch, n, d, DISEASES, k, dtype)
        flops = flop_count(batch, n, d, DISEASES, k)
        nbytes = byte_count(batch, n, d, DISEASES, k, element_size=args[0].element_size())
        for impl_name, impl in IMPLS.items():
            ms = time_ms(lambda impl=impl, args=args: impl(*args), reps=reps)
            tflops, gbps = flops / ms / 1e9, nbytes / ms / 1e6
            rows.append(
                f"| {batch} | {n} | {d} | {k} | {impl_name} | {ms * 1e3:.1f} | {gbps:.0f} | "
                f"{100 * gbps / ceilings.gbps:.0f}% | {tflops:.2f} | {100 * tflops / ceilings.tflops:.1f}% |"
            )
    return rows


def write_table(rows: list[str], dtype_name: str, ceilings: Ceilings) -> Path:
    device = torch.cuda.get_device_name()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    path = RESULTS / f"predilection_attention_{dtype_name}_{device.replace(' ', '_')}_{stamp}.md"
    header = [
        f"# Predilection attention, {dtype_name}, C = {DISEASES}, on {device}",
        "",
        f"Measured ceilings: {ceilings.tflops:.0f} TFLOP/s (bf16 8192^3 matmul), "
        f"{ceilings.gbps:.0f} GB/s (1 GiB device-to-device copy, read + write).",
        "FLOPs and bytes are the fused kernel's useful work and compulsory traffic for every row "
        "(training.kernels.flop_count / byte_count); logits only.",
        "",
        "| B | N | D | K | impl | median us | GB/s | % copy | TFLOP/s | % matmul |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header + rows) + "\n")
    return path


def perf_report(dtype: torch.dtype) -> None:
    """The same comparison as a triton.testing.perf_report (TFLOP/s vs B at N=576, D=768, K=8)."""
    import triton.testing

    @triton.testing.perf_report(
        triton.testing.Benchmark(
            x_names=["batch"],
            x_vals=list(BATCHES),
            line_arg="impl",
            line_vals=list(IMPLS),
            line_names=list(IMPLS),
            ylabel="TFLOP/s",
            plot_name=f"predilection_attention_{str(dtype).removeprefix('torch.')}",
            args={"tokens": 576, "dim": 768, "sites": 8},
        )
    )
    def bench(batch: int, tokens: int, dim: int, sites: int, impl: str) -> tuple[float, float, float]:
        args = make_inputs(batch, tokens, dim, DISEASES, sites, dtype)
        ms, low, high = triton.testing.do_bench(lambda: IMPLS[impl](*args), quantiles=[0.5, 0.2, 0.8])
        flops = flop_count(batch, tokens, dim, DISEASES, sites)
        return flops / ms / 1e9, flops / high / 1e9, flops / low / 1e9

    bench.run(print_data=True, save_path=str(RESULTS))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--reps", type=int, default=200, help="timed runs per point (median reported)")
    p.add_argument("--check-only", action="store_true", help="run the correctness check and stop")
    p.add_argument("--perf-report", action="store_true", help="also run the triton.testing.perf_report variant")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "bench_predilection_attention needs a CUDA GPU: none is visible (torch.cuda.is_available() is False).",
            file=sys.stderr,
        )
        return 2
    failures = check_correctness()
    if failures:
        print("correctness check FAILED; not timing:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("correctness check passed (fp32, fp16, bf16; fused within 2x the reference's error vs float64)")
    if args.check_only:
        return 0
    ceilings = measure_ceilings()
    print(f"ceilings: {ceilings.tflops:.0f} TFLOP/s bf16 matmul, {ceilings.gbps:.0f} GB/s copy")
    path = write_table(sweep(DTYPES[args.dtype], ceilings, args.reps), args.dtype, ceilings)
    print(f"wrote {path}")
    if args.perf_report:
        perf_report(DTYPES[args.dtype])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
