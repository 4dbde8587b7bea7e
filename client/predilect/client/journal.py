"""A resumable JSONL journal: one ``JournalRecord`` per line, a group of lines per input, fsynced.

Each record carries ``key`` (the input) and ``frames`` (how many records that input has).
A group is written with one ``write`` and then flushed and fsynced, so after a crash only
the last group can be incomplete or torn; ``ResultJournal.open`` cuts that tail off, and the
keys it returns are exactly the inputs already recorded in full. Damage anywhere else, or
records of another schema version, are not a crash's doing: ``open`` refuses the file
(``JournalError``) rather than cut good records off.

``open`` also takes an exclusive ``fcntl`` lock on the file, held until ``close`` (or the process
ends, however it ends): a second writer -- another ``predilect screen`` or gateway on the same
file -- is refused with ``JournalLockedError`` instead of recording every input a second time. The
file is created owner-only (0600): its lines name patients.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from predilect.client.records import JournalRecord
from predilect.errors import UserError


class JournalError(UserError):
    """The journal file holds something other than complete records of this schema version."""


class JournalLockedError(JournalError):
    """Another process holds the journal open for writing."""


FILE_MODE = 0o600


class ResultJournal:
    """Append-only JSONL file of screening records: ``open()``, ``append()`` per input, ``close()``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: IO[bytes] | None = None
        self.records: list[JournalRecord] = []

    def open(self) -> set[str]:
        """Lock the file, read what is recorded, drop an incomplete or torn tail, open for appending;
        the complete keys. ``JournalLockedError`` when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        file = os.fdopen(fd, "a+b")
        try:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise JournalLockedError(
                    f"{self.path} is being written by another process (a second `predilect screen` or gateway "
                    "on the same file); wait for it to finish or write to another --out"
                ) from e
            os.fchmod(file.fileno(), FILE_MODE)
            file.seek(0)
            data = file.read()
            good_end, done = _complete_prefix(data, self.records, self.path)
            if good_end < len(data):
                file.truncate(good_end)
                os.fsync(file.fileno())
        except BaseException:
            file.close()
            raise
        self._file = file
        return done

    def append(self, records: Sequence[JournalRecord]) -> None:
        """Write one input's records at once, durably."""
        if self._file is None:
            raise RuntimeError("open the journal before appending")
        self._file.write(b"".join(r.model_dump_json().encode() + b"\n" for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.extend(records)

    def close(self) -> None:
        """Close the file, which releases the lock."""
        if self._file is not None:
            self._file.close()
            self._file = None


def read_records(path: Path) -> list[JournalRecord]:
    """The complete records of a journal, read only (an incomplete or torn tail is left out, not cut)."""
    records: list[JournalRecord] = []
    _complete_prefix(Path(path).read_bytes(), records, Path(path))
    return records


def _parse(line: bytes) -> JournalRecord | None:
    """The record of a complete line; None for a line a crash can leave (torn or garbled)."""
    try:
        fields = json.loads(line)
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    return JournalRecord.model_validate(fields)


def _complete_prefix(data: bytes, records: list[JournalRecord], path: Path) -> tuple[int, set[str]]:
    """The byte length of the prefix made of complete groups, and their keys; fills ``records``."""
    done: set[str] = set()
    open_groups: dict[str, list[JournalRecord]] = {}
    good_end = offset = 0
    lines = data.splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        offset += len(line)
        try:
            record = _parse(line) if line.endswith(b"\n") else None
        except ValidationError as e:
            raise JournalError(
                f"{path} line {number} is not a screening record of this version: "
                f"{e.errors()[0]['msg']}; write to a new --out file"
            ) from e
        if record is None:
            if number == 1 and line.endswith(b"\n"):  # a whole first line that is no record: another kind of file
                raise JournalError(_not_a_journal(path, line))
            if number < len(lines):  # a crash tears only the last write
                raise JournalError(f"{path} line {number} is damaged and records follow it; repair or move the file")
            break
        if open_groups and record.key not in open_groups:  # groups are written whole, never interleaved
            raise JournalError(f"{path} line {number} starts an input before the one above it is complete")
        group = open_groups.setdefault(record.key, [])
        group.append(record)
        if len(group) >= record.frames:
            done.add(record.key)
            records.extend(open_groups.pop(record.key))
        if not open_groups:
            good_end = offset
    return good_end, done


def _not_a_journal(path: Path, first_line: bytes) -> str:
    message = f"{path} is not a screening journal (JSON lines written by `predilect screen` or the gateway)"
    if path.suffix.lower() == ".csv" or b"," in first_line:
        return f"{message}: it looks like a CSV manifest; screen it first (`predilect screen {path} --out DIR`)"
    return f"{message}: its first line is not a JSON record"
