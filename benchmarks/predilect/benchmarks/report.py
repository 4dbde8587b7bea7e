"""The benchmark report: markdown with small PNG plots, from the results dictionary of a run."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from predilect import contract
from predilect.benchmarks.decoders import FLOOR as _FLOOR
from predilect.benchmarks.decoders import FLOOR_PIL as _FLOOR_PIL
from predilect.benchmarks.decoders import SERVED as _SERVED

STACK_TRITON = "triton"
STACK_SPLIT, STACK_FUSED = "triton_split", "triton_fused"
STACK_INT8 = "triton_int8"
STACK_BASELINE = "fastapi_torch"
STACK_BENTO = "bentoml"
LABELS = {
    STACK_TRITON: "(c) Predilect Triton ensemble, default layout (gRPC)",
    STACK_SPLIT: "(c') Triton, split layout: preprocess -> classifier -> postprocess",
    STACK_FUSED: "(c') Triton, fused layout: one process",
    STACK_INT8: "(c'') Triton, default layout, INT8 classifier",
    STACK_BASELINE: "(b) FastAPI + PyTorch eager (HTTP)",
    STACK_BENTO: "(d) BentoML, same Preprocessor + ONNX model (HTTP)",
}
STEPS = (contract.FUSED_MODEL, contract.PREPROCESS_MODEL, contract.CLASSIFIER_MODEL, contract.POSTPROCESS_MODEL)


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
    latencies = [p[k] for points in results["sweeps"].values() for p in points for k in styles]
    if any(math.isfinite(v) and v > 0 for v in latencies):  # a point that completed no request has none
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
    for s, step in enumerate(_steps(points)):
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


def _steps(points: Sequence[Mapping[str, Any]]) -> list[str]:
    """The composing models that served requests in these points, in pipeline order."""
    seen = {t["model"] for p in points for t in p.get("triton_times", [])}
    return [step for step in STEPS if step in seen]


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


def _first(values: Sequence[float] | None) -> str:
    return f"{values[0]:.2f}" if values else "n/a"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "n/a"


def _point(results: Mapping[str, Any], stack: str, users: int) -> Mapping[str, Any] | None:
    return _at(results["sweeps"].get(stack, []), users)


def headline(results: Mapping[str, Any], users: int) -> list[str]:
    """The measured ratios at ``users``, each beside the target the CPU profile is held to."""
    triton = _point(results, STACK_TRITON, users)
    bound = results.get("inprocess")
    lines = [f"At {users} concurrent users, {results['payloads']['camera']['label']}:", ""]
    pre = results.get("preprocessing")
    if pre:
        lines.append(
            f"* preprocessing, one thread: **{pre['ms_per_image'][_SERVED]:.2f} ms/image** vs the decode floor "
            f"{min(pre['ms_per_image'][_FLOOR], pre['ms_per_image'][_FLOOR_PIL]):.2f} ms/image: "
            f"**{pre['served_over_floor']:.2f}x** (target <= 1.25x)"
        )
    if triton and bound:
        lines.append(
            f"* throughput (c)/(a): **{triton['requests_per_s'] / bound['images_per_s']:.0%}** of the in-process "
            f"bound ({triton['requests_per_s']:.1f} vs {bound['images_per_s']:.1f} images/s; target >= 90%)"
        )
        lines += _loadgen_share(results, triton, bound)
    for stack, target in ((STACK_BASELINE, " (target >= 2.5x)"), (STACK_BENTO, " (target > 1x, lower p99)")):
        other = _point(results, stack, users)
        if triton and other:
            lines.append(
                f"* (c) vs {LABELS[stack].split(' ')[0]}: throughput "
                f"**{_ratio(triton['requests_per_s'], other['requests_per_s'])}**"
                f" ({triton['requests_per_s']:.1f} vs {other['requests_per_s']:.1f} images/s){target}; "
                f"p99 **{triton['p99_ms']:.0f} vs {other['p99_ms']:.0f} ms**"
            )
    for stack in (STACK_SPLIT, STACK_FUSED, STACK_INT8):
        other = _point(results, stack, users)
        if triton and other:
            lines.append(
                f"* {LABELS[stack]}: {other['requests_per_s']:.1f} images/s, p99 {other['p99_ms']:.0f} ms "
                f"(default layout: {triton['requests_per_s']:.1f} images/s, p99 {triton['p99_ms']:.0f} ms)"
            )
    int8 = results.get("int8")
    if int8:
        gate, ms = int8["gate"], int8.get("inference_ms_per_image", {})
        verdict = "passed, served" if gate["passed"] else "refused, not served"
        lines.append(
            f"* INT8 accuracy gate ({gate['images']} held-out images): max |delta p| {gate['max_abs_dp']:.4f} "
            f"(tolerance {gate['tolerance_abs_dp']}), macro AUROC {gate['auroc_fp32']:.4f} -> {gate['auroc_int8']:.4f} "
            f"(tolerance -{gate['tolerance_auroc_drop']}): **{verdict}**"
        )
        if ms:
            lines.append(
                f"* ONNX Runtime alone, one thread: FP32 {ms['fp32']:.2f} vs INT8 {ms['int8']:.2f} ms/image "
                f"(**{_ratio(ms['fp32'], ms['int8'])}**)"
            )
    if not triton:
        lines.append(f"* no comparison: the sweep did not run (c) at {users} users")
    return lines


def _loadgen_share(results: Mapping[str, Any], triton: Mapping[str, Any], bound: Mapping[str, Any]) -> list[str]:
    """The CPU the same-machine load generator used at this point, and the bound scaled to what was left."""
    used = triton.get("loadgen_cpu_cores", float("nan"))
    cores = results["setup"].get("cores") or os.cpu_count() or 1
    if math.isnan(used) or used >= cores:  # NaN: an older result without the measurement
        return []
    left = (cores - used) / cores
    return [
        f"* load generator (Locust, same machine): **{used:.2f} of {cores} cores** at this point; (c) is "
        f"**{triton['requests_per_s'] / (bound['images_per_s'] * left):.0%}** of (a) scaled to the "
        f"{cores - used:.2f} cores left"
    ]


def _load(p: Mapping[str, Any]) -> str:
    before, after = p.get("load_before"), p.get("load_after")
    return f"{before[0]:.1f} / {after[0]:.1f}" if before and after else "n/a"


def _sweep_table(points: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| users | images/s | p50 ms | p90 ms | p99 ms | errors | requests | load generator cores "
        "| load avg before / after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        if "failed" in p:
            lines.append(f"| {p['users']} | no measurement: {p['failed']} | | | | | | | {_load(p)} |")
            continue
        lines.append(
            f"| {p['users']} | {p['requests_per_s']:.1f} | {p['p50_ms']:.0f} | {p['p90_ms']:.0f} | "
            f"{p['p99_ms']:.0f} | {p['error_rate']:.1%} | {p['requests']} | "
            f"{p.get('loadgen_cpu_cores', float('nan')):.2f} | {_load(p)} |"
        )
    return lines


def _breakdown_table(points: Sequence[Mapping[str, Any]]) -> list[str]:
    steps = _steps(points)
    head = "| users | " + " | ".join(f"{s} queue / compute ms (batch)" for s in steps) + " |"
    lines = [head, "|---:|" + "---:|" * len(steps)]
    for p in points:
        cells = []
        for step in steps:
            t = _step_times(p, step)
            cells.append(f"{t['queue_ms']:.1f} / {t['compute_ms']:.1f} ({t['mean_batch']:.1f})" if t else "n/a")
        lines.append(f"| {p['users']} | " + " | ".join(cells) + " |")
    return lines


def stage_table(bound: Mapping[str, Any] | None, points: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """The bound's per-stage costs beside the served ones (Triton's statistics extension), one row per model.

    ``points``: ``(label, point)`` with the point's ``triton_times``. The bound's row is one worker's time per
    image (decode, preprocess and grade, then inference and decision); a served step's ``per image`` is its
    compute-infer time per execution over its mean batch, the same per-image time on one instance, so the
    two columns compare; queue, compute input / output and the time in the server are per request, and
    the bound has none of them.
    """
    lines = [
        "| where | queue ms | compute input ms | compute infer ms | compute output ms | batch | per image ms "
        "| in the server ms/request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if bound:
        per_image = bound["preprocess_ms_per_image"] + bound["infer_ms_per_image"]
        lines.append(
            f"| (a) bound, one worker: preprocess + grade {bound['preprocess_ms_per_image']:.1f}, inference + "
            f"decision {bound['infer_ms_per_image']:.1f} | - | - | {per_image * bound['batch_size']:.1f} | - | "
            f"{bound['batch_size']} | {per_image:.1f} | - |"
        )
    for label, point in points:
        for t in point.get("triton_times", []):
            batch = t["mean_batch"]
            if t["model"] == contract.ENSEMBLE:  # its compute figures are its steps'; its own time is the request's
                lines.append(f"| {label}: {t['model']} (ensemble) | | | | | | | {t.get('request_ms', math.nan):.1f} |")
                continue
            per_image = t["compute_infer_ms"] / batch if batch else math.nan
            lines.append(
                f"| {label}: {t['model']} | {t['queue_ms']:.1f} | {t['compute_input_ms']:.2f} | "
                f"{t['compute_infer_ms']:.1f} | {t['compute_output_ms']:.2f} | {batch:.1f} | {per_image:.1f} | "
                f"{t.get('request_ms', math.nan):.1f} |"
            )
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
    camera = results["payloads"]["camera"]
    lines = [
        f"# Screening benchmark, {results['date']}",
        "",
        f"* machine: {machine['description']}",
        f"* load average (1 min) at start / end: {_first(machine.get('load_at_start'))} / "
        f"{_first(machine.get('load_at_end'))}; per point in the tables",
        f"* command: `{results['command']}`",
        f"* model: `{setup['model_version']}` ({setup['onnx']}), preprocessing decoder `{setup['decoder']}`",
        f"* payloads: {camera['label']}, mean {camera.get('mean_bytes', float('nan')) / 1000:.0f} kB; model input "
        f"tensor {setup.get('tensor_bytes_per_image', float('nan')) / 1000:.0f} kB per image (float32)",
        f"* Triton serving options: {setup['serving_options']}",
        f"* load: Locust {setup['locust_version']}, closed loop (no think time), {setup['seconds_per_point']} s "
        f"measured per point after spawning, on this same machine (its CPU per point is in the tables)",
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
    pre = results.get("preprocessing")
    if pre:
        lines += [
            f"## Preprocessing vs the decode floor (one thread, {pre['images']} payloads, mean "
            f"{pre['mean_payload_bytes'] / 1000:.0f} kB)",
            "",
            "| strategy | ms / image |",
            "|---|---:|",
            *[f"| {k} | {v:.2f} |" for k, v in pre["ms_per_image"].items()],
            "",
            f"Served / floor: **{pre['served_over_floor']:.2f}x**; served tensors equal the previous implementation's "
            f"bit for bit: {pre['served_equals_previous']}.",
            "",
        ]
    bound = results.get("inprocess")
    if bound:
        lines += [
            "## (a) In-process bound",
            "",
            f"The served computation (decode + preprocess + gradability + ONNX Runtime + referral decision) in "
            f"one process, {bound.get('workers', 1)} worker thread(s) "
            f"(one per core, so decode overlaps inference), batches of {bound['batch_size']}, no server: "
            f"**{bound['images_per_s']:.1f} images/s** (per image on one worker: preprocess and grade "
            f"{bound['preprocess_ms_per_image']:.1f} ms, inference and decision {bound['infer_ms_per_image']:.1f} ms).",
            "",
        ]
    for stack, points in results["sweeps"].items():
        lines += [f"## {LABELS[stack]}", "", *_sweep_table(points), ""]
    if results.get("int8"):
        lines += ["## INT8", "", "```", json.dumps(results["int8"], indent=2, sort_keys=True), "```", ""]
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
            "## Per-stage costs: the in-process bound beside the served steps",
            "",
            "Per image on one worker (the bound) or one instance (a served step: compute infer over its batch); "
            "per request: what the bound does not pay (queue, the copies in and out of the Python backend).",
            "",
            *stage_table(bound, [(f"{p['users']} users", p) for p in results["sweeps"][STACK_TRITON]]),
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
