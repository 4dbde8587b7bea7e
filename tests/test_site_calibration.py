"""Before go-live on a camera: calibration on a site's graded photographs, and drift of a screening journal
against the model's reference, both through the real tritonserver and a repository assembled with a reference."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from predilect import contract, drift
from predilect.cli import main as predilect

SIZE = (512, 384)


def _fundus(seed: int) -> bytes:
    from serving_fixtures import make_fundus_jpeg

    return make_fundus_jpeg(seed, size=SIZE)


def _other_camera(data: bytes) -> bytes:
    """The same eye through a softer, dimmer handheld camera with stronger JPEG compression."""
    image = Image.open(io.BytesIO(data)).convert("RGB").filter(ImageFilter.GaussianBlur(2.5))
    dim = (np.asarray(image, dtype=np.float32) * np.array([0.7, 0.62, 0.6])).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(dim).save(buffer, format="JPEG", quality=40)
    return buffer.getvalue()


def _write(folder: Path, payloads: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in payloads.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="module")
def reference_server(tritonserver, tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A fused repository assembled with reference distributions from 400 validation photographs."""
    work = tmp_path_factory.mktemp("reference")
    paths = _write(work / "heldout", {f"r{seed}.jpg": _fundus(1000 + seed) for seed in range(400)})
    manifest = work / "manifest.csv"
    manifest.write_text("path,labels,split\n" + "".join(f"heldout/{p.name},normal,val\n" for p in paths))
    repository = work / "repo"
    argv = ["assemble", "--onnx", str(tiny_onnx), "--out", str(repository), "--reference-manifest", str(manifest)]
    assert predilect(argv) == 0
    with tritonserver.on_free_ports(
        model_repository=repository, log_path=work / "tritonserver.log", startup_timeout_s=180
    ) as server:
        yield server


def test_site_calibration_writes_thresholds_and_report_when_site_grades_its_photographs(
    reference_server, tmp_path: Path
) -> None:
    from PIL import Image as PILImage

    from predilect.training.phantom.degrade import degrade

    rng = np.random.default_rng(0)
    clean = {f"c{seed}.jpg": _fundus(seed) for seed in range(40)}
    blurred = {}
    for seed in range(40, 55):
        image = PILImage.open(io.BytesIO(_fundus(seed)))
        buffer = io.BytesIO()
        degrade(image, "blur", strength=1.0, rng=rng).save(buffer, format="JPEG", quality=92)
        blurred[f"b{seed}.jpg"] = buffer.getvalue()
    _write(tmp_path / "site", {**clean, **blurred})
    rows = ["path,gradable,reasons,camera,labels"]
    rows += [f"site/{n},1,,Cam S,{'dr' if i % 2 else 'normal'}" for i, n in enumerate(clean)]
    rows += [f"site/{n},0,focus,Cam S," for n in blurred]
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("\n".join(rows) + "\n")
    out = tmp_path / "calibration"
    argv = ["gradability", "--manifest", str(labelled), "--out", str(out), "--server", reference_server.grpc_url]
    assert predilect(argv) == 0
    report = json.loads((out / "site_report.json").read_text())
    assert report["count"] == 55 and report["gradable_share"]["grader"] == pytest.approx(40 / 55)
    served = report["served_confusion"]
    assert served["both_ungradable"] + served["missed"] == 15 and served["both_gradable"] + served["false_alarm"] == 40
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["blur"]["auc"] > 0.95 and checks["blur"]["targets"] == 15 and checks["blur"]["clean"] == 40
    assert checks["blur"]["chosen"] == "on the site's images" and checks["field_px"]["chosen"] == "by definition"
    assert report["drift"] is not None and {s["name"] for s in report["drift"]["series"]} >= {"quality.blur"}
    diseases = {d["disease"]: d for d in report["operating_points"]["diseases"]}
    assert diseases["dr"]["served"]["positives"] == 20 and diseases["dr"]["served"]["negatives"] == 20
    from predilect.quality import load_quality_cfg

    site = load_quality_cfg(out / "quality_calibration.json")
    assert site.thresholds["blur"] == pytest.approx(checks["blur"]["site_threshold"]) and "labelled.csv" in site.source
    text = (out / "site_report.md").read_text()
    assert "## Referral operating points" in text and "| dr |" in text


def test_site_calibration_refuses_with_one_line_when_labelled_manifest_is_wrong(reference_server, tmp_path, capsys):
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("path,gradable\nmissing.jpg,maybe\n")
    argv = [
        "gradability",
        "--manifest",
        str(labelled),
        "--out",
        str(tmp_path / "o"),
        "--server",
        reference_server.grpc_url,
    ]
    assert predilect(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "labelled.csv:2" in err and "gradable" in err


def _screen_journal(server, folder: Path, out: Path, *, camera: str) -> None:
    argv = ["screen", str(folder), "--out", str(out), "--server", server.grpc_url, "--camera", camera]
    assert predilect(argv) == 0


def test_drift_reports_stable_when_same_camera_and_alert_when_new_camera(reference_server, tmp_path: Path) -> None:
    same = {f"s{seed}.jpg": _fundus(5000 + seed) for seed in range(drift.MIN_IMAGES)}
    new = {f"n{seed}.jpg": _other_camera(_fundus(7000 + seed)) for seed in range(drift.MIN_IMAGES)}
    _write(tmp_path / "same", same)
    _write(tmp_path / "new", new)
    _screen_journal(reference_server, tmp_path / "same", tmp_path / "site", camera="Desk 1")
    _screen_journal(reference_server, tmp_path / "new", tmp_path / "site", camera="Handheld 2")
    journal = tmp_path / "site" / "results.jsonl"
    argv = ["drift", str(journal), "--by-camera", "--server", reference_server.grpc_url, "--out", str(tmp_path / "d")]
    assert predilect(argv) == 0
    report = json.loads((tmp_path / "d" / "drift.json").read_text())
    groups = {g["group"]: g for g in report["groups"]}
    # The same camera: chance-scale differences at most ("watch" is what chance alone reaches now and then
    # over fourteen series of 200 images); the new camera: alerts.
    same_camera = groups["Desk 1"]
    assert same_camera["count"] == drift.MIN_IMAGES and same_camera["level"] != "alert", same_camera
    assert groups["Handheld 2"]["level"] == "alert"
    shifted = {s["name"] for s in groups["Handheld 2"]["series"] if s["level"] == "alert"}
    assert {"quality.blur", "quality.exposure"} <= shifted
    assert predilect([*argv, "--fail-on", "alert"]) == 1
    assert "Handheld 2" in (tmp_path / "d" / "drift.md").read_text()


def test_drift_refuses_with_one_line_when_journal_holds_no_result(tmp_path: Path, capsys) -> None:
    journal = tmp_path / "empty.jsonl"
    journal.write_text("")
    reference = drift.Reference.build(
        measures={"blur": np.ones(3)}, probabilities={}, ungradable=np.zeros(3), source="t"
    )
    (tmp_path / "ref.json").write_text(reference.to_json())
    assert predilect(["drift", str(journal), "--reference", str(tmp_path / "ref.json")]) == 2
    assert "holds no screening result" in capsys.readouterr().err


def test_served_reference_is_the_one_assembled_when_discovered(reference_server) -> None:
    from predilect.client import ScreeningClient

    with ScreeningClient(reference_server.grpc_url) as client:
        served = client.served
    assert served.reference is not None
    reference = drift.Reference.from_json(served.reference)
    assert reference.count == 400 and set(reference.series) >= {f"quality.{m}" for m in contract.QUALITY_MEASURES}
