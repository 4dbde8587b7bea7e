"""`predilect` command line: one entry point, one sub-command per layer.

Each sub-command lives beside the code it drives and exposes ``main(argv)``; this module
only dispatches, importing a layer when its command runs, so that the thin client install
can run ``predilect --help`` without torch or DALI.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("predilect.training.phantom.cli", "generate synthetic fundus photographs, OCT B-scans and a manifest"),
    "train": ("predilect.training.train_cli", "train the predilection-site classifier on a manifest"),
    "export": ("predilect.build.export_cli", "export a checkpoint to ONNX and check it under ONNX Runtime"),
    "trt-rewrite": (
        "predilect.build.tensorrt.rewrite_cli",
        "fold the ONNX attention head into the TensorRT plugin node",
    ),
    "trt-engine": ("predilect.build.tensorrt.engine_cli", "build a TensorRT engine (needs TensorRT and a GPU)"),
    "assemble": ("predilect.serving.repository", "assemble the Triton model repository from an exported model"),
    "serve": ("predilect.serving.server", "start the real tritonserver on a model repository"),
    "demo": ("predilect.serving.demo", "phantom -> train -> export -> assemble -> serve -> screen, end to end"),
    "screen": ("predilect.client.screen_cli", "screen a folder, manifest or DICOM files; resumable JSONL output"),
    "gateway": ("predilect.client.gateway_cli", "DICOM C-STORE gateway that screens what it receives"),
    "bench": ("predilect.benchmarks.cli", "Locust concurrency sweep against the server and baselines"),
}


def _usage() -> str:
    lines = ["usage: predilect <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `predilect <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"predilect: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
