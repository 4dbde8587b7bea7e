"""``--out`` names a folder, for every ``predilect`` command; standard library only.

A command writes what it makes into the folder ``--out`` names, under fixed names (a checkpoint
``model.safetensors``, a journal ``results.jsonl``, a manifest ``manifest.csv``, a report
``index.html`` ...), so the same option means the same thing everywhere. A path that is a file, or
looks like a file name (it ends in one of ``FILE_SUFFIXES``), is refused with a message saying so:
``--out results.jsonl`` would otherwise make a folder of that name.
"""

from __future__ import annotations

from pathlib import Path

from predilect.errors import UserError

FILE_SUFFIXES = frozenset(
    {".jsonl", ".json", ".csv", ".html", ".md", ".onnx", ".safetensors", ".plan", ".png", ".txt", ".toml"}
)
"""Suffixes that say a path names a file."""


class OutFolderError(UserError):
    """``--out`` names a file where the command writes a folder."""


def check_out_folder(path: Path, *, holds: str) -> None:
    """``OutFolderError`` when ``--out`` ``path`` is a file or looks like a file name; nothing is created.

    ``holds`` says what the folder gets, for the message (``"results.jsonl, exams.json"``)."""
    if path.is_file() or (not path.exists() and path.suffix.lower() in FILE_SUFFIXES):
        raise OutFolderError(
            f"--out is a folder (it gets {holds}); {path} names a file: give a folder, "
            f"e.g. --out {path.with_suffix('')}"
        )


def out_folder(path: Path, *, holds: str) -> Path:
    """``path`` as an ``--out`` folder, created; ``OutFolderError`` as ``check_out_folder`` says."""
    check_out_folder(path, holds=holds)
    path.mkdir(parents=True, exist_ok=True)
    return path
