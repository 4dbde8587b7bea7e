"""`predilect` command line: one entry point, one sub-command per layer, one error path.

Layout: each sub-command is a module named ``<something>_cli.py`` beside the code it drives,
whose ``main(argv) -> int`` is wrapped by ``command``; this module only dispatches, importing
a layer when its command runs, so that the thin client install runs ``predilect --help``
without torch or DALI. Tests call each ``main(argv)`` directly.

Exit status: 0 success; 1 the work ran but did not all succeed (the command says what is
left); 2 a user error -- a bad option, a missing or malformed file, an input the service does
not take -- printed as one line ``predilect <command>: <message>``, never a traceback; 3 a
service the command needs is unreachable; 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from predilect.errors import UserError

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": (
        "predilect.training.phantom.phantom_cli",
        "synthetic fundus photographs, OCT B-scans, manifests",
    ),
    "gradability": (
        "predilect.training.gradability_cli",
        "calibrate the gradability step on phantom degradations, or on a site's labelled images (--manifest)",
    ),
    "dataset": ("predilect.training.datasets.dataset_cli", "a public data set in its native layout -> a manifest"),
    "train": ("predilect.training.train_cli", "UOPSL stages: train pretrain (OCT/fundus <-> text) | train finetune"),
    "experiment": ("predilect.training.experiment_cli", "the UOPSL ablation grid with paired-bootstrap CIs"),
    "evaluate": (
        "predilect.training.evaluate_cli",
        "metrics with CIs, lesion localisation, plots; zero-shot categories",
    ),
    "export": ("predilect.build.export_cli", "export a checkpoint to ONNX and check it under ONNX Runtime"),
    "quantize": ("predilect.build.quantize_cli", "INT8 model for the CPU profile, behind an accuracy gate"),
    "trt-rewrite": ("predilect.build.tensorrt.rewrite_cli", "fold the ONNX attention head into the TensorRT plugin"),
    "trt-engine": ("predilect.build.tensorrt.engine_cli", "build a TensorRT engine (needs TensorRT and a GPU)"),
    "assemble": ("predilect.serving.assemble_cli", "assemble the Triton model repository from an exported model"),
    "serve": ("predilect.serving.serve_cli", "start the real tritonserver on a model repository"),
    "demo": ("predilect.demo_cli", "phantom -> train -> export -> assemble -> serve -> screen, end to end"),
    "screen": ("predilect.client.screen_cli", "screen a folder, manifest or DICOM files; resumable JSONL output"),
    "gateway": ("predilect.dicom.gateway_cli", "DICOM C-STORE gateway that screens what it receives"),
    "drift": (
        "predilect.client.drift_cli",
        "compare a screening journal with the model's reference distributions (PSI, KS, alert levels)",
    ),
    "report": ("predilect.client.report_cli", "an HTML summary per patient of a screening journal, with overlays"),
    "schema": ("predilect.client.schema_cli", "write or check the JSON Schemas of the journal record and exam result"),
    "localisation": (
        "predilect.build.localisation_cli",
        "score the served heatmaps against the lesions a phantom drew (held-out split)",
    ),
    "operating-points": (
        "predilect.build.operating_points_cli",
        "per-disease thresholds for a target sensitivity on a validation split, into the checkpoint's catalog",
    ),
    "bench": ("predilect.benchmarks.bench_cli", "Locust concurrency sweep against the server and baselines"),
}

ROUTES: dict[tuple[str, str], str] = {
    ("gradability", "--manifest"): "predilect.client.site_calibration_cli",
}
"""A command whose option hands it to another part's module: ``predilect gradability --manifest`` calibrates on
a site's own graded photographs through its server (the client), not on a phantom (training)."""

Main = Callable[[Sequence[str] | None], int]
D = TypeVar("D")


class CommandError(UserError):
    """Raised by a command for a user error it detects itself (e.g. two options that conflict)."""


def description(doc: str | None) -> str:
    """A command's ``--help`` description from its module docstring (``"`predilect x`: what it does ..."``):
    the docstring without that prefix."""
    text = (doc or "").strip()
    head, sep, rest = text.partition(": ")
    return rest if sep and head.startswith("`predilect") else text


def version() -> str:
    """The installed distribution's version (``importlib.metadata``), or ``unknown`` when not installed."""
    from importlib import metadata

    try:
        return metadata.version("predilect")
    except metadata.PackageNotFoundError:
        return "unknown"


def _describe_os_error(error: OSError) -> str:
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def command(name: str) -> Callable[[Main], Main]:
    """Wrap a sub-command's ``main(argv)``: user errors become one line on stderr and exit 2.

    ``UserError`` (the library's errors about what the user gave) and ``OSError`` (a file
    that is missing, unreadable or on a full disk) are the user's to fix; anything else is a
    bug and keeps its traceback.
    """

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            try:
                return int(main(argv) or 0)
            except UserError as e:
                print(f"predilect {name}: {e}", file=sys.stderr)
                return EXIT_USAGE
            except OSError as e:
                print(f"predilect {name}: {_describe_os_error(e)}", file=sys.stderr)
                return EXIT_USAGE
            except KeyboardInterrupt:
                print(f"predilect {name}: interrupted", file=sys.stderr)
                return EXIT_INTERRUPTED

        return run

    return wrap


def _option_type(annotation: Any) -> tuple[Callable[[str], Any], int | str | None]:
    """The argparse ``type`` and ``nargs`` of a dataclass field's annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):  # X | None: the option takes an X
        (annotation,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return args[0], "*" if args[-1] is Ellipsis else len(args)
    return annotation, None


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, *, title: str | None = None) -> None:
    """One ``--field-name`` option per field of dataclass ``cls``, defaulting to the field's default.

    Help comes from ``field(metadata={"help": ...})``; booleans become ``--x/--no-x``. The
    defaults live only in the dataclass: that is the one place an option defaults from.
    """
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        factory: Callable[[], Any] | None = None if f.default_factory is dataclasses.MISSING else f.default_factory
        default: Any = factory() if factory is not None else f.default
        help_ = f"{f.metadata.get('help', '')} (default: {default})".strip()
        flag = "--" + f.name.replace("_", "-")
        if hints[f.name] is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_)
            continue
        type_, nargs = _option_type(hints[f.name])
        group.add_argument(flag, dest=f.name, type=type_, nargs=nargs, default=default, help=help_)


def dataclass_from_args(cls: type[D], args: argparse.Namespace) -> D:
    """An instance of ``cls`` from the options ``add_dataclass_options`` added (lists become tuples)."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.init and hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def _usage() -> str:
    lines = ["usage: predilect [--version] <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `predilect <command> --help` for a command's options."]
    return "\n".join(lines)


def passive_openmp() -> None:
    """Make idle OpenMP threads sleep instead of spin (unless the user chose otherwise).

    Must run before torch loads its OpenMP runtime. On a machine with more runnable threads than
    cores (CI, shared boxes), spinning workers steal the cores the working threads need: a
    training step measured 15-25x slower there with the default (active) policy.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _given(option: str, args: Sequence[str]) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


def main(argv: Sequence[str] | None = None) -> int:
    passive_openmp()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return EXIT_OK if args else EXIT_USAGE
    if args[0] in ("-V", "--version"):
        print(f"predilect {version()}")
        return EXIT_OK
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"predilect: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    routed = [m for (command_name, option), m in ROUTES.items() if command_name == name and _given(option, rest)]
    module = importlib.import_module(routed[0] if routed else COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
