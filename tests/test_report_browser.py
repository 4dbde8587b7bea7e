"""The HTML report as a reader opens it: a real browser (Playwright driving Debian's chromium) on a
report folder copied away from where it was written, after a real screening run with heatmaps."""

from __future__ import annotations

import shutil
import urllib.parse
from pathlib import Path

from predilect.client.exam import exam_results
from predilect.client.journal import read_records
from predilect.client.report import worklist
from predilect.client.report_cli import main as report_main
from predilect.client.screen_cli import main as screen_main
from predilect.serving.server import TritonServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    raise RuntimeError("Debian's chromium is missing: `make system-deps` installs it (apt-get install chromium)")
SCREENSHOT = "report-worklist.png"


def _skin_jpeg(path: Path) -> Path:
    """Not a fundus photograph: the server grades it ungradable (wrong image type)."""
    from PIL import Image

    Image.new("RGB", (800, 600), (205, 150, 125)).save(path, quality=90)
    return path


def _screened_and_reported(tmp_path: Path, server: TritonServer, fundus_jpeg) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir(parents=True)
    for i, name in enumerate(["P001_left", "P001_right", "P002_R", "P004_OS"]):
        (images / f"{name}.jpg").write_bytes(fundus_jpeg(900 + i))
    _skin_jpeg(images / "P003_left.jpg")
    (images / "P005_right.jpg").write_bytes(b"GIF89a" + bytes(200))  # refused by the server
    results = tmp_path / "results"
    assert screen_main([str(images), "--out", str(results), "--heatmaps", "--server", server.grpc_url]) == 0
    assert report_main([str(results)]) == 0
    return results / "results.jsonl", results / "report"


def test_report_opens_in_chromium_with_worklist_matching_journal_when_folder_is_copied(
    triton_server: TritonServer, fundus_jpeg, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    journal, report = _screened_and_reported(tmp_path / "made", triton_server, fundus_jpeg)
    records = read_records(journal)
    expected = worklist(records, exam_results(records))
    copied = tmp_path / "elsewhere" / "reading"
    shutil.copytree(report, copied)
    shutil.rmtree(tmp_path / "made")  # nothing the copy shows may live where it was written
    page_file = copied / "index.html"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            failed: list[str] = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(page_file.as_uri(), wait_until="load")

            def count(name: str) -> int:
                return int(page.inner_text(f'[data-count="{name}"]'))

            assert count("screened") == expected.screened == 5, "the refused GIF has no result"
            assert count("patients") == expected.patients == 5, "P001's two files are one patient"
            assert count("referable") == expected.referable and count("urgent") == expected.urgent
            assert count("ungradable") == expected.ungradable >= 1 and count("refused") == expected.refused == 1
            for disease, patients in expected.referable_by_disease.items():
                assert count(f"referable:{disease}") == patients
            for reason, images in expected.ungradable_by_reason.items():
                assert count(f"ungradable:{reason}") == images
            rows = page.eval_on_selector_all("table.worklist tr[data-patient]", "rs => rs.map(r => r.dataset.patient)")
            assert rows == [e.patient_id for e in expected.exams], "the worklist reads most urgent first"
            assert "P001" in rows and "P001_left" not in rows

            links = page.eval_on_selector_all("a[href]", "as => as.map(a => a.getAttribute('href'))")
            sources = page.eval_on_selector_all("img", "is => is.map(i => i.getAttribute('src'))")
            assert links and sources and any(link.endswith(".png") for link in links), "overlays are linked"
            for target in links + sources:
                assert not urllib.parse.urlparse(target).scheme, f"{target} is not relative"
                if target.startswith("#"):
                    assert page.locator(f"[id='{target[1:]}']").count() == 1, f"{target} names no section"
                else:
                    resolved = (copied / urllib.parse.unquote(target)).resolve()
                    assert resolved.is_file() and copied.resolve() in resolved.parents, f"{target} is not in the copy"
            loaded = "is => is.filter(i => !(i.complete && i.naturalWidth > 0)).length"
            broken = page.eval_on_selector_all("img", loaded)
            assert broken == 0 and failed == [], f"images that did not load: {failed}"

            first = page.locator("table.worklist a").first
            first.click()
            assert page.evaluate("location.hash") == first.get_attribute("href")
            page.goto(page_file.as_uri(), wait_until="load")
            page.screenshot(path=str(tmp_path / SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / SCREENSHOT).stat().st_size > 10_000, "the screenshot is kept beside the test's files"


def test_report_names_wrong_file_kind_not_damage_when_given_a_manifest(tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,patient_id,eye\na.jpg,P1,R\n")
    assert report_main([str(manifest)]) == 2
    err = capsys.readouterr().err
    assert "not a screening journal" in err and "CSV manifest" in err and "damaged" not in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
