"""The versioned JSON Schemas of what the client writes, generated from its pydantic models.

``journal-record`` is one line of a ``predilect screen`` / gateway journal (a ``JournalRecord``
holding a ``ScreeningResult``); ``exam-result`` is one entry of ``<out>/exams.json``. Both are
at ``contract.RESULT_SCHEMA_VERSION``; the committed files under ``schemas/`` are the generated
ones (``predilect schema --check`` and the tests compare them), so a change to the models that
changes the files is a change of the schema: bump the version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from predilect import contract
from predilect.client.exam import ExamResult
from predilect.client.records import JournalRecord

SCHEMA_DIR = Path(__file__).with_name("schemas")
MODELS: dict[str, type[BaseModel]] = {"journal-record": JournalRecord, "exam-result": ExamResult}


def file_name(name: str) -> str:
    return f"{name}.v{contract.RESULT_SCHEMA_VERSION}.schema.json"


def generate(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``MODELS[name]`` at the current schema version."""
    schema = MODELS[name].model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:predilect:schema:{name}:v{contract.RESULT_SCHEMA_VERSION}",
        **schema,
    }


def render(name: str) -> str:
    """The schema file's text: sorted keys, two-space indent, a final newline."""
    return json.dumps(generate(name), indent=2, sort_keys=True) + "\n"


def write_all(folder: Path = SCHEMA_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in MODELS:
        path = folder / file_name(name)
        path.write_text(render(name), encoding="utf-8")
        paths.append(path)
    return paths


def stale(folder: Path = SCHEMA_DIR) -> list[str]:
    """The schema files under ``folder`` that are missing or differ from the generated ones."""
    out = []
    for name in MODELS:
        path = folder / file_name(name)
        if not path.is_file() or path.read_text(encoding="utf-8") != render(name):
            out.append(str(path))
    return out
