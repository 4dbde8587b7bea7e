"""What the reliability commands (``predilect bench overload``, ``soak``, ``large``) share.

Their model options, the server they start (the repository given, or one assembled from the
export, on free ports, behind the request-size limit when the command has one), the phantom
payloads, the head of their figures, and their ``main``: parse, check there is a model, run,
print, write the figures (``--out``), exit 0 unless the run says it did not pass.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from predilect.artifacts import default_artifacts
from predilect.benchmarks import machine, payloads, reliability
from predilect.outdir import out_folder

MB = 1024 * 1024
Figures = dict[str, Any]


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """``predilect bench <name>``'s parser with the model options (``--onnx``, ``--model-repository``)
    and ``--out``."""
    p = argparse.ArgumentParser(prog=f"predilect bench {name}", description=(doc or "").splitlines()[0])
    p.add_argument("--onnx", type=Path, default=default_artifacts().onnx, help="exported model to serve")
    p.add_argument("--model-repository", type=Path, help="serve this repository as is instead of assembling one")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="folder to write the figures into, as <name>.json (default: print only)"
    )
    p.add_argument("--name", default=None, help=f"file stem of the figures (default <date>-{name})")
    return p


def add_request_limit(p: argparse.ArgumentParser) -> None:
    """``--max-request-mb``: the request-size limit in front of the server, as ``predilect serve`` sets it."""
    from predilect.serving.serve_cli import DEFAULT_MAX_REQUEST_MB, request_limit_mb

    p.add_argument(
        "--max-request-mb",
        type=request_limit_mb,
        default=DEFAULT_MAX_REQUEST_MB,
        help="the request-size limit in front of the server, as `predilect serve` sets it (0: none)",
    )


def workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"predilect-{name}-"))


def camera_frames(work: Path, count: int) -> list[bytes]:
    """``count`` phantom camera frames (JPEG bytes), rendered under ``work``."""
    return [p.read_bytes() for p in payloads.render_set(work / "images", count=count, sizes=[payloads.CAMERA_SIZE])]


def server(args: argparse.Namespace, work: Path) -> Any:
    """The ``TritonServer`` (not started) of ``--model-repository``, or of a repository assembled from
    ``--onnx``; behind the request-size limit when the command has ``--max-request-mb``."""
    from predilect.serving.repository import assemble
    from predilect.serving.server import TritonServer

    repository = args.model_repository or assemble(args.onnx, work / "model_repository")
    limit_mb = getattr(args, "max_request_mb", 0)
    return TritonServer.on_free_ports(
        model_repository=repository,
        log_path=work / "tritonserver.log",
        max_request_bytes=int(limit_mb * MB) or None,
    )


def header(name: str, argv: Sequence[str]) -> Figures:
    """When, where and how a run was made: the head of its figures."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "command": " ".join([f"predilect bench {name}", *argv]),
    }


def main(
    argv: Sequence[str] | None,
    *,
    make_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace, Sequence[str]], Figures],
    render: Callable[[Figures], str],
) -> int:
    """Parse ``argv`` (None: the process's, after ``predilect bench <name>``), run, print ``render``'s
    lines, write ``--out``; 0 unless the figures say ``passed`` is false."""
    argv = list(sys.argv[3:] if argv is None else argv)
    args = make_parser().parse_args(argv)
    reliability.require_model(args.onnx, args.model_repository)
    figures = run(args, argv)
    print(render(figures))
    what = make_parser().prog.rsplit(" ", 1)[-1]
    if args.out is not None:
        name = args.name or machine.dated_name(what)
        reliability.write_figures(out_folder(args.out, holds=f"{name}.json") / f"{name}.json", figures)
    return 0 if figures.get("passed", True) else 1
