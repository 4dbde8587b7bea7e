"""Engine-cache files that replicas sharing one volume cannot corrupt.

Several servers may start at once on one ``/engines`` volume (the replicas of a Deployment, two
containers of one host), and each container's entrypoint may well have the same PID as the
others'. So a file is never written in place or under a PID-derived name: ``atomic_write`` writes a
temporary file of a unique name (``tempfile.mkstemp``) in the target's folder, flushes it to disk
and renames it over the target (atomic within one filesystem: a reader sees the old file or the new
one, never a part). ``cached_plan`` builds one plan while holding an exclusive lock on its folder
(``fcntl.flock`` on ``.lock``: honoured by every process on the host that mounts the volume, and
across hosts where the filesystem forwards flock, e.g. NFSv4), so a second replica waits, then
finds the first one's plan and reuses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_FILENAME = ".lock"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a uniquely named temporary file in its folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (its ``.lock`` file) for the duration; blocks until it is free."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILENAME, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def cached_plan(plan: Path, *, reusable: Callable[[Path], bool], build: Callable[[Path], object]) -> bool:
    """Make sure ``plan`` is there and ``reusable(plan)`` (its sidecar matches this host and request):
    reuse it, or ``build(plan)`` under the folder's lock (``build`` writes the plan and its sidecar,
    e.g. through ``engine.write_engine``). True when it was built here."""
    plan = Path(plan)
    with locked(plan.parent):
        if plan.is_file() and reusable(plan):
            return False
        build(plan)
        return True
