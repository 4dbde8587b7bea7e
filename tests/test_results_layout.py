"""Experiments apart from the product: every `experiments/*/` has its manifest, `benchmarks/results/`
holds dated reports and no scripts, the package holds no one-off script, and the ablation grid's
committed scores still give the figures of training/RESULTS.md."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tomllib
from portions import ROOT
from portions import module_files as _module_files

from predilect.metrics import auroc, macro

EXPERIMENTS = ROOT / "experiments"
RESULTS = ROOT / "benchmarks" / "results"
(FIRST_GRID,) = (p / "grid" for p in EXPERIMENTS.glob("*-uopsl-ablation-grid"))  # the first, 3-seed grid
(EVIDENCE,) = EXPERIMENTS.glob("*-uopsl-evidence")  # the grids behind training/RESULTS.md
REQUIRED = ("date", "question", "commit", "command", "inputs", "outputs", "verdict")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
SCRIPT_SUFFIXES = (".py", ".sh", ".ipynb")


def _tracked(*paths: str) -> list[Path]:
    listing = subprocess.run(["git", "ls-files", "--", *paths], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / line for line in listing.stdout.splitlines()]


def _experiment_folders() -> list[Path]:
    return sorted(p for p in EXPERIMENTS.iterdir() if p.is_dir())


def _manifest(folder: Path) -> dict:
    return tomllib.loads((folder / "manifest.toml").read_text(encoding="utf-8"))


def _output_path(folder: Path, output: str) -> Path:
    """An output names a file or folder of the experiment, or a repository path (an anchor allowed)."""
    path = output.split("#", 1)[0]
    return ROOT / path if (ROOT / path.split("/", 1)[0]).is_dir() and "/" in path else folder / path


def test_experiments_area_holds_folders_named_by_date_when_listed() -> None:
    folders = _experiment_folders()
    assert len(folders) >= 10
    assert [p.name for p in folders if not re.fullmatch(r"\d{4}-\d{2}-\d{2}-[a-z0-9-]+", p.name)] == []
    loose = sorted(p.name for p in EXPERIMENTS.iterdir() if p.is_file())
    assert loose == ["README.md"]


@pytest.mark.parametrize("folder", _experiment_folders(), ids=lambda p: p.name)
def test_experiment_manifest_has_every_required_field_when_read(folder: Path) -> None:
    manifest = _manifest(folder)
    missing = [key for key in REQUIRED if key not in manifest or manifest[key] in ("", [], None)]
    assert missing == [], f"{folder.name}/manifest.toml lacks {missing}"
    assert str(manifest["date"]) == folder.name[:10], "the manifest's date is the folder's"
    assert re.fullmatch(r"[0-9a-f]{7,40}", manifest["commit"]), manifest["commit"]
    assert isinstance(manifest["inputs"], list) and isinstance(manifest["outputs"], list)
    assert isinstance(manifest.get("scripts", []), list)


@pytest.mark.parametrize("folder", _experiment_folders(), ids=lambda p: p.name)
def test_experiment_commit_exists_when_history_is_whole(folder: Path) -> None:
    shallow = subprocess.run(
        ["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    if shallow == "true":
        pytest.skip("a shallow clone lacks the commits experiments ran at")
    commit = _manifest(folder)["commit"]
    found = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True)
    assert found.returncode == 0, f"{folder.name}: commit {commit} is not in this repository"


@pytest.mark.parametrize("folder", _experiment_folders(), ids=lambda p: p.name)
def test_experiment_files_are_manifest_scripts_or_outputs_when_listed(folder: Path) -> None:
    manifest = _manifest(folder)
    scripts = [folder / s for s in manifest.get("scripts", [])]
    outputs = [_output_path(folder, o) for o in manifest["outputs"]]
    assert [str(p) for p in [*scripts, *outputs] if not p.exists()] == [], "listed but missing"
    claimed = {folder / "manifest.toml", *scripts}
    folders = [p for p in outputs if p.is_dir()]
    strays = [
        str(p.relative_to(folder))
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p not in claimed and p not in outputs and not any(d in p.parents for d in folders)
    ]
    assert strays == [], f"{folder.name}: files its manifest names neither as script nor as output"
    code = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in SCRIPT_SUFFIXES and p not in claimed]
    assert code == [], f"{folder.name}: code its manifest does not list under scripts"


def test_experiments_index_links_every_experiment_when_read() -> None:
    index = (EXPERIMENTS / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([0-9]{4}-[0-9]{2}-[0-9]{2}-[a-z0-9-]+)/manifest\.toml\)", index))
    assert linked == {p.name for p in _experiment_folders()}


def test_benchmark_results_hold_no_scripts_when_walked() -> None:
    scripts = [str(p.relative_to(ROOT)) for p in RESULTS.rglob("*") if p.suffix in SCRIPT_SUFFIXES]
    assert scripts == []


def test_benchmark_results_are_dated_reports_in_indexed_folders_when_listed() -> None:
    top = sorted(p.name for p in RESULTS.iterdir())
    assert [name for name in top if (RESULTS / name).is_file()] == ["README.md"]
    benchmarks = [name for name in top if (RESULTS / name).is_dir()]
    index = (RESULTS / "README.md").read_text(encoding="utf-8")
    assert [name for name in benchmarks if f"| `{name}`" not in index] == [], "a benchmark folder not in the index"
    for name in benchmarks:
        folder = RESULTS / name
        current = [p for p in folder.iterdir() if p.is_file()]
        assert current, f"{name} has no current report"
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) in ([], ["history"]), name
    undated = [str(p.relative_to(RESULTS)) for p in RESULTS.rglob("*") if p.is_file() and p.name != "README.md"]
    assert [p for p in undated if not DATE.search(Path(p).name)] == []


def test_benchmark_results_history_is_older_than_current_when_dated() -> None:
    run = re.compile(r"\d{4}-\d{2}-\d{2}[a-z]?")  # a date, and the letter of a later run that day
    for history in sorted(RESULTS.glob("*/history")):
        newest_old = max(run.search(p.name).group(0) for p in history.iterdir())
        oldest_current = min(run.search(p.name).group(0) for p in history.parent.iterdir() if p.is_file())
        assert newest_old < oldest_current, history.parent.name


# ----------------------------------------------------------------------------- the package


def _string_constants(tree: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _references() -> tuple[set[str], set[str]]:
    """Module names imported (absolute or relative) or named in a string anywhere in the tracked Python
    files, and ``-m <module>`` in the Makefile and docs; and the ``*.py`` file names named in strings."""
    names: set[str] = set()
    files: set[str] = set()
    modules = {path: name for name, path in _module_files().items()}
    for path in _tracked("*.py"):
        if path.parts[len(ROOT.parts)] == "experiments":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        package = modules.get(path, "").split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
        for text in _string_constants(tree):
            if text.startswith("predilect."):
                names.add(text.split(":", 1)[0])
            elif text.endswith(".py"):
                files.add(Path(text).name)
    for path in _tracked("Makefile", "*.md", "*.sh", "*.toml", "docker/*"):
        names.update(re.findall(r"-m\s+(predilect[\w.]*)", path.read_text(encoding="utf-8", errors="replace")))
    return names, files


def test_package_module_is_imported_or_an_entry_point_when_scanned() -> None:
    names, files = _references()
    orphans = []
    for name, path in _module_files().items():
        if name in names or any(n.startswith(name + ".") for n in names) or path.name in files:
            continue
        source = path.read_text(encoding="utf-8")
        if path.name.endswith("_cli.py") or re.search(r"^if __name__ == .__main__.:", source, re.MULTILINE):
            continue
        orphans.append(name)
    assert orphans == [], "modules nothing imports, names or runs (a one-off belongs in experiments/)"


def _one_off_marks(source: str, filename: str) -> list[str]:
    tree = ast.parse(source, filename)
    marks = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if "git" in items and "show" in items:
                marks.append("runs `git show`")
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) in ("kill", "waitpid")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, int)
        ):
            marks.append(f"a hard-coded pid {node.args[0].value}")
    for text in _string_constants(tree):
        if re.search(r"\bgit show\b", text) and "\n" not in text:
            marks.append(f"runs {text!r}")
        if re.search(r"\bkill -0 \d+", text):
            marks.append(f"waits on a hard-coded pid: {text!r}")
        if re.search(r"/tmp/\S+\.(py|sh)\b", text):
            marks.append(f"runs a /tmp copy of a script: {text!r}")
    return marks


def test_one_off_marks_found_when_script_reads_old_code_or_waits_on_pid() -> None:
    source = (
        "import os, subprocess\n"
        "subprocess.run(['git', '-C', '.', 'show', 'main:x.py'])\n"
        "os.kill(11227, 0)\n"
        "subprocess.run('python /tmp/loc3/run.py', shell=True)\n"
    )
    assert len(_one_off_marks(source, "one_off.py")) == 3


def test_package_module_reads_no_old_code_pid_or_tmp_script_when_scanned() -> None:
    found = {
        name: marks
        for name, path in _module_files().items()
        if (marks := _one_off_marks(path.read_text(encoding="utf-8"), str(path)))
    }
    assert found == {}, "one-off scripts in the package (move them to experiments/)"


# ----------------------------------------------------------------------------- the evidence


def test_first_grid_scores_give_its_kept_summary_when_rescored() -> None:
    """The 3-seed grid before the claim table: its kept summary still follows from its scores."""
    summary = json.loads((FIRST_GRID / "summary.json").read_text(encoding="utf-8"))
    oct_visible = summary["table"]["oct_visible"]
    metric = macro(auroc)
    assert len(summary["table"]["cells"]) == 14
    for cell, kept in summary["table"]["cells"].items():
        variant, seed = cell.split("/")
        with np.load(FIRST_GRID / variant / seed / "scores.npz") as scores:
            labels, probs, ids = scores["labels"], scores["probs"], scores["ids"].tolist()
        cols = [i for i, d in enumerate(ids) if d in oct_visible]
        rescored = (metric(labels, probs), metric(labels[:, cols], probs[:, cols]))
        assert rescored == pytest.approx((kept["all"], kept["oct_visible"]), abs=1e-12), cell


CLAIM_ROW = re.compile(
    r"^\| (?P<claim>[^|]+) \| (?P<a>\w+) - (?P<b>\w+) \| (?P<classes>[\w -]+?) \| (?P<grid>grid\d) \| "
    r"(?P<rows>all|seen|held_out) \| (?P<value>[+-][0-9.]+) \| (?P<patients>\[[^]]+\]|n/a) \| "
    r"(?P<hier>\[[^]]+\]|n/a) \| (?P<t>\[[^]]+\]|n/a) \| (?P<seeds>\d+) \| (?P<verdict>[\w ]+) \|$",
    re.MULTILINE,
)


def _claim_rows() -> list[dict[str, str]]:
    text = (ROOT / "training" / "RESULTS.md").read_text(encoding="utf-8")
    return [m.groupdict() for m in CLAIM_ROW.finditer(text)]


def test_results_claim_table_recomputes_from_kept_scores_when_rescored() -> None:
    """Every claim row of training/RESULTS.md, recomputed from the committed cells alone."""
    from predilect.training.claims import Resampled, compare
    from predilect.training.grid_report import load_grid

    rows = _claim_rows()
    assert len(rows) >= 20, "the claim table"
    grids = {}
    for row in rows:
        if row["grid"] not in grids:
            folder = EVIDENCE / row["grid"]
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
            variants = sorted({cell.split("/")[0] for cell in summary["cells"]})
            seeds = sorted({int(cell.split("/seed")[1]) for cell in summary["cells"]})
            grid, _ = load_grid(folder, variants, seeds)
            grids[row["grid"]] = Resampled(grid, resamples=summary["resamples"])
        found = compare(grids[row["grid"]], row["a"], row["b"], rows=row["rows"], classes=row["classes"].strip())
        assert found is not None, row
        got = {
            "value": f"{found.value:+.3f}",
            "patients": _interval(found.patients),
            "hier": _interval(found.seeds_and_patients),
            "t": _interval(found.between_seeds),
            "seeds": str(len(found.seeds)),
            "verdict": found.verdict,
        }
        assert got == {k: row[k].strip() for k in got}, row["claim"]


def _interval(i) -> str:
    return f"[{i.low:+.3f}, {i.high:+.3f}]" if np.isfinite(i.low) else "n/a"
