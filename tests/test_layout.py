"""The house: one module name per file, no symlinks, and layering contracts that fail on a wrong import."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from portions import PORTIONS, ROOT
from portions import module_files as _module_files


def test_tree_has_no_symlinks_when_listed_by_git() -> None:
    listing = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    links = [line.split("\t", 1)[1] for line in listing.splitlines() if line.startswith("120000 ")]
    assert links == []


def test_every_python_file_in_a_part_belongs_to_a_portion_when_walked() -> None:
    owned = {path.resolve() for path in _module_files().values()}
    parts = {Path(portion).parts[0] for portion in PORTIONS if portion != "predilect"}
    strays = [
        str(path.relative_to(ROOT))
        for part in parts
        for path in (ROOT / part).rglob("*.py")
        if path.resolve() not in owned and "results" not in path.parts
    ]
    assert strays == [], "Python files in a part folder but outside its predilect/ portion"


def test_each_module_resolves_to_its_own_file_when_imported_by_name() -> None:
    modules = _module_files()
    assert len(modules) > 150
    for name, path in modules.items():
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        assert Path(spec.origin).resolve() == path.resolve(), name


@pytest.mark.parametrize(
    "second_name",
    ["training.loop", "client.core", "serving.server", "predilect.predilect", "predilect.training.model"],
)
def test_old_or_doubled_module_name_does_not_import_when_tried(second_name: str) -> None:
    assert (
        importlib.util.find_spec(second_name.rsplit(".", 1)[0]) is None or importlib.util.find_spec(second_name) is None
    )


def test_namespace_path_lists_each_portion_once_when_installed() -> None:
    import predilect

    paths = [Path(p).resolve() for p in predilect.__path__]
    assert len(paths) == len(set(paths))
    assert {(ROOT / portion).resolve() for portion in PORTIONS} <= set(paths)


def _lint_copy(tmp_path: Path) -> Path:
    """A copy of the sources and pyproject.toml: the contracts are run on it, never on the checkout."""
    for portion in PORTIONS:
        shutil.copytree(ROOT / portion, tmp_path / portion, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint_imports(copy: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on ``copy`` alone: the checkout's own portions are taken off sys.path first."""
    roots = [str((copy / portion).parent) for portion in PORTIONS]
    checkout = sorted({str((ROOT / portion).parent) for portion in PORTIONS})
    code = (
        "import sys\n"
        f"sys.path[:] = [p for p in sys.path if p not in {checkout!r}]\n"
        f"sys.path[:0] = {roots!r}\n"
        "from importlinter.cli import lint_imports\n"
        f"sys.exit(lint_imports(config_filename={str(copy / 'pyproject.toml')!r}, no_cache=True, no_logo=True))\n"
    )
    return subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, cwd=copy, timeout=300)


def test_layering_contracts_hold_when_run_on_the_sources(tmp_path: Path) -> None:
    done = _lint_imports(_lint_copy(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        ("kernels/predilect/kernels/attention.py", "import predilect.training.loop", "layers"),
        ("build/predilect/build/export.py", "import predilect.training.loop", "layers"),
        ("predilect/contract.py", "import torch", "the core imports no part"),
        ("client/predilect/client/core.py", "import predilect.serving.configs", "the client SDK stands alone"),
        ("training/predilect/training/loop.py", "import predilect.dicom.gateway", "no layer below the client"),
    ],
)
def test_layering_contract_breaks_when_a_wrong_import_is_added(
    tmp_path: Path, module: str, wrong_import: str, contract: str
) -> None:
    copy = _lint_copy(tmp_path)
    target = copy / module
    target.write_text(
        target.read_text(encoding="utf-8") + f"\n{wrong_import}  # deliberately wrong\n", encoding="utf-8"
    )
    done = _lint_imports(copy)
    assert done.returncode != 0
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, done.stdout
