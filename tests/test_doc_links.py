"""Every relative link in a tracked Markdown file resolves (file, folder and heading anchor), and every
row of README.md's "Measured" table links the results file its figures came from."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INDENTED = re.compile(r"^(?: {4}|\t).*$", re.MULTILINE)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1", re.DOTALL)
RESULTS_ROOTS = ("benchmarks/results/", "experiments/")


def _markdown_files() -> list[Path]:
    listing = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / line for line in listing.stdout.splitlines()]


def _prose(text: str) -> str:
    """The text a reader sees as prose: fenced and indented code blocks and code spans removed."""
    return CODE_SPAN.sub("", INDENTED.sub("", FENCE.sub("", text)))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    anchors = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _broken_links(path: Path) -> list[str]:
    broken = []
    for target in LINK.findall(_prose(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto: ...
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no such heading)")
    return broken


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_relative_links_resolve_when_tracked(path: Path) -> None:
    assert _broken_links(path) == [], f"{path.relative_to(ROOT)} links what is not there"


def test_broken_links_found_when_file_or_heading_missing(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A heading: with `code`\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading-with-code) [web](https://example.org/x)\n"
        "[gone](missing.md) [bad anchor](there.md#nope) `[in code](missing.md)`\n\n"
        "    [indented code](missing.md)\n",
        encoding="utf-8",
    )
    assert _broken_links(page) == ["missing.md (no such file)", "there.md#nope (no such heading)"]


def _measured_rows() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Measured\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert section, "README.md has no Measured section"
    rows = [line for line in section.group(1).splitlines() if line.startswith("|")]
    return [row for row in rows[2:]]  # past the header and its separator


def test_readme_measured_rows_each_link_a_results_file_when_read() -> None:
    rows = _measured_rows()
    assert len(rows) >= 10
    unlinked = []
    for row in rows:
        targets = [t.split("#", 1)[0] for t in LINK.findall(_prose(row))]
        if not any(t.startswith(RESULTS_ROOTS) and (ROOT / t).exists() for t in targets):
            unlinked.append(row[:120])
    assert unlinked == [], "Measured rows without a link to the results file they came from"
