"""Fused predilection attention vs eager reference vs SDPA composition vs torch.compile(reference).

    python -m predilect.benchmarks.kernels.bench_predilection_attention [--check-only] [--perf-report] [--out DIR]

Needs a CUDA GPU (exits with status 2 otherwise). Order of work: correctness of every
implementation against a float64 reference (fp32, fp16, bf16; exits 1 on failure), then the
device ceilings (a large bf16 matmul for TFLOP/s, a large device-to-device copy for GB/s), then
the sweep over the served shapes: B in 1..64 (the served dynamic batches), C = the catalog
size, K = 4 (served) and 8, (N, D) of the served backbone (196 tokens x 128) and of ViT-S/16
and ViT-B/16@384. Each point is timed two ways: ``launch`` (one call per timing, Python
dispatch included) and ``graph`` (the same call captured in a CUDA graph and replayed, which is
how a server amortises dispatch); median over many CUDA-event-timed runs; achieved GB/s and
TFLOP/s (``predilect.kernels._spec.byte_count`` / ``flop_count``: the same compulsory traffic and
useful FLOPs for every implementation) and their share of the ceilings. ``fused_unsplit`` is
the kernel without the token-axis split, to show what the split buys at small batches.
Writes ``<out>/gpu-<date>-<gpu>.md`` (default ``benchmarks/results`` under the working
directory, never inside an installed package).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from predilect.catalog import DEFAULT_CATALOG
from predilect.kernels import byte_count, flop_count, predilection_attention, predilection_attention_reference

RESULTS = Path("benchmarks") / "results"
BATCHES = (1, 2, 4, 8, 16, 64)
SHAPES = ((196, 128), (196, 384), (576, 768))  # (N, D): the served uopsl-tiny at 224 px, ViT-S/16, ViT-B/16@384
DISEASES = len(DEFAULT_CATALOG)
SITES = (4, 8)
# (N, D, K) in the order swept: the served shape first, then the largest, so that a run stopped
# part-way has timed the points that matter most.
POINTS = sorted(
    itertools.product(SHAPES, SITES),
    key=lambda p: (p != ((196, 128), 4), p != ((576, 768), 8), p),
)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

Impl = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------- implementations
def fused(tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return predilection_attention(tokens, sites, weight, bias)[0]


def fused_unsplit(tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    from predilect.kernels import _triton_predilection

    logits = tokens.new_empty((tokens.shape[0], sites.shape[0]))
    _triton_predilection.launch(tokens, sites, weight, bias, logits, splits=1)
    return logits


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


IMPLS: dict[str, Impl] = {
    "fused": fused,
    "fused_unsplit": fused_unsplit,
    "eager": eager,
    "sdpa": sdpa,
    "compiled": compiled,
}


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


def time_graph_ms(fn: Callable[[], object], *, reps: int = 100) -> float:
    """Median replay time of ``fn`` captured in a CUDA graph (static inputs, as a server's captured batch)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (autotuning, compilation) outside the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_ms(graph.replay, reps=reps)


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
def check_correctness(impls: Sequence[str] = tuple(IMPLS), dtypes: Sequence[str] = tuple(DTYPES)) -> list[str]:
    """Fused within 2x the reference's own error against float64 (+ a small floor); the other
    implementations, whose arithmetic differs more (SDPA kernels, Inductor fusions), within 4x."""
    failures = []
    cases = [(1, 197, 384, 28, 4), (3, 577, 768, 28, 8), (2, 196, 100, 5, 3)]
    for (batch, n, d, c, k), name in itertools.product(cases, dtypes):
        dtype = DTYPES[name]
        exact = make_inputs(batch, n, d, c, k, torch.float64, seed=batch)
        want = eager(*exact)
        args = [t.to(dtype) for t in exact]
        ref_err = (eager(*args).double() - want).abs().max().item()
        floor = 1e-5 if dtype == torch.float32 else 1e-3
        logits, attention = predilection_attention(*args, return_attention=True)
        _, exact_map = predilection_attention_reference(*exact, return_attention=True)
        _, ref_map = predilection_attention_reference(*args, return_attention=True)
        assert attention is not None and exact_map is not None and ref_map is not None  # return_attention=True
        map_err = (attention.double() - exact_map).abs().max().item()
        map_ref = (ref_map.double() - exact_map).abs().max().item()
        if not map_err <= 2 * map_ref + floor / n:  # map entries are O(1/N)
            failures.append(f"fused map {name} {(batch, n, d, c, k)}: {map_err:.2e} vs reference {map_ref:.2e}")
        for impl_name in impls:
            impl = IMPLS[impl_name]
            err = (impl(*args).double() - want).abs().max().item()
            allowed = (2 if impl_name == "fused" else 4) * ref_err + floor
            if not (math.isfinite(err) and err <= allowed):
                failures.append(f"{impl_name} {name} {(batch, n, d, c, k)}: {err:.2e} vs reference {ref_err:.2e}")
    return failures


# ----------------------------------------------------------------------------- the sweep
def sweep(dtype: torch.dtype, ceilings: Ceilings, reps: int, impls: Sequence[str]) -> Iterator[str]:
    """One table row per (shape, implementation, mode), yielded as soon as it is measured."""
    for ((n, d), k), batch in itertools.product(POINTS, BATCHES):
        args = make_inputs(batch, n, d, DISEASES, k, dtype)
        flops = flop_count(batch, n, d, DISEASES, k)
        nbytes = byte_count(batch, n, d, DISEASES, k, element_size=args[0].element_size())
        for impl_name in impls:
            call = lambda impl=IMPLS[impl_name], args=args: impl(*args)  # noqa: E731
            for mode, ms in (("launch", time_ms(call, reps=reps)), ("graph", time_graph_ms(call, reps=reps))):
                tflops, gbps = flops / ms / 1e9, nbytes / ms / 1e6
                yield (
                    f"| {batch} | {n} | {d} | {k} | {impl_name} | {mode} | {ms * 1e3:.1f} | {gbps:.0f} | "
                    f"{100 * gbps / ceilings.gbps:.0f}% | {tflops:.2f} | {100 * tflops / ceilings.tflops:.1f}% |"
                )


def write_table(rows: Iterable[str], dtype_name: str, ceilings: Ceilings, out: Path, command: str) -> Path:
    """Append one dtype's section to ``out/gpu-<date>-<card>.md``, each row as it is measured (a run
    stopped part-way leaves the rows it measured and no completion line)."""
    device = torch.cuda.get_device_name()
    now = datetime.now(timezone.utc)
    slug = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
    path = out / f"gpu-{now:%Y-%m-%d}-{slug}.md"
    header = [
        f"# Predilection attention, {dtype_name}, C = {DISEASES}, on {device}",
        "",
        f"Measured {now:%Y-%m-%d %H:%M} UTC with `{command}` (torch {torch.__version__}, CUDA {torch.version.cuda}).",
        "`launch`: one Python call per timing; `graph`: the call captured in a CUDA graph and replayed.",
        "",
        f"Measured ceilings: {ceilings.tflops:.0f} TFLOP/s (bf16 8192^3 matmul), "
        f"{ceilings.gbps:.0f} GB/s (1 GiB device-to-device copy, read + write).",
        "FLOPs and bytes are the fused kernel's useful work and compulsory traffic for every row "
        "(predilect.kernels._spec.flop_count / byte_count); logits only.",
        "",
        "| B | N | D | K | impl | mode | median us | GB/s | % copy | TFLOP/s | % matmul |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("a", encoding="utf-8") as f:  # one file per card and day: dtypes append
        f.write("\n".join(header) + "\n")
        for row in rows:
            f.write(row + "\n")
            f.flush()
            print(row, flush=True)
            count += 1
        f.write(f"\nSweep complete: {count} rows.\n\n")
    return path


def perf_report(dtype: torch.dtype, out: Path) -> None:
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

    bench.run(print_data=True, save_path=str(out))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--reps", type=int, default=200, help="timed runs per point (median reported)")
    p.add_argument("--check-only", action="store_true", help="run the correctness check and stop")
    p.add_argument("--perf-report", action="store_true", help="also run the triton.testing.perf_report variant")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: ./benchmarks/results)")
    p.add_argument(
        "--impls",
        type=_impl_list,
        default=tuple(IMPLS),
        help=f"comma-separated implementations to check and time (default: all of {','.join(IMPLS)})",
    )
    return p


def _impl_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in IMPLS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown implementation(s) {unknown}; choose from {','.join(IMPLS)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "bench_predilection_attention needs a CUDA GPU: none is visible (torch.cuda.is_available() is False).",
            file=sys.stderr,
        )
        return 2
    # The swept dtype only (autotuning each new shape costs seconds); tests/test_kernel_gpu.py checks all three.
    failures = check_correctness(args.impls, (args.dtype,) if not args.check_only else tuple(DTYPES))
    if failures:
        print("correctness check FAILED; not timing:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("correctness check passed (fused within 2x the reference's error vs float64)")
    if args.check_only:
        return 0
    ceilings = measure_ceilings()
    print(f"ceilings: {ceilings.tflops:.0f} TFLOP/s bf16 matmul, {ceilings.gbps:.0f} GB/s copy")
    command = "python -m predilect.benchmarks.kernels.bench_predilection_attention " + " ".join(argv or sys.argv[1:])
    rows = sweep(DTYPES[args.dtype], ceilings, args.reps, args.impls)
    path = write_table(rows, args.dtype, ceilings, args.out, command.strip())
    print(f"wrote {path}")
    if args.perf_report:
        perf_report(DTYPES[args.dtype], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
