"""Exam-level results (client.exam), the result schema files, and the HTML report a grader opens."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from client_faces import decided_result

from predilect import contract
from predilect.catalog import Catalog, Disease
from predilect.client.exam import exam_results
from predilect.client.records import JournalRecord
from predilect.client.results import ScreeningResult
from predilect.referral import ReferralRules

CATALOG = Catalog(
    diseases=(
        Disease("dr", "Diabetic retinopathy", ("a",), threshold=0.5, referral="routine"),
        Disease("rvo", "Retinal vein occlusion", ("b",), threshold=0.5, referral="urgent"),
    )
)
RULES = ReferralRules.from_catalog(CATALOG, {})
PROBABILITIES = {"none": [0.1, 0.1], "routine": [0.9, 0.1], "urgent": [0.1, 0.9]}


def _result(kind: str, *, heatmaps: bool = False) -> ScreeningResult:
    if kind == "ungradable":
        row = [0.1] + [1.0 if r == "focus" else 0.0 for r in contract.QUALITY_REASONS]
        return decided_result([0.9, 0.9], CATALOG, latency_s=0.1, quality=row, rules=RULES)
    result = decided_result(PROBABILITIES[kind], CATALOG, latency_s=0.1, rules=RULES)
    if not heatmaps:
        return result
    grid = np.zeros((len(CATALOG), 14, 14), np.float32)
    grid[:, 4, 9] = 1.0
    return ScreeningResult.from_outputs(
        probabilities=PROBABILITIES[kind],
        quality=[1.0] + [0.0] * len(contract.QUALITY_REASONS),
        findings=[d in result.positive for d in CATALOG.ids],
        decision_code=contract.DECISIONS.index(result.decision),
        catalog=CATALOG,
        rules=RULES,
        model_name="m",
        model_version="1",
        latency_s=0.1,
        field_box=[0.1, 0.0, 0.9, 1.0],
        heatmaps=grid,
    )


def _record(patient: str | None, eye: str | None, kind: str, key: str | None = None) -> JournalRecord:
    key = key or f"{patient}-{eye}-{kind}.jpg"
    if kind == "failed":
        return JournalRecord(key=key, frames=1, patient_id=patient, eye=eye, error="x", error_type="InputError")
    return JournalRecord(key=key, frames=1, patient_id=patient, eye=eye, result=_result(kind))


@pytest.mark.parametrize(
    ("eyes", "outcome", "ungradable", "missing"),
    [
        ({"R": ["none"], "L": ["none"]}, "no_referral", [], []),
        ({"R": ["routine"], "L": ["none"]}, "refer_routine", [], []),
        ({"R": ["routine"], "L": ["urgent"]}, "refer_urgent", [], []),
        ({"R": ["ungradable"], "L": ["none"]}, "recall", ["R"], []),
        ({"R": ["ungradable"], "L": ["routine"]}, "refer_routine", ["R"], []),  # referable wins; R still called out
        ({"R": ["ungradable"], "L": ["ungradable"]}, "recall", ["R", "L"], []),
        ({"R": ["ungradable", "none"], "L": ["none"]}, "no_referral", [], []),  # a second, good photograph suffices
        ({"R": ["failed"], "L": ["none"]}, "incomplete", [], []),
        ({"R": ["failed"], "L": ["ungradable"]}, "recall", ["L"], []),
        ({"R": ["none"]}, "no_referral", [], ["L"]),
        ({"unknown": ["routine"]}, "refer_routine", [], []),
    ],
)
def test_exam_results_combine_both_eyes_when_grouped_by_patient_and_laterality(
    eyes: dict[str, list[str]], outcome: str, ungradable: list[str], missing: list[str]
) -> None:
    records = [
        _record("P1", None if eye == "unknown" else eye, kind, key=f"{eye}-{i}.jpg")
        for eye, kinds in eyes.items()
        for i, kind in enumerate(kinds)
    ]
    (exam,) = exam_results(records)
    assert (exam.patient_id, exam.outcome, exam.ungradable_eyes, exam.missing_eyes) == (
        "P1",
        outcome,
        ungradable,
        missing,
    )
    assert exam.referable == outcome.startswith("refer_")
    assert exam.message.startswith(
        {"recall": "recall for re-photography", "no_referral": "no referable", "incomplete": "incomplete"}.get(
            outcome, "refer"
        )
    )
    for eye in ungradable:
        assert {"R": "right eye", "L": "left eye"}[eye] + " ungradable (focus)" in exam.message
    assert exam.models == ["m 1"] or outcome == "incomplete" and not exam.models


def test_exam_results_group_records_without_patient_by_key_when_manifest_has_none() -> None:
    exams = exam_results([_record(None, None, "none", key="a.jpg"), _record(None, None, "urgent", key="b.jpg")])
    assert [(e.patient_id, e.outcome) for e in exams] == [("a.jpg", "no_referral"), ("b.jpg", "refer_urgent")]


# --------------------------------------------------------------------------- the schema files


def test_committed_schema_files_equal_generated_ones_when_models_unchanged() -> None:
    from predilect.client import schema

    assert schema.stale() == [], "run `predilect schema` and bump RESULT_SCHEMA_VERSION if the change is breaking"
    for name in schema.MODELS:
        data = json.loads((schema.SCHEMA_DIR / schema.file_name(name)).read_text())
        assert data["$id"].endswith(f":v{contract.RESULT_SCHEMA_VERSION}")


def test_journal_record_json_validates_against_committed_schema_when_written() -> None:
    import jsonschema

    from predilect.client import schema

    record_schema = json.loads((schema.SCHEMA_DIR / schema.file_name("journal-record")).read_text())
    exam_schema = json.loads((schema.SCHEMA_DIR / schema.file_name("exam-result")).read_text())
    records = [_record("P", "R", "ungradable"), _record("P", "L", "routine"), _record("Q", "R", "failed")]
    records.append(JournalRecord(key="h.jpg", frames=1, result=_result("urgent", heatmaps=True)))
    for record in records:
        jsonschema.validate(json.loads(record.model_dump_json()), record_schema)
    for exam in exam_results(records):
        jsonschema.validate(exam.model_dump(mode="json"), exam_schema)
    bad = json.loads(records[1].model_dump_json())
    bad["result"]["decision"] = "refer_eventually"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, record_schema)


def test_schema_check_command_exits_1_naming_file_when_schema_is_stale(tmp_path: Path, capsys) -> None:
    from predilect.client.schema_cli import main

    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0
    stale = next(tmp_path.iterdir())
    stale.write_text("{}")
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert str(stale) in capsys.readouterr().out


# --------------------------------------------------------------------------- the HTML report


class _Page(HTMLParser):
    """The report's structure: patients, eyes, image records and figures, by their data attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.patients: dict[str, dict] = {}
        self._patient: dict | None = None
        self._eye: dict | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and "data-patient" in a:
            self._patient = {"outcome": a["data-outcome"], "eyes": {}}
            self.patients[str(a["data-patient"])] = self._patient
        elif tag == "div" and "data-eye" in a and self._patient is not None:
            self._eye = {"decision": a["data-decision"], "records": [], "figures": []}
            self._patient["eyes"][str(a["data-eye"])] = self._eye
        elif tag == "div" and "data-key" in a and self._eye is not None:
            self._eye["records"].append(a.get("data-decision"))
        elif tag == "figure" and self._eye is not None:
            self._eye["figures"].append((a["data-kind"], a.get("data-disease")))
        elif tag == "img" and self._eye is not None:
            src = str(a.get("src"))
            assert src.startswith("images/"), "images are files beside the page, named relative to it"

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_report_shows_each_patient_eye_decision_and_overlay_when_rendered(tmp_path: Path, fundus_jpeg) -> None:
    from predilect.client.journal import ResultJournal
    from predilect.client.overlay import write_overlays
    from predilect.client.report_cli import main

    photos = {name: tmp_path / f"{name}.jpg" for name in ("a", "b", "c")}
    for i, path in enumerate(photos.values()):
        path.write_bytes(fundus_jpeg(700 + i))
    urgent = write_overlays(
        str(photos["a"]), photos["a"], [_result("urgent", heatmaps=True)], tmp_path / "overlays", relative_to=tmp_path
    )[0]
    assert urgent.heatmaps and urgent.heatmaps[0].overlay == f"overlays/{Path(urgent.heatmaps[0].overlay).name}"
    journal = ResultJournal(tmp_path / "results.jsonl")
    journal.open()
    for record in (
        JournalRecord(key=str(photos["a"]), frames=1, patient_id="P<1>", eye="R", result=urgent),
        JournalRecord(key=str(photos["b"]), frames=1, patient_id="P<1>", eye="L", result=_result("none")),
        JournalRecord(key=str(photos["c"]), frames=1, patient_id="P2", eye="R", result=_result("ungradable")),
        JournalRecord(key=str(photos["c"]) + "x", frames=1, patient_id="P2", eye="L", result=_result("none")),
        JournalRecord(key=str(tmp_path / "gone.jpg"), frames=1, patient_id="P3", error="bad", error_type="InputError"),
    ):
        journal.append([record])
    journal.close()
    assert main([str(tmp_path)]) == 0
    html = (tmp_path / "report" / "index.html").read_text()
    page = _Page()
    page.feed(html)
    assert set(page.patients) == {"P<1>", "P2", "P3"}, "patient ids are escaped, not interpreted"
    assert "<1>" not in html.replace("&lt;1&gt;", "")
    p1, p2, p3 = page.patients["P<1>"], page.patients["P2"], page.patients["P3"]
    assert (p1["outcome"], p2["outcome"], p3["outcome"]) == ("refer_urgent", "recall", "incomplete")
    assert {e: v["decision"] for e, v in p1["eyes"].items()} == {"R": "refer_urgent", "L": "no_referral"}
    assert p1["eyes"]["R"]["figures"] == [("photograph", None), ("overlay", "rvo")]
    assert p1["eyes"]["L"]["figures"] == [("photograph", None)]
    assert p2["eyes"]["R"]["decision"] == "ungradable" and p2["eyes"]["R"]["records"] == ["ungradable"]
    text = " ".join(page.text)
    assert "Probabilities withheld" in text and "Ungradable: focus" in text and "Not screened: bad" in text
    assert "recall for re-photography" in text and RULES.digest() in text and CATALOG.digest() in text
    assert "Retinal vein occlusion" not in text, "no catalog given and not the built-in one: ids are shown"
    assert main([str(tmp_path), "--catalog", str(_catalog_file(tmp_path)), "--out", str(tmp_path / "named")]) == 0
    named = (tmp_path / "named" / "index.html").read_text()
    assert "refer urgently (right eye: Retinal vein occlusion)" in named, "the worklist names the disease"
    assert "Retinal vein occlusion, p = 0.90 (operating point 0.50): attention map" not in named, "kind unsaid"
    assert "Retinal vein occlusion, p = 0.90 (operating point 0.50): heatmap" in named
    assert "peak at x = 658, y = 247 px of the 1024 x 768 photograph" in named, "in the photograph's own pixels"


def _catalog_file(folder: Path) -> Path:
    path = folder / "catalog-given.json"
    path.write_text(CATALOG.to_json())
    return path


def test_report_orders_worklist_by_urgency_and_counts_what_journal_holds_when_rendered(tmp_path: Path) -> None:
    from predilect.client.exam import exam_results
    from predilect.client.report import worklist

    records = [
        _record("A", "R", "none"),
        _record("B", "R", "routine"),
        _record("B", "L", "ungradable"),
        _record("C", "R", "urgent"),
        _record("D", "L", "ungradable"),
        _record("E", "R", "failed"),
    ]
    work = worklist(records, exam_results(records))
    assert [e.patient_id for e in work.exams] == ["C", "B", "D", "E", "A"], "urgent, routine, recall, incomplete, none"
    assert (work.images, work.screened, work.referable, work.urgent, work.recall) == (6, 5, 2, 1, 1)
    assert work.referable_by_disease == {"dr": 1, "rvo": 1}
    assert work.ungradable == 2 and work.ungradable_by_reason == {"focus": 2}
    assert work.refused == 1 and work.refused_by_kind == {"unreadable input": 1}


def test_report_command_exits_2_with_one_line_when_journal_missing(tmp_path: Path, capsys) -> None:
    from predilect.client.report_cli import main

    assert main([str(tmp_path / "none.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no journal" in err[0]


@pytest.mark.parametrize("command", ["report", "screen"])
def test_commands_exit_2_naming_report_extra_when_pillow_and_jinja2_missing(
    command: str, tmp_path: Path, fundus_jpeg
) -> None:
    import subprocess
    import sys

    (tmp_path / "a.jpg").write_bytes(fundus_jpeg(1))
    journal = tmp_path / "r.jsonl"
    journal.write_text(_record("P", "R", "none").model_dump_json() + "\n")
    blocker = tmp_path / "blocker" / "sitecustomize.py"
    blocker.parent.mkdir()
    blocker.write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'PIL', 'jinja2'}:\n"
        "            raise ImportError(f'{name} is not installed')\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    argv = [str(journal)] if command == "report" else [str(tmp_path / "a.jpg"), "--out", str(tmp_path / "o")]
    if command == "screen":
        argv += ["--heatmaps", "--server", "127.0.0.1:1"]
    done = subprocess.run(
        [sys.executable, "-m", "predilect.cli", command, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(blocker.parent), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'predilect[report]'" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists(), "nothing is screened without the extra"
