"""The benchmark report: markdown with small PNG plots, from the results dictionary of a run."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from predilect import contract

STACK_TRITON = "triton"
STACK_BASELINE = "fastapi_torch"
LABELS = {STACK_TRITON: "(c) Predilect Triton ensemble (gRPC)", STACK_BASELINE: "(b) FastAPI + PyTorch eager (HTTP)"}
STEPS = (contract.PREPROCESS_MODEL, contract.CLASSIFIER_MODEL, contract.POSTPROCESS_MODEL)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    _plt().close(fig)
    return path.name


def plot_throughput(results: Mapping[str, Any], path: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for stack, points in results["sweeps"].items():
        ax.plot([p["users"] for p in points], [p["requests_per_s"] for p in points], marker="o", label=LABELS[stack])
    bound = results.get("inprocess")
    if bound:
        ax.axhline(bound["images_per_s"], color="grey", linestyle="--", label="(a) in-process bound")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent users (closed loop)")
    ax.set_ylabel("images/s")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_latency(results: Mapping[str, Any], path: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    styles = {"p50_ms": ":", "p90_ms": "--", "p99_ms": "-"}
    for i, (stack, points) in enumerate(results["sweeps"].items()):
        for key, style in styles.items():
            ax.plot(
                [p["users"] for p in points],
                [p[key] for p in points],
                linestyle=style,
                marker=".",
                color=f"C{i}",
                label=f"{LABELS[stack].split(' ')[0]} {key[:3]}",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("latency, ms")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_breakdown(results: Mapping[str, Any], path: Path) -> str:
    """Stacked bars per concurrency: Triton's queue and compute time per request, per step."""
    plt = _plt()
    points = results["sweeps"].get(STACK_TRITON, [])
    fig, ax = plt.subplots(figsize=(6, 3.4))
    x = list(range(len(points)))
    bottom = [0.0] * len(points)
    for s, step in enumerate(STEPS):
        for phase, hatch in (("queue_ms", "//"), ("compute_ms", "")):
            values = [_step_times(p, step).get(phase, 0.0) for p in points]
            ax.bar(
                x,
                values,
                bottom=bottom,
                color=f"C{s}",
                hatch=hatch,
                alpha=0.6 if hatch else 0.9,
                label=f"{step} {phase[:-3]}",
            )
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(x, [str(p["users"]) for p in points])
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("ms per request (Triton statistics)")
    ax.legend(fontsize=6, ncol=3)
    return _save(fig, path)


def _step_times(point: Mapping[str, Any], step: str) -> dict[str, float]:
    for t in point.get("triton_times", []):
        if t["model"] == step:
            return {
                "queue_ms": t["queue_ms"],
                "compute_ms": t["compute_input_ms"] + t["compute_infer_ms"] + t["compute_output_ms"],
                "mean_batch": t["mean_batch"],
            }
    return {}


def _at(points: Sequence[Mapping[str, Any]], users: int) -> Mapping[str, Any] | None:
    return next((p for p in points if p["users"] == users), None)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "n/a"


def headline(results: Mapping[str, Any], users: int) -> list[str]:
    """The ratios at ``users``: what the Done-when criteria read."""
    triton = _at(results["sweeps"].get(STACK_TRITON, []), users)
    base = _at(results["sweeps"].get(STACK_BASELINE, []), users)
    bound = results.get("inprocess")
    lines = [f"At {users} concurrent users, {results['payloads']['camera']['label']}:", ""]
    if triton and base:
        lines.append(
            f"* throughput (c)/(b): **{_ratio(triton['requests_per_s'], base['requests_per_s'])}** "
            f"({triton['requests_per_s']:.1f} vs {base['requests_per_s']:.1f} images/s)"
        )
        lines.append(
            f"* p99 latency (c) vs (b): **{triton['p99_ms']:.0f} ms vs {base['p99_ms']:.0f} ms** "
            f"({_ratio(base['p99_ms'], triton['p99_ms'])} lower)"
        )
    if triton and bound:
        lines.append(
            f"* throughput (c)/(a): **{triton['requests_per_s'] / bound['images_per_s']:.0%}** of the "
            f"in-process bound ({bound['images_per_s']:.1f} images/s)"
        )
        lines += _loadgen_share(triton, bound)
    if not (triton and (base or bound)):
        lines.append(f"* no comparison: the sweep did not run both stacks at {users} users")
    return lines


def _loadgen_share(triton: Mapping[str, Any], bound: Mapping[str, Any]) -> list[str]:
    """How much of the machine the load generator took from the server, and the ratio without it."""
    used = triton.get("loadgen_cpu_cores", float("nan"))
    cores = os.cpu_count() or 1
    if math.isnan(used) or used >= cores:  # NaN: an older result without the measurement
        return []
    left = (cores - used) / cores
    return [
        f"* the load generator (Locust, {triton['users']} users, on this same machine) burnt **{used:.2f} of "
        f"{cores} cores** at this point; the bound (a) ran with no load generator. Scaled to the "
        f"{cores - used:.2f} cores left to the server, (c) reaches "
        f"**{triton['requests_per_s'] / (bound['images_per_s'] * left):.0%}** "
        "of (a). The rest of the gap is what a server pays and (a) does not: the gRPC transfer of each ~0.5 MB "
        "JPEG and the shared-memory copies between the three Python-backend stub processes (the 600 KB float "
        "tensor crosses preprocess -> classifier). What would close it: load from other machines (as clients "
        "are in production), and fusing preprocess and classifier into one Python-backend step on the CPU "
        "profile so the tensor never leaves the process."
    ]


def _sweep_table(points: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| users | images/s | p50 ms | p90 ms | p99 ms | errors | requests |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p['users']} | {p['requests_per_s']:.1f} | {p['p50_ms']:.0f} | {p['p90_ms']:.0f} | "
            f"{p['p99_ms']:.0f} | {p['error_rate']:.1%} | {p['requests']} |"
        )
    return lines


def _breakdown_table(points: Sequence[Mapping[str, Any]]) -> list[str]:
    head = "| users | " + " | ".join(f"{s} queue / compute ms (batch)" for s in STEPS) + " |"
    lines = [head, "|---:|" + "---:|" * len(STEPS)]
    for p in points:
        cells = []
        for step in STEPS:
            t = _step_times(p, step)
            cells.append(f"{t['queue_ms']:.1f} / {t['compute_ms']:.1f} ({t['mean_batch']:.1f})" if t else "n/a")
        lines.append(f"| {p['users']} | " + " | ".join(cells) + " |")
    return lines


def write_report(results: Mapping[str, Any], out_dir: Path, name: str) -> Path:
    """Write ``<name>.md`` and its PNGs into ``out_dir``; returns the markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "throughput": plot_throughput(results, out_dir / f"{name}-throughput.png"),
        "latency": plot_latency(results, out_dir / f"{name}-latency.png"),
    }
    if results["sweeps"].get(STACK_TRITON):
        plots["breakdown"] = plot_breakdown(results, out_dir / f"{name}-breakdown.png")
    machine, setup = results["machine"], results["setup"]
    lines = [
        f"# Screening benchmark, {results['date']}",
        "",
        f"* machine: {machine['description']}",
        f"* command: `{results['command']}`",
        f"* model: `{setup['model_version']}` ({setup['onnx']}), preprocessing decoder `{setup['decoder']}`",
        f"* Triton serving options: {setup['serving_options']}",
        f"* load: Locust {setup['locust_version']}, closed loop (no think time), {setup['seconds_per_point']} s "
        f"measured per point after spawning; the load generator shares the machine with the server",
        "",
        "## Headline (ratios)",
        "",
        *headline(results, setup["headline_users"]),
        "",
        f"![throughput]({plots['throughput']})",
        "",
        f"![latency]({plots['latency']})",
        "",
    ]
    bound = results.get("inprocess")
    if bound:
        lines += [
            "## (a) In-process bound",
            "",
            f"Decode + preprocess + ONNX Runtime in one process, {bound.get('workers', 1)} worker thread(s) "
            f"(one per core, so decode overlaps inference), batches of {bound['batch_size']}, no server: "
            f"**{bound['images_per_s']:.1f} images/s** (per image on one worker: preprocess "
            f"{bound['preprocess_ms_per_image']:.1f} ms, inference {bound['infer_ms_per_image']:.1f} ms).",
            "",
        ]
    for stack, points in results["sweeps"].items():
        lines += [f"## {LABELS[stack]}", "", *_sweep_table(points), ""]
    if results["sweeps"].get(STACK_TRITON):
        lines += [
            "## Where the time goes (Triton statistics per ensemble step)",
            "",
            "Mean per request over each point: queue = waiting for the dynamic batcher / a free instance; "
            "compute = input + infer + output; batch = requests per execution.",
            "",
            *_breakdown_table(results["sweeps"][STACK_TRITON]),
            "",
            f"![breakdown]({plots['breakdown']})",
            "",
        ]
    if results.get("mix"):
        lines += [
            f"## Mixed camera sizes ({results['payloads']['mix']['label']})",
            "",
            "| stack | users | images/s | p50 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for stack, p in results["mix"].items():
            lines.append(
                f"| {LABELS[stack]} | {p['users']} | {p['requests_per_s']:.1f} | {p['p50_ms']:.0f} | "
                f"{p['p99_ms']:.0f} | {p['error_rate']:.1%} |"
            )
        lines.append("")
    if results.get("accuracy"):
        lines += [
            "## Same answers? (held-out macro AUROC of each stack's responses during warm-up)",
            "",
            *[f"* {LABELS.get(k, k)}: {v:.4f}" for k, v in results["accuracy"].items()],
            "",
        ]
    if results.get("notes"):
        lines += ["## Notes", "", *[f"* {n}" for n in results["notes"]], ""]
    path = out_dir / f"{name}.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
