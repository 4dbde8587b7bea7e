"""`predilect bench heatmaps`: what heatmaps cost, and what a request that does not ask for them costs.

One run on this machine, the same images and concurrency for every configuration, rounds
interleaved so that drift in the machine's load hits each alike:

(A) a repository whose model exports no ATTENTION (no HEATMAPS output at all), requests as usual;
(B) the repository with HEATMAPS, requests that do not ask for them (the default);
(C) the same repository, requests that ask for them.

B / A is the claim "off by default, throughput unchanged"; C / B is the price of asking. On a
shared machine the rounds vary more than that, so the work HEATMAPS adds is also timed in process,
where it can be resolved: the classifier with and without the ATTENTION output and the decision
with and without the maps, and gradability (``predilect.quality``) beside preprocessing -- CPU time
of the measuring thread (everything runs in it), best of interleaved passes, so other processes
on the machine barely move it. Writes
``<out-dir>/heatmaps-<date>-<machine>.md`` and ``.json``; prints only what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predilect import contract
from predilect.artifacts import default_artifacts
from predilect.benchmarks import machine
from predilect.cli import CommandError, command

ARTIFACTS = default_artifacts()
CONFIGS = (
    ("A", "no ATTENTION in the model; plain requests", False, False),
    ("B", "HEATMAPS served; requests not asking (default)", True, False),
    ("C", "HEATMAPS served; requests asking", True, True),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect bench heatmaps", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--onnx", type=Path, default=ARTIFACTS.onnx, help="exported model with its ATTENTION output")
    p.add_argument("--manifest", type=Path, default=ARTIFACTS.manifest, help="images: the manifest's test split")
    p.add_argument("--images", type=int, default=48, help="distinct images; each round screens them --repeat times")
    p.add_argument("--repeat", type=int, default=2, help="passes over the images per round and configuration")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (A, B, C, A, B, C, ...)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--layout", default="fused", choices=("fused", "split"), help="CPU layout of both repositories")
    machine.add_report_folder(p)
    return p


def _without_attention(onnx_path: Path, out: Path) -> Path:
    """The same model with the ATTENTION graph output removed (it stays an intermediate of LOGITS)."""
    import onnx

    model = onnx.load(str(onnx_path))
    kept = [o for o in model.graph.output if o.name != contract.ATTENTION]
    if len(kept) == len(model.graph.output):
        raise CommandError(f"{onnx_path} has no {contract.ATTENTION} output; export it with `predilect export`")
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, str(out))
    return out


def _throughput(url: str, payloads: list[bytes], *, repeat: int, concurrency: int, heatmaps: bool) -> float:
    from predilect.client import ScreeningClient

    with ScreeningClient(url, timeout_s=300) as client:
        items = list(client.screen_many(payloads[:concurrency], max_in_flight=concurrency, heatmaps=heatmaps))
        start = time.perf_counter()
        items = list(client.screen_many(payloads * repeat, max_in_flight=concurrency, heatmaps=heatmaps))
        seconds = time.perf_counter() - start
    failed = [i for i in items if not i.ok]
    if failed:
        raise CommandError(f"{len(failed)} requests failed, e.g. {failed[0].error}")
    if heatmaps != any(i.result is not None and i.result.heatmaps is not None for i in items):
        raise CommandError("the heatmaps answered do not match what was asked")
    return len(items) / seconds


def _in_process(payloads: list[bytes], preprocess: Any) -> dict[str, float]:
    from predilect import quality
    from predilect.preprocess import Preprocessor

    preprocessor = Preprocessor(preprocess, max_batch_size=16, num_threads=1)
    cfg = quality.default_quality_cfg()
    pre, grade = [], []
    for _ in range(5):
        for start in range(0, len(payloads), 16):
            chunk = payloads[start : start + 16]
            t0 = time.thread_time()
            done = preprocessor.run(chunk, quality=True)
            t1 = time.thread_time()
            planes = done.quality_planes
            if planes is None:  # the model input is the quality square
                planes = quality.planes_from_pixels(done.pixels, preprocess.mean, preprocess.std)
            quality.assess_planes(planes, cfg, fov_threshold=preprocess.fov_threshold)
            t2 = time.thread_time()
            pre.append((t1 - t0) / len(chunk))
            grade.append((t2 - t1) / len(chunk))
    return {"preprocess_ms_per_image": 1e3 * min(pre), "quality_ms_per_image": 1e3 * min(grade)}


def _component_costs(payloads: list[bytes], models: dict[str, Path], preprocess: Any, rules: Any) -> dict[str, float]:
    """CPU ms/image of the work HEATMAPS adds to a request, in the served code: the classifier (ONNX
    Runtime, one thread) without and with the ATTENTION output, and the decision step without and
    with attention maps; best of 30 interleaved passes over batches of 8."""
    from predilect.preprocess import Preprocessor
    from predilect.serving.backends.classifier import OnnxClassifier
    from predilect.serving.backends.screening import Screening

    done = Preprocessor(preprocess, max_batch_size=8, num_threads=1).run(payloads[:8], quality=True)
    pixels = done.pixels
    classifiers = {key: OnnxClassifier(path, intra_op_threads=1) for key, path in models.items()}
    screening = Screening(rules, preprocess)
    quality = screening.quality(pixels, done.quality_planes, boxes=done.boxes, frames=done.frames).quality
    outputs = classifiers["with_attention"].run_all(pixels)
    work = {
        "classifier_without_attention": lambda: classifiers["without"].run_all(pixels),
        "classifier_with_attention": lambda: classifiers["with_attention"].run_all(pixels),
        "decide_without_heatmaps": lambda: screening.decide(outputs[contract.LOGITS], quality),
        "decide_with_heatmaps": lambda: screening.decide(
            outputs[contract.LOGITS], quality, outputs[contract.ATTENTION]
        ),
    }
    best = {key: float("inf") for key in work}
    for _ in range(30):
        for key, run in work.items():
            start = time.thread_time()
            run()
            best[key] = min(best[key], (time.thread_time() - start) / len(pixels))
    return {key: 1e3 * value for key, value in best.items()}


@command("bench heatmaps")
def main(argv: Sequence[str] | None = None) -> int:
    from predilect.build.export import read_onnx_meta
    from predilect.manifest import read_manifest
    from predilect.serving.configs import ServingOptions
    from predilect.serving.repository import assemble
    from predilect.serving.server import TritonServer

    args = _parser().parse_args(argv)
    catalog, preprocess, name, version = read_onnx_meta(args.onnx)
    records = read_manifest(args.manifest, catalog=catalog, split="test")[: args.images]
    if not records:
        raise CommandError(f"{args.manifest} has no test images")
    payloads = [r.path.read_bytes() for r in records]
    options = ServingOptions(layout=args.layout)
    rates: dict[str, list[float]] = {key: [] for key, *_ in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="bench-heatmaps-") as work:
        folder = Path(work)
        plain = _without_attention(args.onnx, folder / "plain.onnx")
        repositories = {
            False: assemble(plain, folder / "repo-plain", options),
            True: assemble(args.onnx, folder / "repo-heatmaps", options),
        }
        servers = {
            served: TritonServer.on_free_ports(
                model_repository=repo,
                log_path=folder / f"triton-{served}.log",
                startup_timeout_s=300,
            )
            for served, repo in repositories.items()
        }
        from predilect.quality import default_quality_cfg
        from predilect.referral import ReferralRules

        rules = ReferralRules.from_catalog(catalog, default_quality_cfg().to_dict())
        components = _component_costs(payloads, {"with_attention": args.onnx, "without": plain}, preprocess, rules)
        with servers[False], servers[True]:
            for round_ in range(args.rounds):
                for key, label, served, asked in CONFIGS:
                    rate = _throughput(
                        servers[served].grpc_url,
                        payloads,
                        repeat=args.repeat,
                        concurrency=args.concurrency,
                        heatmaps=asked,
                    )
                    rates[key].append(rate)
                    print(f"round {round_ + 1} {key} ({label}): {rate:.2f} images/s", flush=True)
    in_process = _in_process(payloads, preprocess)
    command_line = "predilect bench heatmaps " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    today = dt.date.today().isoformat()
    ratios = {
        "B/A": [b / a for a, b in zip(rates["A"], rates["B"], strict=True)],
        "C/B": [c / b for b, c in zip(rates["B"], rates["C"], strict=True)],
    }
    results = {
        "command": command_line,
        "date": today,
        "machine": machine.describe(),
        "model": f"{name} {version}",
        "layout": args.layout,
        "images": len(payloads),
        "requests_per_round": len(payloads) * args.repeat,
        "concurrency": args.concurrency,
        "images_per_s": rates,
        "ratios_per_round": ratios,
        "in_process": in_process,
        "server_work_ms_per_image": components,
    }
    lines = [
        "# Heatmaps: the cost of serving them, and of asking",
        "",
        f"Command: `{command_line}`; date {today}; machine: {machine.describe()}.",
        f"Model {name} {version}, {args.layout} layout, {len(payloads)} images x {args.repeat} per round, "
        f"{args.concurrency} in flight, {args.rounds} interleaved rounds; the machine is shared, so compare "
        "within a round.",
        "",
        "| config | what | images/s per round | median |",
        "|---|---|---|---|",
    ]
    for key, label, *_ in CONFIGS:
        per_round = ", ".join(f"{r:.2f}" for r in rates[key])
        lines.append(f"| {key} | {label} | {per_round} | {statistics.median(rates[key]):.2f} |")
    lines += ["", "| ratio | per round | median |", "|---|---|---|"]
    for key, values in ratios.items():
        lines.append(f"| {key} | {', '.join(f'{v:.3f}' for v in values)} | {statistics.median(values):.3f} |")
    c = components
    lines += [
        "",
        "In process, CPU time of one thread per image (best of 30, batches of 8): the classifier "
        f"{c['classifier_without_attention']:.3f} ms without ATTENTION, {c['classifier_with_attention']:.3f} ms "
        f"with it; the decision {c['decide_without_heatmaps']:.3f} ms without heatmaps, "
        f"{c['decide_with_heatmaps']:.3f} ms with them. Preprocessing {in_process['preprocess_ms_per_image']:.2f} "
        f"ms/image, gradability {in_process['quality_ms_per_image']:.2f} ms/image (best of 5).",
    ]
    text = "\n".join(lines) + "\n"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"heatmaps-{today}-{machine.slug()}"
    stem.with_suffix(".md").write_text(text, encoding="utf-8")
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(text)
    print(f"wrote {stem}.md and .json")
    return 0
