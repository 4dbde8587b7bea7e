"""`predilect bench baseline-server`: run baseline (b), FastAPI + PyTorch eager, until stopped."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from predilect.benchmarks.baseline_server import create_app
from predilect.cli import command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect bench baseline-server", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--torch-threads", type=int, default=2)
    return p


@command("bench baseline-server")
def main(argv: Sequence[str] | None = None) -> int:
    import torch
    import uvicorn

    args = _parser().parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    uvicorn.run(create_app(args.checkpoint), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
