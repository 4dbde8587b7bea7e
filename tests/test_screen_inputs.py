"""`predilect screen` on inputs a hostile or careless folder holds: a link to a huge file, a link out of
the folder, a file that is not an image. Nothing is read past the size limit, no file byte reaches
the journal, and a link that leaves the input folder is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from predilect.client.inputs import MAX_IMAGE_BYTES
from predilect.client.screen_cli import main
from predilect.serving.server import TritonServer

_GIB = 1024**3


def test_screen_cli_keeps_under_1_gb_and_records_why_when_input_links_to_a_3_gb_file(
    triton_server: TritonServer, fundus_jpeg, tmp_path: Path
) -> None:
    huge = tmp_path / "elsewhere" / "disk.img"
    huge.parent.mkdir()
    with open(huge, "wb") as f:
        f.truncate(3 * _GIB)  # sparse: 3 GB to read, no disk used
    (tmp_path / "eye.jpg").write_bytes(fundus_jpeg(61))
    link = tmp_path / "big.jpg"
    link.symlink_to(huge)
    out = tmp_path / "r"
    measure = (
        "import resource, subprocess, sys; "
        "code = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )
    command = [sys.executable, "-m", "predilect.cli", "screen", str(link), str(tmp_path / "eye.jpg")]
    run = subprocess.run(
        [sys.executable, "-c", measure, *command, "--out", str(out), "--server", triton_server.grpc_url],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    peak_kib = int(run.stdout.strip().splitlines()[-1])
    assert peak_kib < 1024 * 1024, f"screen peaked at {peak_kib / 1024:.0f} MiB on a 3 GB input"
    journal = out / "results.jsonl"
    records = {json.loads(line)["key"]: json.loads(line) for line in journal.read_text().splitlines()}
    error = json.dumps(records[str(huge)])
    assert f"larger than the {MAX_IMAGE_BYTES // 1024 // 1024} MiB" in error and "not read" in error
    assert str((tmp_path / "eye.jpg").resolve()) in records  # the good input beside it is screened


def test_screen_cli_never_writes_file_bytes_into_journal_when_input_is_not_an_image(
    triton_server: TritonServer, tmp_path: Path
) -> None:
    secret = b"root:$6$s4ltS3cr3t$hashhashhash:19000:0:99999:7:::\n"
    (tmp_path / "shadow.jpg").write_bytes(secret * 4)
    out = tmp_path / "r"
    assert main([str(tmp_path / "shadow.jpg"), "--out", str(out), "--server", triton_server.grpc_url]) == 0
    journal = (out / "results.jsonl").read_text()
    (record,) = [json.loads(line) for line in journal.splitlines()]
    assert "not a JPEG or PNG" in record["error"]
    for fragment in ("root:", "s4lt", "S3cr3t", "hashhash", "19000"):
        assert fragment not in journal, fragment


def test_screen_cli_exits_2_naming_link_and_target_when_folder_link_leaves_it(tmp_path: Path, capsys) -> None:
    folder, outside = tmp_path / "in", tmp_path / "private"
    folder.mkdir()
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"not for screening")
    (folder / "a.jpg").symlink_to(outside / "secret.jpg")
    out = tmp_path / "r"
    assert main([str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{folder / 'a.jpg'} is a link to {outside / 'secret.jpg'}, outside the input folder" in err
    assert not out.exists()
