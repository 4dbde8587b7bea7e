"""`predilect bench http-body`: does tritonserver survive an HTTP request body of N MB?

For each ``--mb`` size and ``--path``, starts a fresh server with HTTP on (``predilect serve``
keeps it off by default because of what this finds), POSTs that many bytes without any token, and
reports the HTTP answer and whether the server is still running half a second later. Only what
each probe measured is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predilect import contract
from predilect.artifacts import default_artifacts
from predilect.benchmarks import machine
from predilect.cli import CommandError, command
from predilect.outdir import out_folder

_MB = 1024 * 1024
_PATHS = (f"/v2/models/{contract.ENSEMBLE}/infer", "/v2/health/ready", "/v2/nowhere", "metrics")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect bench http-body", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--onnx", type=Path, default=default_artifacts().onnx, help="exported model to serve")
    p.add_argument("--model-repository", type=Path, help="serve this repository as is instead of assembling one")
    p.add_argument("--mb", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--path", nargs="+", default=list(_PATHS), help="HTTP paths; 'metrics' is the metrics port")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="folder to write the figures into, as <name>.json (default: print only)"
    )
    p.add_argument("--name", default=None, help="file stem of the figures (default <date>-http-body)")
    return p


def _probe(repository: Path, work: Path, path: str, size_mb: float) -> dict[str, Any]:
    from predilect.serving.server import TritonServer

    with TritonServer.on_free_ports(
        model_repository=repository,
        log_path=work / "tritonserver.log",
    ) as server:
        url = server.metrics_url if path == "metrics" else server.http_url + path
        request = urllib.request.Request(url, data=b"x" * int(size_mb * _MB))
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer: Any = response.status
        except urllib.error.HTTPError as e:
            answer = e.code
        except (urllib.error.URLError, ConnectionError) as e:
            answer = type(getattr(e, "reason", e)).__name__
        time.sleep(0.5)
        alive = server.is_running
        crashed = any("Signal (11)" in line for line in server.log_tail(200).splitlines())
    return {"path": path, "mb": size_mb, "answer": answer, "server_alive": alive, "sigsegv_in_log": crashed}


@command("bench http-body")
def main(argv: Sequence[str] | None = None) -> int:
    from predilect.serving.repository import assemble

    argv = list(sys.argv[3:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.model_repository is None and not args.onnx.is_file():
        raise CommandError(f"no exported model at {args.onnx}: run `make demo` (or give --onnx / --model-repository)")
    work = Path(tempfile.mkdtemp(prefix="predilect-http-body-"))
    repository = args.model_repository or assemble(args.onnx, work / "model_repository")
    probes = [_probe(repository, work, path, size) for path in args.path for size in args.mb]
    figures = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "command": " ".join(["predilect bench http-body", *argv]),
        "probes": probes,
    }
    print(f"HTTP request bodies ({figures['date']}, {figures['machine']})")
    for p in probes:
        print(f"  {p['path']:<40} {p['mb']:>5g} MB -> {p['answer']}, server alive: {p['server_alive']}")
    if args.out is not None:
        name = args.name or machine.dated_name("http-body")
        path = out_folder(args.out, holds=f"{name}.json") / f"{name}.json"
        path.write_text(json.dumps(figures, indent=1, default=str))
    return 0
