"""Manifest reading, writing and validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from predilect.catalog import DEFAULT_CATALOG, Catalog, Disease
from predilect.training.manifest import Record, label_counts, label_matrix, read_manifest, write_manifest

HEADER = "path,patient_id,eye,split,labels," + ",".join(DEFAULT_CATALOG.ids)


def _image(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "images" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not read by the manifest")
    return path


def _records(tmp_path: Path) -> list[Record]:
    return [
        Record(_image(tmp_path, "a.jpg"), "P0001", "R", "train", frozenset({"dr", "rvo"})),
        Record(_image(tmp_path, "b.jpg"), "P0001", "L", "train", frozenset()),
        Record(_image(tmp_path, "c.jpg"), "P0002", "R", "heldout", frozenset({"glaucoma"})),
    ]


def _write(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    _image(tmp_path, "a.jpg")
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_read_manifest_returns_same_records_when_written_by_write_manifest(tmp_path):
    records = _records(tmp_path)
    path = write_manifest(tmp_path / "manifest.csv", records, catalog=DEFAULT_CATALOG)
    assert read_manifest(path) == records


def test_write_manifest_writes_relative_paths_and_label_columns_when_records_absolute(tmp_path):
    path = write_manifest(tmp_path / "manifest.csv", _records(tmp_path), catalog=DEFAULT_CATALOG)
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER
    assert lines[1] == "images/a.jpg,P0001,R,train,dr;rvo,1,0,0,0,1,0"
    assert lines[2] == "images/b.jpg,P0001,L,train,normal,0,0,0,0,0,0"


def test_read_manifest_finds_images_when_run_from_another_directory(tmp_path, monkeypatch):
    path = write_manifest(tmp_path / "sub" / "manifest.csv", _records(tmp_path), catalog=DEFAULT_CATALOG)
    monkeypatch.chdir(tmp_path / "images")
    assert [r.path.name for r in read_manifest(path)] == ["a.jpg", "b.jpg", "c.jpg"]
    assert all(r.path.is_absolute() for r in read_manifest(path))


def test_read_manifest_keeps_only_split_when_split_given(tmp_path):
    path = write_manifest(tmp_path / "manifest.csv", _records(tmp_path), catalog=DEFAULT_CATALOG)
    assert [r.patient_id for r in read_manifest(path, split="heldout")] == ["P0002"]
    assert len(read_manifest(path, split="train")) == 2


def test_read_manifest_raises_naming_line_when_disease_id_unknown(tmp_path):
    path = _write(tmp_path, "images/a.jpg,P1,R,train,dr,1,0,0,0,0,0", "images/a.jpg,P1,L,train,cataract,0,0,0,0,0,0")
    with pytest.raises(ValueError, match=r"line 3.*cataract"):
        read_manifest(path)


@pytest.mark.parametrize(
    "row, message",
    [
        pytest.param("images/a.jpg,P1,R,train,dr,0,0,0,0,0,0", r"line 2.*dr=0", id="label-column-disagrees"),
        pytest.param("images/missing.jpg,P1,R,train,normal,0,0,0,0,0,0", r"line 2.*missing\.jpg", id="image-missing"),
        pytest.param("images/a.jpg,P1,R,train,normal;dr,1,0,0,0,0,0", "line 2", id="normal-mixed-with-disease"),
        pytest.param("images/a.jpg,P1,X,train,normal,0,0,0,0,0,0", r"line 2.*eye", id="eye-invalid"),
        pytest.param("images/a.jpg,P1,R,train,normal,0,0,0", "line 2", id="missing-cells"),
    ],
)
def test_read_manifest_raises_naming_line_when_row_invalid(tmp_path, row, message):
    path = _write(tmp_path, row)
    with pytest.raises(ValueError, match=message):
        read_manifest(path)


def test_read_manifest_raises_when_header_does_not_match_catalog(tmp_path):
    path = _write(
        tmp_path,
        "images/a.jpg,P1,R,train,normal,0,0,0,0,0",
        header="path,patient_id,eye,split,labels,dr,dme,amd,glaucoma,rvo",
    )
    with pytest.raises(ValueError, match="header"):
        read_manifest(path)


def test_write_manifest_raises_when_label_not_in_catalog(tmp_path):
    small = Catalog(diseases=(Disease("dr", "DR", "."),))
    with pytest.raises(ValueError, match="rvo"):
        write_manifest(tmp_path / "m.csv", _records(tmp_path)[:1], catalog=small)


def test_label_matrix_follows_catalog_order_when_records_multilabel(tmp_path):
    matrix = label_matrix(_records(tmp_path), DEFAULT_CATALOG)
    assert matrix.dtype == np.float32 and matrix.shape == (3, len(DEFAULT_CATALOG))
    expected = np.zeros((3, 6), np.float32)
    expected[0, [0, 4]] = 1
    expected[2, 3] = 1
    np.testing.assert_array_equal(matrix, expected)


def test_label_counts_counts_positives_per_split_when_records_given(tmp_path):
    counts = label_counts(_records(tmp_path), DEFAULT_CATALOG)
    assert counts["train"]["images"] == 2 and counts["train"]["normal"] == 1 and counts["train"]["rvo"] == 1
    assert counts["heldout"]["glaucoma"] == 1 and counts["heldout"]["dr"] == 0


def test_record_raises_when_normal_given_as_label(tmp_path):
    with pytest.raises(ValueError, match="normal"):
        Record(tmp_path / "x.jpg", "P1", "R", "train", frozenset({"normal"}))


@pytest.mark.parametrize("cell, code", [("OD", "R"), ("os", "L"), ("Right", "R"), ("L", "L")])
def test_read_manifest_normalises_eye_when_spelled_as_dicom_or_words(tmp_path, cell, code):
    path = _write(tmp_path, f"images/a.jpg,P1,{cell},train,normal,0,0,0,0,0,0")
    assert read_manifest(path)[0].eye == code
