"""The working folder a benchmark command runs in: the one ``--workdir`` names, else a temporary one."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def in_workdir(workdir: Path | None, run: Callable[[Path], T], *, prefix: str) -> T:
    """``run(folder)`` in ``workdir`` (created, kept) or, without one, in a temporary folder removed afterwards."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return run(workdir)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        return run(Path(tmp))
