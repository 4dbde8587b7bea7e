"""``predilect screen``: resumable after SIGKILL, per-patient aggregate, against the real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from predilect.client.screen_cli import main
from predilect.serving.server import TritonServer

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
    inputs = {str(p.resolve()) for p in folder.iterdir()}
    out = tmp_path / "results.jsonl"
    command = [
        sys.executable,
        "-m",
        "predilect.cli",
        "screen",
        str(folder),
        "--out",
        str(out),
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
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert f"{recorded_before} already in" in second.stderr
    records = _lines(out)
    assert sorted(r["key"] for r in records) == sorted(inputs), "every input exactly once"
    by_name = {Path(r["key"]).name: r for r in records}
    assert by_name["broken.jpg"]["error_type"] == "ImageRejectedError" and by_name["broken.jpg"]["result"] is None
    assert by_name["eye.dcm"]["patient_id"] == "PID-77" and by_name["eye.dcm"]["eye"] == "right"
    assert by_name["eye.dcm"]["result"]["probabilities"] == pytest.approx(
        by_name["p00.jpg"]["result"]["probabilities"], abs=1e-6
    )
    assert by_name["p05.jpg"]["patient_id"] == "p05"
    assert "patients referable (any eye)" in second.stdout


def test_screen_cli_aggregates_any_eye_referable_per_patient_when_given_manifest(
    triton_server: TritonServer, fundus_jpeg, tmp_path: Path, capsys
) -> None:
    rows = ["path,patient_id,eye"]
    for i, (patient, eye) in enumerate([("A", "R"), ("A", "L"), ("B", "R"), ("B", "L"), ("C", "R")]):
        (tmp_path / f"{i}.jpg").write_bytes(fundus_jpeg(400 + i))
        rows.append(f"{i}.jpg,{patient},{eye}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out, patients_out = tmp_path / "out.jsonl", tmp_path / "patients.json"
    code = main(
        [str(manifest), "--out", str(out), "--patients-out", str(patients_out), "--server", triton_server.grpc_url]
    )
    assert code == 0
    records = _lines(out)
    assert len(records) == 5 and {r["eye"] for r in records} == {"right", "left"}
    patients = {p["patient_id"]: p for p in json.loads(patients_out.read_text())}
    assert set(patients) == {"A", "B", "C"}
    for patient_id, summary in patients.items():
        mine = [r for r in records if r["patient_id"] == patient_id]
        assert summary["any_eye_referable"] == any(r["result"]["referable"] for r in mine)
        assert summary["images"] == len(mine)
    assert "patients" in capsys.readouterr().out
    assert main([str(manifest), "--out", str(out), "--server", triton_server.grpc_url]) == 0
    assert len(_lines(out)) == 5, "a rerun of a finished journal screens nothing again"
