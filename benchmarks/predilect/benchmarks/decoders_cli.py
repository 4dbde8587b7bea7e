"""`predilect bench decoders`: preprocessing ms/image against the decode floor, and held-out AUROC per decoder."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predilect.artifacts import default_artifacts
from predilect.benchmarks import decoders, machine
from predilect.cli import CommandError, command

TARGET_RATIO = 1.25


def _parser() -> argparse.ArgumentParser:
    artifacts = default_artifacts()
    p = argparse.ArgumentParser(prog="predilect bench decoders", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("--manifest", type=Path, default=artifacts.manifest, help="phantom manifest (held-out images)")
    p.add_argument("--checkpoint", type=Path, default=artifacts.checkpoint, help="model for the AUROC per decoder")
    p.add_argument("--images", type=int, default=64, help="held-out images timed")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the images (the fastest is kept)")
    p.add_argument("--no-dali", action="store_true", help="skip the dali_cpu timing and AUROC")
    p.add_argument("--no-auroc", action="store_true", help="timings only")
    p.add_argument("--retrain", action="store_true", help="also train one model per decoder and compare them")
    p.add_argument("--retrain-epochs", type=int, default=None, help="epochs of each stage when retraining")
    p.add_argument(
        "--retrain-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for both training stages when retraining (repeatable), e.g. loop.batch_size=8",
    )
    p.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples")
    machine.add_report_folder(p)
    p.add_argument("--name", default="decoders", help="writes <out-dir>/<name>.json and .md")
    return p


def _markdown(results: dict[str, Any]) -> str:
    t = results["timings"]
    lines = [
        f"# Preprocessing on the CPU profile, {results['date']}",
        "",
        f"* machine: {results['machine']}",
        f"* {results['load_before']} before, {results['load_after']} after",
        f"* command: `{results['command']}`",
        f"* payloads: {t['images']} held-out phantom JPEGs, mean {t['mean_payload_bytes'] / 1000:.0f} kB, "
        f"from {results['manifest']}; one thread, the fastest of {results['repeats']} passes",
        "",
        "| strategy | ms / image |",
        "|---|---:|",
        *[f"| {name} | {ms:.2f} |" for name, ms in t["ms_per_image"].items()],
        "",
        f"Served preprocessing / the faster floor: **{t['served_over_floor']:.2f}x** (target <= {TARGET_RATIO}x). "
        f"Served tensors equal the previous implementation's bit for bit: **{t['served_equals_previous']}**.",
        "",
    ]
    for key, title in (("auroc", "one checkpoint, each decoder"), ("retrained", "one model trained per decoder")):
        block = results.get(key)
        if not block:
            continue
        lines += [f"## Held-out macro AUROC: {title} ({block['images']} images)", ""]
        if "checkpoint" in block:
            lines += [f"Checkpoint {block['checkpoint']} (trained with `{block['trained_with']}`).", ""]
        else:
            lines += [f"Training overrides: `{json.dumps(block['overrides'])}`; resolved configs in the JSON.", ""]
        lines += ["| decoder | macro AUROC |", "|---|---:|"]
        lines += [f"| `{d}` | {v:.4f} |" for d, v in block["macro_auroc"].items()]
        for name, cis in ((k, v) for k, v in block.items() if k.startswith("vs_")):
            for d, ci in cis.items():
                lines.append("")
                lines.append(
                    f"`{d}` minus `{name[3:]}`: {ci['value']:+.4f}, {ci['level']:.0%} CI "
                    f"[{ci['low']:+.4f}, {ci['high']:+.4f}] (paired bootstrap, {ci['resamples']} resamples)"
                )
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace, argv: Sequence[str]) -> Path:
    from predilect.manifest import read_manifest
    from predilect.models.checkpoint import read_meta

    if not args.manifest.is_file():
        raise CommandError(
            f"no manifest at {args.manifest}; run `make demo` (or `predilect phantom`) or pass --manifest"
        )
    cfg = read_meta(args.checkpoint).preprocess if args.checkpoint.is_file() else decoders.PreprocessCfg()
    records = read_manifest(args.manifest, split="test")[: args.images]
    data = [r.path.read_bytes() for r in records]
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "predilect bench decoders " + shlex.join(argv),
        "machine": machine.describe(),
        "manifest": str(args.manifest),
        "repeats": args.repeats,
        "load_before": machine.describe_load(),
    }
    results["timings"] = decoders.preprocess_timings(data, cfg, repeats=args.repeats, dali=not args.no_dali)
    for name, ms in results["timings"]["ms_per_image"].items():
        print(f"{name:<58} {ms:7.2f} ms/image", flush=True)
    print(f"served / floor: {results['timings']['served_over_floor']:.2f}x", flush=True)
    chosen = ("pil_draft",) if args.no_dali else ("pil_draft", "dali_cpu")
    if not args.no_auroc and args.checkpoint.is_file():
        results["auroc"] = decoders.heldout_auroc(args.checkpoint, args.manifest, chosen, resamples=args.resamples)
        print(f"held-out macro AUROC per decoder: {results['auroc']['macro_auroc']}", flush=True)
    if args.retrain:
        with tempfile.TemporaryDirectory(prefix="predilect-retrain-") as tmp:
            results["retrained"] = decoders.retrained_auroc(
                args.manifest,
                chosen,
                Path(tmp),
                epochs=args.retrain_epochs,
                overrides=args.retrain_set,
                resamples=args.resamples,
            )
        print(f"retrained, held-out macro AUROC: {results['retrained']['macro_auroc']}", flush=True)
    results["load_after"] = machine.describe_load()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    path = args.out_dir / f"{args.name}.md"
    path.write_text(_markdown(results), encoding="utf-8")
    return path


@command("bench decoders")
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    print(f"report: {run(args, argv)}")
    return 0
