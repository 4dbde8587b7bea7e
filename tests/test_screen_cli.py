"""``predilect screen``: resumable after SIGKILL, exam results per patient, heatmap overlays, typed
records, frame-level DICOM failures, and the error path (one line, exit 2 / 3, no traceback),
against the real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from client_faces import jpeg_multiframe_dicom

from predilect import contract
from predilect.catalog import DEFAULT_CATALOG
from predilect.client import JournalRecord
from predilect.client.exam import exam_results
from predilect.client.screen_cli import main
from predilect.serving.server import TritonServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_screen_cli_records_every_input_exactly_once_when_killed_and_restarted(
    triton_server: TritonServer, fundus_jpeg, dicom_from_jpeg, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(24):
        (folder / f"p{i:02d}.jpg").write_bytes(fundus_jpeg(300 + i))
    (folder / "broken.jpg").write_bytes(b"GIF89a" + bytes(100))
    dicom_from_jpeg(folder / "p00.jpg", folder / "eye.dcm", keys={"PatientID": "PID-77"})
    for i in range(1, 9):  # the rerun screens these with 8 threads in a fresh interpreter: no import race
        dicom_from_jpeg(folder / f"p{i:02d}.jpg", folder / f"eye{i}.dcm", keys={"PatientID": f"PID-{i}"})
    inputs = {str(p.resolve()) for p in folder.iterdir()}
    results = tmp_path / "results"
    out = results / "results.jsonl"
    command = [
        sys.executable,
        "-m",
        "predilect.cli",
        "screen",
        str(folder),
        "--out",
        str(results),
        "--server",
        triton_server.grpc_url,
        "--max-in-flight",
        "1",
    ]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(_lines(out)) < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    recorded_before = len(out.read_text().splitlines())
    assert 3 <= recorded_before < len(inputs), "the run must be killed part-way"
    with out.open("ab") as f:
        f.write(b'{"key": "torn-by-the-crash"')  # as if killed in the middle of a write
    rerun = command[: command.index("--max-in-flight")]  # the default, 8 in flight
    second = subprocess.run(rerun, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr
    assert "partially initialized" not in second.stderr
    assert f"{recorded_before} already in" in second.stderr
    records = _lines(out)
    assert sorted(r["key"] for r in records) == sorted(inputs), "every input exactly once"
    by_name = {Path(r["key"]).name: r for r in records}
    assert by_name["broken.jpg"]["error_type"] == "ImageRejectedError" and by_name["broken.jpg"]["result"] is None
    assert by_name["eye.dcm"]["patient_id"] == "PID-77" and by_name["eye.dcm"]["eye"] == contract.RIGHT_EYE
    assert all(JournalRecord.model_validate(r).schema_version == contract.RESULT_SCHEMA_VERSION for r in records)
    assert by_name["eye.dcm"]["result"]["probabilities"] == pytest.approx(
        by_name["p00.jpg"]["result"]["probabilities"], abs=1e-6
    )
    assert by_name["p05.jpg"]["patient_id"] == "p05"
    assert "patients (exams)" in second.stdout and "what to do" in second.stdout
    exams = json.loads((results / "exams.json").read_text())
    assert {e["patient_id"] for e in exams} == {r["patient_id"] for r in records}
    assert by_name["eye3.dcm"]["patient_id"] == "PID-3" and by_name["eye3.dcm"]["result"] is not None
    assert out.stat().st_mode & 0o777 == 0o600, "the journal names patients: owner-only"


def test_screen_cli_exits_2_and_writes_nothing_when_another_run_holds_the_journal(
    triton_server: TritonServer, fundus_jpeg, tmp_path: Path, capsys
) -> None:
    from predilect.client.journal import ResultJournal

    (tmp_path / "a.jpg").write_bytes(fundus_jpeg(470))
    results = tmp_path / "r"
    out = results / "results.jsonl"
    holder = ResultJournal(out)  # what a first run holds while it screens
    holder.open()
    try:
        code = main([str(tmp_path / "a.jpg"), "--out", str(results), "--server", triton_server.grpc_url])
    finally:
        holder.close()
    assert code == 2
    assert "being written by another process" in capsys.readouterr().err
    assert out.read_bytes() == b""
    assert main([str(tmp_path / "a.jpg"), "--out", str(results), "--server", triton_server.grpc_url]) == 0
    assert len(out.read_text().splitlines()) == 1


def test_screen_cli_retries_on_rerun_when_server_answered_internal_error(
    triton_server: TritonServer, fundus_jpeg, tmp_path: Path, monkeypatch
) -> None:
    """An INTERNAL answer (a server-side failure, e.g. a batch-wide crash) is transient: not recorded;
    the rerun screens the input. Faked at the tritonclient boundary, the first call of each input."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(fundus_jpeg(480 + i))
    results = tmp_path / "r"
    out = results / "results.jsonl"
    real_infer = grpcclient.InferenceServerClient.infer

    def failing_infer(self, *args, **kwargs):
        raise InferenceServerException(msg="Python backend stub died", status="StatusCode.INTERNAL")

    monkeypatch.setattr(grpcclient.InferenceServerClient, "infer", failing_infer)
    assert main([str(tmp_path), "--out", str(results), "--server", triton_server.grpc_url]) == 1
    assert out.read_bytes() == b"", "INTERNAL is not the image's fault: nothing final recorded"
    monkeypatch.setattr(grpcclient.InferenceServerClient, "infer", real_infer)
    assert main([str(tmp_path), "--out", str(results), "--server", triton_server.grpc_url]) == 0
    records = [JournalRecord.model_validate_json(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and all(r.ok for r in records)


def _skin_jpeg(path: Path) -> Path:
    """A flat skin-coloured photograph: not a fundus, so the server grades it ungradable."""
    from PIL import Image

    Image.new("RGB", (800, 600), (205, 150, 125)).save(path, quality=90)
    return path


def test_screen_cli_writes_exam_per_patient_beside_journal_when_given_manifest(
    triton_server: TritonServer, fundus_jpeg, tmp_path: Path, capsys
) -> None:
    rows = ["path,patient_id,eye"]
    cases = [("A", "R"), ("A", "OS"), ("B", "right"), ("B", "L"), ("C", "od")]
    for i, (patient, eye) in enumerate(cases):
        (tmp_path / f"{i}.jpg").write_bytes(fundus_jpeg(400 + i))
        rows.append(f"{i}.jpg,{patient},{eye}")
    _skin_jpeg(tmp_path / "d-left.jpg")
    (tmp_path / "d-right.jpg").write_bytes(fundus_jpeg(410))
    rows += ["d-left.jpg,D,L", "d-right.jpg,D,R"]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    results = tmp_path / "out"
    out = results / "results.jsonl"
    assert main([str(manifest), "--out", str(results), "--server", triton_server.grpc_url]) == 0
    records = [JournalRecord.model_validate(r) for r in _lines(out)]
    eyes = {Path(r.key).name: r.eye for r in records}
    assert eyes["1.jpg"] == "L" and eyes["2.jpg"] == "R" and eyes["4.jpg"] == "R", "stored as R/L"
    written = json.loads((results / "exams.json").read_text())
    names = {d.id: d.name for d in DEFAULT_CATALOG}
    assert written == [e.model_dump(mode="json") for e in exam_results(records, names=names)], "the journal's exams"
    assert json.loads((results / "catalog.json").read_text()) == DEFAULT_CATALOG.to_dict(), "what it screened with"
    exams = {e["patient_id"]: e for e in written}
    assert set(exams) == {"A", "B", "C", "D"}
    assert exams["C"]["missing_eyes"] == ["L"] and exams["A"]["missing_eyes"] == []
    d = exams["D"]
    assert d["ungradable_eyes"] == ["L"] and "left eye ungradable (wrong image type)" in d["message"]
    right = next(e for e in d["eyes"] if e["eye"] == "R")
    assert d["outcome"] == ("recall" if right["decision"] == "no_referral" else right["decision"])
    printed = capsys.readouterr().out
    assert all(f"\n{p} " in printed for p in "ABCD") and d["message"] in printed
    assert main([str(manifest), "--out", str(results), "--server", triton_server.grpc_url]) == 0
    assert len(_lines(out)) == 7, "a rerun of a finished journal screens nothing again"


def test_screen_cli_draws_overlay_per_positive_finding_when_heatmaps_asked(
    triton_server: TritonServer, fundus_jpeg, tmp_path: Path
) -> None:
    from PIL import Image

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(fundus_jpeg(420))
    _skin_jpeg(tmp_path / "in" / "skin.jpg")
    results = tmp_path / "out"
    out, folder = results / "results.jsonl", results / "overlays"
    argv = [str(tmp_path / "in"), "--out", str(results), "--heatmaps", "--server", triton_server.grpc_url]
    assert main(argv) == 0
    by_name = {Path(r["key"]).name: JournalRecord.model_validate(r) for r in _lines(out)}
    result = by_name["a.jpg"].result
    assert result is not None and result.gradable and result.positive and result.heatmaps is not None
    assert [h.disease for h in result.heatmaps] == result.positive, "one heatmap per positive finding"
    written = sorted(folder.iterdir())
    assert sorted(results / (h.overlay or "") for h in result.heatmaps) == written, "named relative to the folder"
    assert all(h.kind is None for h in result.heatmaps), "the tiny test model does not say which map it exports"
    photograph = np.asarray(Image.open(tmp_path / "in" / "a.jpg").convert("RGB"), dtype=np.int16)
    for heatmap in result.heatmaps:
        drawn = np.asarray(Image.open(results / (heatmap.overlay or "")).convert("RGB"), dtype=np.int16)
        band = drawn.shape[0] - photograph.shape[0]  # the title band above the photograph
        assert drawn.shape[1] == photograph.shape[1] and band > 0, "drawn on the original photograph, at its size"
        overlay = drawn[band:]
        x, y = round(heatmap.peak[0] * overlay.shape[1]), round(heatmap.peak[1] * overlay.shape[0])
        assert np.abs(overlay[y - 3 : y + 4, x - 3 : x + 4] - photograph[y - 3 : y + 4, x - 3 : x + 4]).mean() > 5
        assert np.abs(drawn[:band] - 20).max() > 100, "the band carries the finding's name and probability"
    skin = by_name["skin.jpg"].result
    assert skin is not None and not skin.gradable and skin.heatmaps == [], "no finding, no heatmap when ungradable"


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_screen_cli_exits_2_with_one_line_when_tls_root_cert_is_missing(fundus_jpeg, tmp_path: Path, capsys) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(fundus_jpeg(450))
    argv = ["screen", str(tmp_path / "imgs"), "--out", str(tmp_path / "r")]
    argv += ["--tls-root-cert", str(tmp_path / "missing.pem")]
    assert main(argv[1:]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == f"predilect screen: cannot read TLS file {tmp_path / 'missing.pem'}: No such file or directory"
    done = subprocess.run([sys.executable, "-m", "predilect.cli", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and _one_line(done.stderr) == line
    assert not (tmp_path / "r").exists(), "nothing is written before the options are known to work"


def test_screen_cli_exits_2_naming_line_when_manifest_eye_is_unknown(tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,patient_id,eye\na.jpg,A,R\nb.jpg,A,both\n")
    assert main([str(manifest), "--out", str(tmp_path / "r")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{manifest} line 3" in line and "OD/OS" in line


def test_screen_cli_exits_3_and_records_nothing_when_server_unreachable(fundus_jpeg, tmp_path: Path, capsys) -> None:
    (tmp_path / "a.jpg").write_bytes(fundus_jpeg(451))
    out = tmp_path / "r"
    code = main(
        [str(tmp_path / "a.jpg"), "--out", str(out), "--server", f"127.0.0.1:{free_port()}", "--timeout-s", "2"]
    )
    assert code == 3
    line = _one_line(capsys.readouterr().err)
    assert "no Triton server answers at 127.0.0.1:" in line and "connection refused" in line.lower(), line
    assert not out.exists(), "a failed connection writes nothing: no folder, no empty journal"


def test_screen_cli_records_frame1_result_and_frame2_error_when_dicom_fails_on_frame_2(
    triton_server: TritonServer, fundus_jpeg, tmp_path: Path
) -> None:
    path = jpeg_multiframe_dicom([fundus_jpeg(452), b"\xff\xd8\xff\xe0" + bytes(30)], tmp_path / "f2.dcm")
    out = tmp_path / "r" / "results.jsonl"
    assert main([str(path), "--out", str(out.parent), "--server", triton_server.grpc_url]) == 0
    first, second = (JournalRecord.model_validate_json(line) for line in out.read_text().splitlines())
    assert (first.frame, first.frames, first.ok, first.patient_id, first.eye) == (1, 2, True, "PID-2F", "L")
    assert (second.frame, second.frames, second.error_type) == (2, 2, "UnsupportedDicomError")
    assert first.sop_instance_uid == second.sop_instance_uid == first.result.sop_instance_uid


def test_screen_cli_leaves_inputs_unrecorded_for_rerun_when_server_side_deadline_passes(
    triton_server: TritonServer, fundus_jpeg, tmp_path: Path
) -> None:
    from predilect.client import ScreeningClient
    from predilect.client.batch_inputs import DEFAULT_FILENAME_PATTERN, FilenamePattern, collect_entries
    from predilect.client.journal import ResultJournal
    from predilect.client.progress import Progress
    from predilect.client.screen_cli import _run

    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(fundus_jpeg(460 + i))
    entries = collect_entries([tmp_path])
    journal = ResultJournal(tmp_path / "r.jsonl")
    journal.open()
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client:
        progress = Progress(len(entries), stream=open(os.devnull, "w"))  # noqa: SIM115
        given = {"pattern": FilenamePattern.parse(DEFAULT_FILENAME_PATTERN), "catalog": client.catalog}
        assert _run(client, entries, journal, progress, 2, timeout_s=1e-4, **given) == 3
        assert journal.records == [], "a deadline is the server's failure: nothing recorded, a rerun retries"
        assert _run(client, entries, journal, progress, 2, timeout_s=None, **given) == 0
    journal.close()
    assert sorted(r.key for r in journal.records) == sorted(e.key for e in entries)


def test_screen_cli_says_heatmaps_are_not_drawn_when_journal_is_finished_without_them(
    triton_server: TritonServer, fundus_jpeg, tmp_path: Path, capsys
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(fundus_jpeg(420))
    results = tmp_path / "out"
    argv = [str(tmp_path / "in"), "--out", str(results), "--server", triton_server.grpc_url]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--heatmaps"]) == 2, "nothing to screen and nothing drawn: not a silent success"
    line = _one_line(capsys.readouterr().err)
    assert "every input is already in" in line and "--heatmaps draws overlays only for inputs screened now" in line
    assert "new --out folder" in line and not (results / "overlays").exists()


@pytest.mark.parametrize(
    ("server", "cause"),
    [
        ("no-such-host.invalid:8001", "cannot resolve the host name 'no-such-host.invalid'"),
        ("localhost", f"localhost:{contract.DEFAULT_GRPC_PORT}"),  # not gRPC's 443
        ("http://localhost:8001", "without a scheme"),
    ],
)
def test_screen_cli_names_the_real_cause_in_one_line_when_server_address_is_wrong(
    server: str, cause: str, fundus_jpeg, tmp_path: Path, capsys
) -> None:
    (tmp_path / "a.jpg").write_bytes(fundus_jpeg(453))
    out = tmp_path / "r"
    code = main([str(tmp_path / "a.jpg"), "--out", str(out), "--server", server, "--timeout-s", "2"])
    line = _one_line(capsys.readouterr().err)
    assert code in (2, 3) and cause in line and "not ready" not in line and ":443" not in line, line
    assert not out.exists(), "nothing written"


def test_screen_cli_refuses_out_that_names_a_file_when_given_journal_name(fundus_jpeg, tmp_path: Path, capsys) -> None:
    (tmp_path / "a.jpg").write_bytes(fundus_jpeg(454))
    assert main([str(tmp_path / "a.jpg"), "--out", str(tmp_path / "results.jsonl")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--out is a folder" in line and "results.jsonl" in line
