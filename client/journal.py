"""A resumable JSONL journal: one record per line, a group of lines per input, fsynced.

Each record carries ``key`` (the input) and ``frames`` (how many records that input has).
A group is written with one ``write`` and then flushed and fsynced, so after a crash only
the last group can be incomplete or torn; ``ResultJournal.open`` cuts it off, and the keys
it returns are exactly the inputs already recorded in full.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any


class ResultJournal:
    """Append-only JSONL file of screening records: ``open()``, ``append()`` per input, ``close()``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: IO[bytes] | None = None
        self.records: list[dict[str, Any]] = []

    def open(self) -> set[str]:
        """Read what is recorded, drop an incomplete or torn tail, open for appending; the complete keys."""
        data = self.path.read_bytes() if self.path.exists() else b""
        good_end, done = _complete_prefix(data, self.records)
        if good_end < len(data):
            with self.path.open("r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        return done

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write one input's records at once, durably."""
        if self._file is None:
            raise RuntimeError("open the journal before appending")
        self._file.write(b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.extend(records)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _complete_prefix(data: bytes, records: list[dict[str, Any]]) -> tuple[int, set[str]]:
    """The byte length of the prefix made of complete groups, and their keys; fills ``records``."""
    done: set[str] = set()
    open_groups: dict[str, list[dict[str, Any]]] = {}
    good_end = offset = 0
    for line in data.splitlines(keepends=True):
        offset += len(line)
        if not line.endswith(b"\n"):
            break  # torn last line
        try:
            record = json.loads(line)
            key, frames = str(record["key"]), int(record["frames"])
        except (ValueError, KeyError, TypeError):
            break  # a line damaged by a crash: nothing after it is trusted
        group = open_groups.setdefault(key, [])
        group.append(record)
        if len(group) >= frames:
            done.add(key)
            records.extend(open_groups.pop(key))
        if not open_groups:
            good_end = offset
    return good_end, done
