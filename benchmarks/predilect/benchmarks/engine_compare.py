"""Plugin engine vs ``--no-plugin`` engine at the served shapes, and the unsplit kernel at the engine's shapes.

    python -m predilect.benchmarks.engine_compare --onnx artifacts/onnx/model.onnx \
        [--manifest artifacts/phantom/manifest.csv] [--precisions fp32,fp16] [--out benchmarks/results/engine]

What ``make gpu-check`` runs after the kernel benchmark, on a CUDA host with the serving TensorRT
series (``predilect.build.tensorrt.versions``) and the CUDA torch build. The kernel benchmark times
the public PyTorch op, which splits the token axis and autotunes per shape; the engine compiles the
unsplit kernel only, as AOT tactics that TensorRT times at the profile's opt batch and serializes
one of. So its speed is measured here on what is served:

1. for each precision (the ONNX a GPU repository stores for it, ``precision.served_onnx``), two
   engines with the serving profile (min 1, opt, max): the plugin form and the reference graph
   (``--no-plugin``), built by the same code as the container's (``engine.build_serialized`` on
   ``engine.network_onnx``);
2. accuracy: both against the FP32 export under ONNX Runtime on the gate images (``--manifest``'s
   held-out sample, else seeded random pixels), and against each other: max |dp|;
3. latency: each engine at B = 1, opt and max, median of CUDA-event-timed ``execute_async_v3``
   calls on one stream (device buffers from torch, so no copy is timed);
4. the unsplit kernel (``splits=1``, autotuned: the best any one tactic can do) and the split one
   and eager PyTorch at the engine's attention shapes (N, D, C, K read from the ONNX head) and
   the same batches, in the engine's precision, CUDA-graph replay.

Writes ``<out>/gpu-<date>-<gpu>.md`` with the command, the card, TensorRT/torch/CUDA versions and
the date. Exits 2 without a GPU or without TensorRT of the serving series.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from predilect.contract import LOGITS, PIXELS

RESULTS = Path("benchmarks") / "results" / "engine"
FLOAT_PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class HeadShapes:
    """The attention head an engine computes: N tokens of D features, C diseases with K sites each."""

    n_tokens: int
    dim: int
    diseases: int
    sites: int


def head_shapes(model: onnx.ModelProto) -> HeadShapes:
    """The head's shapes, read from the export (the tokens' inferred shape and the sites initializer)."""
    import onnx_graphsurgeon as gs

    from predilect.build.tensorrt.onnx_rewrite import find_attention

    match = find_attention(gs.import_onnx(onnx.shape_inference.infer_shapes(model)))
    diseases, sites, dim = (int(d) for d in match.sites.shape)
    n_tokens = match.tokens.shape[1] if match.tokens.shape is not None else None
    if not isinstance(n_tokens, int):
        raise ValueError(f"the tokens' token count is not static in the export: {match.tokens.shape}")
    return HeadShapes(n_tokens, dim, diseases, sites)


def profile_batches(opt_batch: int, max_batch: int) -> tuple[int, ...]:
    """The batches an engine is timed at: the profile's min (1), opt and max."""
    return tuple(sorted({1, opt_batch, max_batch}))


@dataclass(frozen=True)
class EngineRow:
    """One engine's measurements."""

    precision: str
    plugin: bool
    max_abs_dp: float  # against the FP32 export under ONNX Runtime
    median_ms: dict[int, float]  # per batch


def _median_ms(run: Any, stream: Any, *, warmup: int = 20, reps: int = 200) -> float:
    import torch

    for _ in range(warmup):
        run()
    stream.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends, strict=True):
        start.record(stream)
        run()
        end.record(stream)
    stream.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))


class EngineRunner:
    """One deserialized plan with device buffers for its largest batch (torch tensors on the GPU)."""

    def __init__(self, plan: bytes, *, max_batch: int, item_shape: tuple[int, ...], classes: int) -> None:
        import torch

        from predilect.build.tensorrt.plugin import import_tensorrt

        trt = import_tensorrt()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise RuntimeError("TensorRT could not deserialise the engine")
        self._context = self._engine.create_execution_context()
        self._pixels = torch.zeros((max_batch, *item_shape), device="cuda", dtype=torch.float32)
        self._logits = torch.zeros((max_batch, classes), device="cuda", dtype=torch.float32)
        self.stream = torch.cuda.Stream()

    def _bind(self, batch: int) -> None:
        self._context.set_input_shape(PIXELS, (batch, *self._pixels.shape[1:]))
        self._context.set_tensor_address(PIXELS, self._pixels.data_ptr())
        self._context.set_tensor_address(LOGITS, self._logits.data_ptr())

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(pixels), len(self._pixels)):
            chunk = torch.from_numpy(np.ascontiguousarray(pixels[i : i + len(self._pixels)], np.float32))
            self._pixels[: len(chunk)].copy_(chunk)
            self._bind(len(chunk))
            self._execute()
            self.stream.synchronize()
            out.append(self._logits[: len(chunk)].cpu().numpy().copy())
        return np.concatenate(out)

    def median_ms(self, batch: int) -> float:
        self._bind(batch)
        return _median_ms(self._execute, self.stream)


def measure_engines(
    onnx_path: Path, pixels: np.ndarray, precisions: Sequence[str], *, opt_batch: int, max_batch: int
) -> list[EngineRow]:
    """Build both engines per precision, gate each against the FP32 export, time each at the profile's batches."""
    from predilect.build.tensorrt.accuracy import reference_probabilities, sigmoid
    from predilect.build.tensorrt.engine import EngineCfg, build_serialized, network_onnx
    from predilect.build.tensorrt.precision import served_onnx

    reference = reference_probabilities(onnx_path, pixels)
    model = onnx.load(str(onnx_path))
    item = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    classes = reference.shape[1]
    rows = []
    for precision in precisions:
        stored = served_onnx(model, precision)
        for use_plugin in (True, False):
            cfg = EngineCfg(min_batch=1, opt_batch=opt_batch, max_batch=max_batch, use_plugin=use_plugin)
            plan = build_serialized(network_onnx(stored, cfg), cfg)
            runner = EngineRunner(plan, max_batch=max_batch, item_shape=item, classes=classes)
            dp = float(np.abs(sigmoid(runner.logits(pixels)) - reference).max())
            times = {b: runner.median_ms(b) for b in profile_batches(opt_batch, max_batch)}
            rows.append(EngineRow(precision, use_plugin, dp, times))
    return rows


def kernel_rows(onnx_path: Path, precisions: Sequence[str], batches: Sequence[int]) -> list[str]:
    """Markdown rows: the unsplit kernel, the split one and eager at the engine's head shapes, graph replay."""
    import torch

    from predilect.benchmarks.kernels.bench_predilection_attention import (
        DTYPES,
        eager,
        fused,
        fused_unsplit,
        make_inputs,
        time_graph_ms,
    )

    shapes = head_shapes(onnx.load(str(onnx_path)))
    rows = []
    for precision in precisions:
        for batch in batches:
            args = make_inputs(batch, shapes.n_tokens, shapes.dim, shapes.diseases, shapes.sites, DTYPES[precision])
            impls: dict[str, Callable[..., Any]] = {"unsplit": fused_unsplit, "split": fused, "eager": eager}
            timed = {name: time_graph_ms(functools.partial(impl, *args)) for name, impl in impls.items()}
            torch.cuda.synchronize()
            rows.append(
                f"| {precision} | {batch} | {shapes.n_tokens} x {shapes.dim}, C={shapes.diseases}, K={shapes.sites} | "
                f"{timed['unsplit'] * 1e3:.1f} | {timed['split'] * 1e3:.1f} | {timed['eager'] * 1e3:.1f} | "
                f"{timed['eager'] / timed['unsplit']:.2f}x |"
            )
    return rows


def render_report(
    *,
    command: str,
    device: str,
    versions: str,
    when: datetime,
    gate_source: str,
    engines: Sequence[EngineRow],
    kernels: Sequence[str],
) -> str:
    """The results file's text: what ran, where and when, then the two tables."""
    batches = sorted({b for row in engines for b in row.median_ms})
    head = " | ".join(f"B={b} ms" for b in batches)
    lines = [
        f"# Plugin engine vs --no-plugin engine, and the unsplit kernel, on {device}",
        "",
        f"Measured {when:%Y-%m-%d %H:%M} UTC with `{command}` ({versions}).",
        f"Accuracy: max |dp| against the FP32 export under ONNX Runtime on {gate_source}.",
        "Latency: median of 200 CUDA-event-timed execute_async_v3 calls per batch (device buffers, no copies).",
        "",
        f"| precision | engine | max abs dp | {head} | plugin speed-up |",
        "|---|---|---|" + "---|" * len(batches) + "---|",
    ]
    for row in engines:
        pair = next((r for r in engines if r.precision == row.precision and r.plugin != row.plugin), None)
        speedup = ""
        if row.plugin and pair is not None:
            speedup = ", ".join(f"B={b}: {pair.median_ms[b] / row.median_ms[b]:.2f}x" for b in batches)
        cells = " | ".join(f"{row.median_ms[b]:.3f}" for b in batches)
        kind = "plugin" if row.plugin else "--no-plugin"
        lines.append(f"| {row.precision} | {kind} | {row.max_abs_dp:.2e} | {cells} | {speedup} |")
    lines += [
        "",
        "The attention kernel alone at the engine's shapes (CUDA-graph replay, median us): `unsplit` is what the",
        "engine compiles (autotuned here, so at least as fast as the one tactic TensorRT keeps), `split` the",
        "PyTorch op's token split, `eager` the PyTorch reference.",
        "",
        "| precision | B | N x D, C, K | unsplit us | split us | eager us | eager / unsplit |",
        "|---|---|---|---|---|---|---|",
        *kernels,
        "",
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    prog = "python -m predilect.benchmarks.engine_compare"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--onnx", type=Path, required=True, help="the exported FP32 model (the served one)")
    p.add_argument("--manifest", type=Path, help="labelled images: the gate's held-out sample (else random pixels)")
    p.add_argument("--gate-images", type=int, default=64)
    p.add_argument("--precisions", default="fp32,fp16", help=f"comma-separated, of {FLOAT_PRECISIONS}")
    p.add_argument("--opt-batch", type=int, default=16, help="the profile's opt (the served preferred batch)")
    p.add_argument("--max-batch", type=int, default=16, help="the profile's max (the served max_batch_size)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    precisions = tuple(p for p in args.precisions.split(",") if p)
    if not set(precisions) <= set(FLOAT_PRECISIONS):
        print(f"--precisions must be of {FLOAT_PRECISIONS}", file=sys.stderr)
        return 2
    import torch

    from predilect.build.tensorrt.plugin import TensorRTUnavailableError, import_tensorrt
    from predilect.build.tensorrt.versions import TensorRTVersionError, check_served_tensorrt

    if not torch.cuda.is_available():
        print("engine_compare needs a CUDA GPU and the CUDA torch build", file=sys.stderr)
        return 2
    try:
        trt = import_tensorrt()
        check_served_tensorrt(trt.__version__)
    except (TensorRTUnavailableError, TensorRTVersionError) as e:
        print(f"engine_compare: {e}", file=sys.stderr)
        return 2
    if args.manifest is not None:
        from predilect.build.tensorrt.gate_set import manifest_gate_set

        pixels, _ = manifest_gate_set(args.manifest, args.onnx, split="test", limit=args.gate_images)
        source = f"{len(pixels)} held-out images of {args.manifest}"
    else:
        model = onnx.load(str(args.onnx))
        item = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
        pixels = np.random.default_rng(0).standard_normal((args.gate_images, *item)).astype(np.float32)
        source = f"{len(pixels)} seeded random inputs (no manifest)"
    engines = measure_engines(args.onnx, pixels, precisions, opt_batch=args.opt_batch, max_batch=args.max_batch)
    kernels = kernel_rows(args.onnx, precisions, profile_batches(args.opt_batch, args.max_batch))
    device = torch.cuda.get_device_name()
    when = datetime.now(timezone.utc)
    command = "python -m predilect.benchmarks.engine_compare " + " ".join(sys.argv[1:] if argv is None else argv)
    versions = f"TensorRT {trt.__version__}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    text = render_report(
        command=command,
        device=device,
        versions=versions,
        when=when,
        gate_source=source,
        engines=engines,
        kernels=kernels,
    )
    slug = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu-{when:%Y-%m-%d}-{slug}.md"
    path.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
