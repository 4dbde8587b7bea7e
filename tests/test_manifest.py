"""Manifest v2: reading, writing and validation (every error names the file and line)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from predilect.catalog import DEFAULT_CATALOG, Catalog, Disease
from predilect.manifest import (
    SPLITS,
    ManifestError,
    Record,
    assign_split,
    label_counts,
    label_matrix,
    read_manifest,
    write_manifest,
)

FLAGS = ",".join(DEFAULT_CATALOG.ids)
V1_HEADER = "path,patient_id,eye,split,labels," + FLAGS


def _flags(*on: str) -> str:
    """The catalog's flag cells of a row: 1 for the ids in ``on``."""
    return ",".join("1" if d in on else "0" for d in DEFAULT_CATALOG.ids)


def _image(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "images" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not read by the manifest")
    return path


def _records(tmp_path: Path) -> list[Record]:
    return [
        Record(_image(tmp_path, "a.jpg"), frozenset({"dr", "rvo"}), "P0001", "R", "train", {"camera": "topcon"}),
        Record(_image(tmp_path, "b.jpg"), frozenset(), "P0001", "L", "train", {"camera": "canon"}),
        Record(_image(tmp_path, "c.jpg"), frozenset({"glaucoma"}), "P0002", "R", "test", {"camera": "topcon"}),
        Record(_image(tmp_path, "d.jpg"), frozenset({"amd"}), None, None, "val"),
    ]


def _write(tmp_path: Path, header: str, *rows: str) -> Path:
    _image(tmp_path, "a.jpg")
    _image(tmp_path, "b.jpg")
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- round trip, layout


def test_read_manifest_returns_same_records_when_written_by_write_manifest(tmp_path):
    records = _records(tmp_path)
    path = write_manifest(tmp_path / "manifest.csv", records, catalog=DEFAULT_CATALOG)
    assert read_manifest(path) == records


def test_write_manifest_writes_relative_paths_flags_and_extras_when_records_absolute(tmp_path):
    path = write_manifest(tmp_path / "manifest.csv", _records(tmp_path), catalog=DEFAULT_CATALOG)
    lines = path.read_text().splitlines()
    assert lines[0] == V1_HEADER + ",camera"
    assert lines[1] == "images/a.jpg,P0001,R,train,dr;rvo," + _flags("dr", "rvo") + ",topcon"
    assert lines[4] == "images/d.jpg,,,val,amd," + _flags("amd") + ","


def test_write_manifest_omits_flag_columns_when_label_columns_false(tmp_path):
    path = write_manifest(tmp_path / "m.csv", _records(tmp_path)[:1], label_columns=False)
    assert path.read_text().splitlines()[0] == "path,patient_id,eye,split,labels,camera"
    assert read_manifest(path)[0].labels == {"dr", "rvo"}


def test_read_manifest_finds_images_when_run_from_another_directory(tmp_path, monkeypatch):
    path = write_manifest(tmp_path / "sub" / "manifest.csv", _records(tmp_path), catalog=DEFAULT_CATALOG)
    monkeypatch.chdir(tmp_path / "images")
    assert [r.path.name for r in read_manifest(path)] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert all(r.path.is_absolute() for r in read_manifest(path))


@pytest.mark.parametrize("split, expected", [("test", ["c.jpg"]), ("heldout", ["c.jpg"]), ("val", ["d.jpg"])])
def test_read_manifest_keeps_only_split_when_split_given(tmp_path, split, expected):
    path = write_manifest(tmp_path / "manifest.csv", _records(tmp_path), catalog=DEFAULT_CATALOG)
    assert [r.path.name for r in read_manifest(path, split=split)] == expected


def test_read_manifest_reads_legacy_heldout_as_test_when_manifest_is_v1(tmp_path):
    path = _write(tmp_path, V1_HEADER, "images/a.jpg,P1,R,heldout,dr," + _flags("dr"))
    assert read_manifest(path)[0].split == "test"


def test_read_manifest_accepts_minimal_columns_in_any_order_when_optional_ones_absent(tmp_path):
    path = _write(tmp_path, "labels,path", "dme;dr,images/a.jpg", "normal,images/b.jpg")
    records = read_manifest(path)
    assert [r.labels for r in records] == [{"dr", "dme"}, set()]
    assert all(r.patient_id is None and r.eye is None and r.split in SPLITS for r in records)


def test_read_manifest_keeps_unknown_columns_in_extra_when_present(tmp_path):
    path = _write(tmp_path, "path,labels,camera,severity", "images/a.jpg,dr,nidek,mild")
    (record,) = read_manifest(path)
    assert dict(record.extra) == {"camera": "nidek", "severity": "mild"}


def test_read_manifest_reads_subset_of_flag_columns_when_only_some_present(tmp_path):
    path = _write(tmp_path, "path,labels,dr,amd", "images/a.jpg,dr,1,0")
    assert read_manifest(path)[0].labels == {"dr"}


def test_read_manifest_accepts_byte_order_mark_and_blank_lines_when_saved_by_spreadsheet(tmp_path):
    _image(tmp_path, "a.jpg")
    path = tmp_path / "m.csv"
    path.write_bytes("\ufeffpath,labels\r\n\r\nimages/a.jpg,dr\r\n".encode())
    assert read_manifest(path)[0].labels == {"dr"}


@pytest.mark.parametrize("cell, code", [("OD", "R"), ("os", "L"), ("Right", "R"), ("L", "L"), ("", None)])
def test_read_manifest_normalises_eye_when_spelled_as_dicom_or_words(tmp_path, cell, code):
    path = _write(tmp_path, "path,eye,labels", f"images/a.jpg,{cell},normal")
    assert read_manifest(path)[0].eye == code


# ----------------------------------------------------------------------------- split assignment


def test_read_manifest_assigns_split_by_patient_when_split_column_missing(tmp_path):
    rows = []
    for i in range(60):
        for eye in ("R", "L"):
            _image(tmp_path, f"{i}{eye}.jpg")
            rows.append(f"images/{i}{eye}.jpg,P{i},{eye},normal")
    path = _write(tmp_path, "path,patient_id,eye,labels", *rows)
    records = read_manifest(path)
    by_patient: dict[str, set[str]] = {}
    for r in records:
        by_patient.setdefault(str(r.patient_id), set()).add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())
    assert set(Counter(r.split for r in records)) == set(SPLITS)
    assert [r.split for r in read_manifest(path)] == [r.split for r in records]  # deterministic


def test_assign_split_follows_fractions_when_many_keys():
    counts = Counter(assign_split(f"patient-{i}") for i in range(20000))
    assert abs(counts["train"] / 20000 - 0.8) < 0.01 and abs(counts["test"] / 20000 - 0.1) < 0.01


def test_read_manifest_assigns_split_from_path_when_patient_unknown_and_split_cell_empty(tmp_path):
    path = _write(tmp_path, "path,split,labels", "images/a.jpg,,normal")
    assert read_manifest(path)[0].split == assign_split("images/a.jpg")


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "header, rows, message",
    [
        pytest.param(V1_HEADER, ["images/a.jpg,P1,R,train,dr," + _flags()], r"line 2: .*dr=0", id="flag-disagrees"),
        pytest.param(
            V1_HEADER, ["images/a.jpg,P1,R,train,dr,2" + _flags()[1:]], r"line 2: .*0 or 1", id="flag-not-binary"
        ),
        pytest.param("path,labels", ["images/a.jpg,dr", "images/b.jpg,cataract"], r"line 3: .*cataract", id="unknown"),
        pytest.param("path,labels", ["images/missing.jpg,normal"], r"line 2: .*missing\.jpg", id="image-missing"),
        pytest.param("path,labels", ["images/a.jpg,normal;dr"], r"line 2: .*mix", id="normal-mixed"),
        pytest.param("path,labels", ["images/a.jpg,"], r"line 2: .*empty labels", id="labels-empty"),
        pytest.param("path,labels", ["images/a.jpg,dr;;amd"], r"line 2: .*empty disease id", id="labels-gap"),
        pytest.param("path,labels", [",dr"], r"line 2: empty path", id="path-empty"),
        pytest.param("path,eye,labels", ["images/a.jpg,X,normal"], r"line 2: .*eye", id="eye-invalid"),
        pytest.param("path,split,labels", ["images/a.jpg,dev,normal"], r"line 2: .*split", id="split-invalid"),
        pytest.param(V1_HEADER, ["images/a.jpg,P1,R,train,normal,0,0,0"], r"line 2: wrong number", id="few-cells"),
        pytest.param("path,labels", ["images/a.jpg,dr,extra"], r"line 2: wrong number", id="many-cells"),
        pytest.param("path,labels", ["images/a.jpg,dr", "images/a.jpg,dr"], r"line 3: .*twice.*line 2", id="dup"),
        pytest.param(
            "path,patient_id,split,labels",
            ["images/a.jpg,P1,train,dr", "images/b.jpg,P1,test,normal"],
            r"line 3: patient 'P1'.*line 2",
            id="patient-leak",
        ),
        pytest.param("path,split", ["images/a.jpg,train"], r"line 1: .*labels", id="header-no-labels"),
        pytest.param("path,labels,labels", ["images/a.jpg,dr,dr"], r"line 1: .*duplicated", id="header-dup"),
        pytest.param("", [], r"line 1: empty manifest", id="empty-file"),
        pytest.param("path,labels", ['"images/a.jpg,dr'], r"line \d+: malformed CSV", id="unclosed-quote"),
    ],
)
def test_read_manifest_raises_naming_file_and_line_when_manifest_malformed(tmp_path, header, rows, message):
    path = _write(tmp_path, header, *rows)
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_read_manifest_raises_naming_file_when_not_utf8(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"path,labels\n\xff\xfe,dr\n")
    with pytest.raises(ManifestError, match=r"m\.csv.*UTF-8"):
        read_manifest(path)


def test_read_manifest_raises_when_split_argument_unknown(tmp_path):
    path = _write(tmp_path, "path,labels", "images/a.jpg,dr")
    with pytest.raises(ManifestError, match="split"):
        read_manifest(path, split="dev")


def test_write_manifest_raises_when_label_not_in_catalog(tmp_path):
    small = Catalog(diseases=(Disease("dr", "DR", ("d",)),))
    with pytest.raises(ManifestError, match="rvo"):
        write_manifest(tmp_path / "m.csv", _records(tmp_path)[:1], catalog=small)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"labels": frozenset({"normal"})}, "normal", id="normal-as-label"),
        pytest.param({"eye": "OD"}, "eye", id="eye-not-canonical"),
        pytest.param({"split": "dev"}, "split", id="split-unknown"),
        pytest.param({"patient_id": ""}, "patient_id", id="patient-empty"),
        pytest.param({"extra": {"split": "x"}}, "clash", id="extra-clashes"),
    ],
)
def test_record_raises_when_field_invalid(tmp_path, kwargs, message):
    with pytest.raises(ManifestError, match=message):
        Record(**{"path": tmp_path / "x.jpg", "labels": frozenset(), **kwargs})


def test_record_stores_test_when_built_with_legacy_heldout(tmp_path):
    assert Record(tmp_path / "x.jpg", frozenset(), split="heldout").split == "test"


# ----------------------------------------------------------------------------- matrices


def test_label_matrix_follows_catalog_order_when_records_multilabel(tmp_path):
    matrix = label_matrix(_records(tmp_path), DEFAULT_CATALOG)
    assert matrix.dtype == np.float32 and matrix.shape == (4, len(DEFAULT_CATALOG))
    expected = np.zeros((4, len(DEFAULT_CATALOG)), np.float32)
    ids = DEFAULT_CATALOG.ids
    expected[0, [ids.index("dr"), ids.index("rvo")]] = 1
    expected[2, ids.index("glaucoma")] = 1
    expected[3, ids.index("amd")] = 1
    np.testing.assert_array_equal(matrix, expected)


def test_label_counts_counts_positives_per_split_when_records_given(tmp_path):
    counts = label_counts(_records(tmp_path), DEFAULT_CATALOG)
    assert counts["train"]["images"] == 2 and counts["train"]["normal"] == 1 and counts["train"]["rvo"] == 1
    assert counts["test"]["glaucoma"] == 1 and counts["test"]["dr"] == 0
