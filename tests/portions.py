"""The ``predilect`` namespace's portions as pyproject lists them; every module by the one name its path gives."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PORTIONS = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
"""Each entry is a folder holding (part of) the ``predilect`` namespace: ``predilect`` or ``<part>/predilect``."""


def module_files() -> dict[str, Path]:
    """Every module of the namespace, by the one name its path gives it."""
    modules: dict[str, Path] = {}
    for portion in PORTIONS:
        base = (ROOT / portion).parent
        for path in sorted((ROOT / portion).rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            assert name not in modules, f"{name} is both {modules[name]} and {path}"
            modules[name] = path
    return modules
