"""DICOM in and out as a PACS sees it: DCMTK's img2dcm and storescu send, the gateway screens, the SR it
forwards and writes is read back, validated by dciodvfy, with its character set, laterality and SCOORDs;
and the README's DCMTK steps run as written."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom

from predilect.client import ScreeningClient
from predilect.dicom.gateway import DicomGateway, GatewayConfig, RemoteAE
from predilect.serving.server import TritonServer, free_port

ROOT = Path(__file__).resolve().parent.parent
for tool in ("img2dcm", "storescu", "dcmdump", "dciodvfy"):
    if shutil.which(tool) is None:
        raise RuntimeError(f"{tool} is missing: `make system-deps` installs DCMTK and dicom3tools")
FUNDUS_CAMERA = [
    "-k",
    "AcquisitionDeviceTypeCodeSequence[0].CodeValue=409899009",
    "-k",
    "AcquisitionDeviceTypeCodeSequence[0].CodingSchemeDesignator=SCT",
    "-k",
    "AcquisitionDeviceTypeCodeSequence[0].CodeMeaning=Fundus camera",
]
NON_LATIN_NAME = "山田^太郎"
EM_DASH = "\u2014"


def _img2dcm(jpeg: Path, out: Path, *keys: str) -> Path:
    command = ["img2dcm", "-oph", *FUNDUS_CAMERA]
    for key in keys:
        command += ["-k", key]
    subprocess.run([*command, str(jpeg), str(out)], check=True, capture_output=True, timeout=60)
    return out


def _storescu(port: int, files: list[Path]) -> subprocess.CompletedProcess:
    command = ["storescu", "-xy", "-R", "-aet", "MODALITY1", "-aec", "PREDILECT", "127.0.0.1", str(port)]
    return subprocess.run([*command, *map(str, files)], capture_output=True, text=True, timeout=60)


def _dciodvfy_errors(path: Path) -> list[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def _items(dataset) -> list:
    """Every content item of an SR, depth first."""
    found = []
    for item in dataset.get("ContentSequence", []):
        found.append(item)
        found.extend(_items(item))
    return found


def _meaning(item) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


class _SrArchive:
    """A pynetdicom storage SCP standing in for the PACS that receives the gateway's SRs."""

    def __init__(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]  # made at import

        self.received: list = []
        self.port = free_port()
        ae = AE(ae_title="ARCHIVE")
        ae.add_supported_context(ComprehensiveSRStorage)
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        self.received.append(event.dataset)
        return 0x0000

    def close(self) -> None:
        self._server.shutdown()


def test_gateway_sr_round_trips_charset_laterality_and_peaks_when_dcmtk_sends(
    triton_server: TritonServer, fundus_jpeg, tmp_path: Path
) -> None:
    from PIL import Image

    (tmp_path / "fundus.jpg").write_bytes(fundus_jpeg(950))
    Image.new("RGB", (800, 600), (205, 150, 125)).save(tmp_path / "skin.jpg", quality=90)  # ungradable
    fundus = _img2dcm(
        tmp_path / "fundus.jpg",
        tmp_path / "fundus.dcm",
        "SpecificCharacterSet=ISO_IR 192",
        f"PatientName={NON_LATIN_NAME}",
        "PatientID=PID-JP-1",
        "ImageLaterality=L",
    )
    skin = _img2dcm(tmp_path / "skin.jpg", tmp_path / "skin.dcm", "PatientID=PID-2", "ImageLaterality=R")
    archive = _SrArchive()
    config = GatewayConfig(
        incoming_dir=tmp_path / "incoming",
        results_dir=tmp_path / "results",
        port=free_port(),
        allowed_calling_aets=("MODALITY1",),
        min_free_bytes=1,
        forward_to=RemoteAE("127.0.0.1", archive.port, "ARCHIVE"),
    )
    try:
        with (
            _no_warnings(),
            ScreeningClient(triton_server.grpc_url, timeout_s=60) as client,
            DicomGateway(client, config) as gateway,
        ):
            sent = _storescu(gateway.port, [fundus, skin])
            assert sent.returncode == 0, sent.stderr
            assert gateway.wait_idle(timeout_s=120)
    finally:
        archive.close()
    written = sorted((tmp_path / "results").glob("*.sr.dcm"))
    assert len(written) == 2 and len(archive.received) == 2, "each SR written and forwarded to the archive"
    by_uid = {}
    for path in written:
        assert _dciodvfy_errors(path) == [], f"dciodvfy finds errors in {path.name}"
        report = pydicom.dcmread(path)
        evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        by_uid[str(evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)] = report
    source_fundus, source_skin = pydicom.dcmread(fundus), pydicom.dcmread(skin)
    positive, ungradable = by_uid[str(source_fundus.SOPInstanceUID)], by_uid[str(source_skin.SOPInstanceUID)]
    for report in (positive, ungradable):
        assert report.SpecificCharacterSet == "ISO_IR 192", "the character set is declared"
    assert str(positive.PatientName) == NON_LATIN_NAME, "a non-Latin name round-trips"
    texts = [str(i.TextValue) for i in _items(ungradable) if i.ValueType == "TEXT"]
    assert f"ungradable {EM_DASH} wrong image type" in texts, texts
    laterality = {
        uid: [str(i.ConceptCodeSequence[0].CodeMeaning) for i in _items(r) if _meaning(i) == "Laterality"]
        for uid, r in by_uid.items()
    }
    assert laterality[str(source_fundus.SOPInstanceUID)] == ["Left"], "the source's ImageLaterality"
    assert laterality[str(source_skin.SOPInstanceUID)] == ["Right"]
    findings = [i for i in _items(positive) if i.ValueType == "CODE" and _meaning(i) == "Finding"]
    assert findings, "the fundus photograph has findings (the tiny model's)"
    for finding in findings:
        (scoord,) = [i for i in _items(finding) if i.ValueType == "SCOORD"]
        x, y = (float(v) for v in scoord.GraphicData)
        assert scoord.GraphicType == "POINT" and 0 <= x <= source_fundus.Columns and 0 <= y <= source_fundus.Rows
        (image,) = [i for i in _items(scoord) if i.ValueType == "IMAGE"]
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source_fundus.SOPInstanceUID
    forwarded = {str(r.SOPInstanceUID) for r in archive.received}
    assert forwarded == {str(r.SOPInstanceUID) for r in by_uid.values()}, "the archive got the same SRs"


class _no_warnings:
    """No warning (pydicom's character-set fallbacks, highdicom's) while the gateway screens and writes."""

    def __enter__(self):
        import warnings

        self._catcher = warnings.catch_warnings(record=True)
        self.caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catcher.__exit__(*exc)
        if exc[0] is None:
            assert [str(w.message) for w in self.caught] == []


def _readme_block(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- readme-dicom: {name} -->\n```bash\n(.*?)```", text, re.DOTALL)
    assert found is not None, f"README.md has no readme-dicom {name} block"
    return found.group(1)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_readme_dicom_steps_run_as_written_when_a_server_is_up(
    triton_server: TritonServer, fundus_jpeg, tmp_path: Path
) -> None:
    port = free_port()

    def as_here(block: str) -> str:  # the test's server and port for the README's
        return block.replace("localhost:8001", triton_server.grpc_url).replace("11112", str(port))

    (tmp_path / "fundus.jpg").write_bytes(fundus_jpeg(960))
    bin_dir = str(Path(sys.executable).parent)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    gateway = subprocess.Popen(
        ["bash", "-c", "exec " + as_here(_readme_block("gateway")).strip()],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert gateway.poll() is None and time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.2)
        script = "set -euo pipefail\n" + as_here(_readme_block("send"))
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
        )
        (tmp_path / "readme-steps.out").write_text(done.stdout)  # what the README shows of it
        assert done.returncode == 0, done.stdout + done.stderr
        assert "ISO_IR 192" in done.stdout and "Laterality" in done.stdout and "GraphicData" in done.stdout
        assert "Error" not in done.stdout + done.stderr.replace("Error -", ""), done.stderr
        assert (tmp_path / "results" / "report" / "index.html").is_file()
        assert "images/" in (tmp_path / "results" / "report" / "index.html").read_text()
    finally:
        gateway.send_signal(signal.SIGTERM)
        out, err = gateway.communicate(timeout=60)
    assert gateway.returncode == 0, err
    assert "Warning" not in err and "UserWarning" not in err, f"no warning per instance: {err}"
