"""Dead code stays out: vulture, as `make lint` runs it ([tool.vulture] in pyproject.toml), on a copy of the sources."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PATHS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["vulture"]["paths"]


def _copy(tmp_path: Path) -> Path:
    for path in PATHS:
        source = ROOT / path
        if source.is_dir():
            shutil.copytree(source, tmp_path / path, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / path)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _vulture(copy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vulture"], capture_output=True, text=True, cwd=copy, timeout=300)


def test_vulture_finds_nothing_unused_when_run_on_the_sources(tmp_path: Path) -> None:
    done = _vulture(_copy(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_vulture_reports_a_function_when_nothing_in_the_package_calls_it(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    module = copy / "predilect" / "referral.py"
    module.write_text(
        module.read_text(encoding="utf-8") + "\n\ndef only_a_test_would_call_this() -> int:\n    return 1\n",
        encoding="utf-8",
    )
    done = _vulture(copy)
    assert done.returncode != 0
    assert "referral.py" in done.stdout and "unused function 'only_a_test_would_call_this'" in done.stdout
