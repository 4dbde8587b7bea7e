"""Dataset adapters read tiny fixtures in each data set's exact native layout (tests/fixtures/datasets)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from predilect.catalog import DEFAULT_CATALOG, Catalog, Disease
from predilect.manifest import SPLITS, read_manifest, write_manifest
from predilect.training.datasets.adapters import (
    ADAPTERS,
    AdapterResult,
    DatasetLayoutError,
    aptos,
    messidor,
    multieye,
    oct_public,
    odir,
    read_aptos,
    read_messidor2,
    read_multieye,
    read_native,
    read_odir,
    read_rfmid,
    rfmid,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "datasets"
MAPPINGS = [m.MAPPING for m in (aptos, messidor, multieye, odir, rfmid)]
MAPPINGS += [oct_public.KERMANY_MAPPING, oct_public.OCTDL_MAPPING, oct_public.OCTID_MAPPING]
TARGETS = sorted({t for mapping in MAPPINGS for ts in mapping.values() for t in ts})
CATALOG = Catalog(diseases=tuple(Disease(i, i, (f"{i} description",)) for i in TARGETS))
"""Every catalog id any mapping table targets, so the fixtures map fully."""


def _by_name(records):
    return {r.path.name: r for r in records}


# ----------------------------------------------------------------------------- each adapter on its fixture


def test_read_odir_labels_each_eye_from_its_keywords_when_fixture_read():
    result = read_odir(FIXTURES / "ODIR-5K", catalog=CATALOG)
    got = {name: set(r.labels) for name, r in _by_name(result.records).items()}
    assert got == {
        "0_left.jpg": {"media_opacity"},
        "0_right.jpg": set(),
        "1_left.jpg": {"dr", "erm"},  # split at the full-width comma
        "1_right.jpg": set(),  # "lens dust" is about the photograph
        "3_right.jpg": {"namd", "drusen"},  # split at the ASCII comma
    }
    records = _by_name(result.records)
    assert records["0_left.jpg"].eye == "L" and records["0_right.jpg"].eye == "R"
    assert records["0_left.jpg"].patient_id == "odir5k:0" == records["0_right.jpg"].patient_id
    assert records["0_left.jpg"].split == records["0_right.jpg"].split
    assert result.skipped == {"not a fundus photograph": 1, "finding not in catalog": 2}
    assert result.unmapped == {"laser spot": 1, "tessellated fundus": 1, "mild nonproliferative retinopathy": 1}


def test_read_rfmid_keeps_official_splits_and_reports_unmapped_when_fixture_read():
    result = read_rfmid(FIXTURES / "RFMiD", catalog=CATALOG)
    got = sorted((r.split, r.path.name, tuple(sorted(r.labels))) for r in result.records)
    assert got == [
        ("test", "1.png", ("rvo",)),  # BRVO maps; laser scars (LS) do not, and are reported
        ("train", "1.png", ("dr",)),
        ("train", "2.png", ()),
        ("val", "1.png", ("glaucoma", "media_opacity")),
        ("val", "2.png", ()),
    ]
    assert result.unmapped == {"TSLN": 1, "LS": 1} and result.skipped == {"finding not in catalog": 1}
    assert all(r.patient_id is None for r in result.records)


def test_read_aptos_maps_grades_and_leaves_mild_unmapped_when_fixture_read():
    result = read_aptos(FIXTURES / "aptos2019", catalog=CATALOG)
    got = {r.extra["grade"]: set(r.labels) for r in result.records}
    assert got == {"0": set(), "2": {"dr"}, "3": {"dr"}, "4": {"dr", "pdr"}}
    assert result.unmapped == {"1": 1}
    assert {r.split for r in result.records} <= set(SPLITS)


def test_read_messidor2_skips_ungradable_and_pairs_exams_when_fixture_read():
    result = read_messidor2(FIXTURES / "messidor2", catalog=CATALOG)
    records = _by_name(result.records)
    assert set(records) == {"20051020_43808_0100_PP.png", "20051020_43832_0100_PP.png", "IM000001.JPG"}
    assert set(records["20051020_43832_0100_PP.png"].labels) == {"dr", "dme"}
    assert set(records["IM000001.JPG"].labels) == {"dr", "pdr"}
    pair = [records["20051020_43808_0100_PP.png"], records["20051020_43832_0100_PP.png"]]
    assert pair[0].patient_id == pair[1].patient_id == "messidor2:exam1" and pair[0].split == pair[1].split
    assert result.skipped == {"ungradable": 1, "finding not in catalog": 1}


def test_read_multieye_reads_fundus_and_unpaired_oct_with_dev_as_val_when_fixture_read():
    fundus = read_multieye(FIXTURES / "MultiEYE", modality="fundus_all", catalog=CATALOG)
    got = sorted((r.split, r.path.name, tuple(sorted(r.labels))) for r in fundus.records)
    assert got == [  # the official code's class order: ... 6 myopia, 7 RVO, 8 wet AMD
        ("test", "cfp_0005.png", ("myopia",)),
        ("train", "1ffa9353-8d87-11e8-9daf-6045cb817f5b..png", ()),  # names may end in a dot
        ("train", "cfp_0002.png", ("dr",)),
        ("train", "cfp_0003.png", ("namd",)),
        ("val", "cfp_0004.png", ("rvo",)),
    ]
    assert fundus.unmapped == {}
    scans = read_multieye(FIXTURES / "MultiEYE", modality="oct", catalog=CATALOG)
    assert sorted((r.split, r.path.name) for r in scans.records) == [
        ("train", "oct_0001.png"),
        ("train", "oct_0002.png"),
        ("val", "oct_0003.png"),
    ]
    assert all(r.extra["modality"] == "oct" for r in scans.records)


def test_read_multieye_trains_on_official_balanced_list_when_release_has_it(tmp_path):
    official = read_multieye(FIXTURES / "MultiEYE", catalog=CATALOG)
    train = [r.path.name for r in official.records if r.split == "train"]
    assert train == ["cfp_0002.png", "cfp_0003.png"]  # large9cls_balance.txt, tab-separated, once each
    assert official.notes == ["training split from large9cls_balance.txt"]
    assert sum(official.skipped.values()) == 1  # the repeated line
    root = _copy("MultiEYE", tmp_path)
    (root / "assemble" / "train" / "large9cls_balance.txt").unlink()
    fallback = read_multieye(root, catalog=CATALOG)
    assert "not in the release" in fallback.notes[0] and len([r for r in fallback.records if r.split == "train"]) == 3


def test_read_kermany_takes_patient_from_file_name_and_released_splits_when_fixture_read():
    result = oct_public.read_kermany(FIXTURES / "OCT2017", catalog=CATALOG)
    got = sorted((r.split, r.path.name, r.patient_id, tuple(sorted(r.labels))) for r in result.records)
    assert got[:3] == [
        ("test", "DME-9925591-1.jpeg", "kermany_oct2017:9925591", ("dme",)),
        ("test", "NORMAL-9925591-1.jpeg", "kermany_oct2017:9925591", ()),
        ("train", "CNV-1016042-1.jpeg", "kermany_oct2017:1016042", ("namd",)),
    ]
    assert len(result.records) == 8 and {r.split for r in result.records} == {"train", "val", "test"}
    drusen = next(r for r in result.records if r.path.name.startswith("DRUSEN"))
    assert drusen.labels == {"amd", "drusen"}
    assert all(r.extra["oct_span"] == "0.4" and r.extra["modality"] == "oct" for r in result.records)


def test_read_octdl_reads_label_file_eyes_and_leaves_vid_unmapped_when_fixture_read():
    result = oct_public.read_octdl(FIXTURES / "OCTDL", catalog=CATALOG)
    by = _by_name(result.records)
    assert set(by) == {
        "amd_1047099_1.jpg",
        "amd_1047099_2.jpg",
        "dme_3251025_1.jpg",
        "no_1500024_1.jpg",
        "rvo_1284911_1.jpg",
    }
    assert by["amd_1047099_1.jpg"].eye == "R" and by["amd_1047099_2.jpg"].eye == "L"
    assert by["amd_1047099_1.jpg"].split == by["amd_1047099_2.jpg"].split  # one patient, one split
    assert by["rvo_1284911_1.jpg"].extra["subcategory"] == "BRVO"
    assert result.unmapped == {"VID": 1} and result.skipped == {"finding not in catalog": 1}


def test_read_octid_reads_class_folders_and_states_per_image_splits_when_fixture_read():
    result = oct_public.read_octid(FIXTURES / "OCTID", catalog=CATALOG)
    got = {r.path.name: set(r.labels) for r in result.records}
    expected = {"NORMAL1.jpeg": set(), "AMRD1.jpeg": {"amd"}, "CSR1.jpeg": {"csc"}, "DR1.jpeg": {"dr"}}
    assert got == expected | {"MH1.jpeg": {"macular_hole"}}
    assert all(r.patient_id is None for r in result.records) and "per image" in result.summary()


def test_public_oct_manifest_feeds_stage_one_end_to_end_when_pretrained(phantom_manifest, tmp_path):
    from predilect.catalog import load_catalog
    from predilect.training.datasets import dataset_cli
    from predilect.training.train_cli import main as train_main

    catalog = phantom_manifest.with_name("phantom_catalog.json")
    oct_folder = tmp_path / "kermany"
    argv = ["kermany_oct2017", str(FIXTURES / "OCT2017"), "--out", str(oct_folder), "--catalog", str(catalog)]
    assert dataset_cli.main(argv) == 0
    oct_manifest = oct_folder / "manifest.csv"
    records = read_manifest(oct_manifest, catalog=load_catalog(catalog))
    assert {r.extra["oct_centre_x"] for r in records} == {"0.5"}  # the data set's line, per scan
    out = tmp_path / "pre"
    argv = ["pretrain", "--manifest", str(phantom_manifest), "--oct-manifest", str(oct_manifest), "--out", str(out)]
    sizes = {"--image-size": "64", "--oct-size": "64", "--epochs": "1", "--batch-size": "2"}
    argv += [part for flag, value in sizes.items() for part in (flag, value)] + ["--widths", "8", "16", "32"]
    assert train_main(argv) == 0 and (out / "pretrain.safetensors").is_file()


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_read_native_round_trips_through_manifest_when_every_adapter_reads_its_fixture(name, tmp_path):
    folder = {"odir5k": "ODIR-5K", "rfmid": "RFMiD", "aptos2019": "aptos2019", "messidor2": "messidor2"}
    folder |= {"kermany_oct2017": "OCT2017", "octdl": "OCTDL", "octid": "OCTID"}
    result = read_native(name, FIXTURES / folder.get(name, "MultiEYE"), catalog=CATALOG)
    assert result.records and name.split("_")[0] in result.summary()
    manifest = write_manifest(tmp_path / "manifest.csv", result.records, catalog=CATALOG)
    assert read_manifest(manifest, catalog=CATALOG) == result.records


# ----------------------------------------------------------------------------- policies and overrides


def test_adapter_reports_targets_missing_from_catalog_as_unmapped_when_catalog_small():
    small = Catalog(diseases=(Disease("dr", "DR", ("d",)),))
    result = read_aptos(FIXTURES / "aptos2019", catalog=small)
    expected = {"0": set(), "2": {"dr"}, "3": {"dr"}, "4": {"dr"}}
    assert {r.extra["grade"]: set(r.labels) for r in result.records} == expected
    assert result.unmapped == {"1": 1}


@pytest.mark.parametrize(
    "policy, grades",
    [
        ("skip_if_unlabelled", {"0", "2", "3", "4"}),
        ("skip_image", {"0", "2", "3", "4"}),
        ("ignore", {"0", "1", "2", "3", "4"}),
    ],
)
def test_adapter_follows_unmapped_policy_when_finding_unmapped(policy, grades):
    result = read_aptos(FIXTURES / "aptos2019", catalog=CATALOG, unmapped=policy)
    assert {r.extra["grade"] for r in result.records} == grades


def test_adapter_skips_image_with_partial_mapping_when_policy_skip_image():
    kept = read_rfmid(FIXTURES / "RFMiD", catalog=CATALOG, unmapped="skip_image").records
    assert ("test", "1.png") not in {(r.split, r.path.name) for r in kept}  # BRVO + LS: LS is unmapped


def test_adapter_uses_override_when_mapping_given():
    result = read_aptos(FIXTURES / "aptos2019", catalog=CATALOG, overrides={"1": ("dr",)})
    assert {r.extra["grade"]: set(r.labels) for r in result.records}["1"] == {"dr"}
    assert not result.unmapped


def test_adapter_maps_default_catalog_ids_when_default_catalog_used():
    result = read_odir(FIXTURES / "ODIR-5K")
    assert all(set(r.labels) <= set(DEFAULT_CATALOG.ids) for r in result.records)


# ----------------------------------------------------------------------------- broken layouts name file and line


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def _write(relative: str, text: str):
    return lambda root: (root / relative).write_text(text)


def _delete(relative: str):
    return lambda root: (root / relative).unlink() if (root / relative).is_file() else shutil.rmtree(root / relative)


@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("aptos2019", _delete("train_images/0024cdab0c1e.png"), r"train\.csv, line 4: image not found"),
        ("aptos2019", _write("train.csv", "id_code,grade\nx,1\n"), r"train\.csv, line 1: .*diagnosis"),
        ("aptos2019", _write("train.csv", "id_code,diagnosis\n000c1434d8d7,7\n"), r"line 2: .*one of"),
        ("aptos2019", _write("train.csv", "id_code,diagnosis\n000c1434d8d7,x\n"), r"line 2: .*integer"),
        ("aptos2019", _delete("train_images"), r"no APTOS image folder"),
        ("RFMiD", _delete("Training_Set/Training/2.png"), r"Training_Labels\.csv, line 3: image"),
        ("RFMiD", _write("Training_Set/RFMiD_Training_Labels.csv", "ID,DR\n1,1\n"), r"line 1: .*Disease_Risk"),
        ("RFMiD", _delete("Training_Set"), r"no RFMiD Training_Set"),
        ("messidor2", _delete("IMAGES/IM000001.JPG"), r"messidor_data\.csv, line 4: image"),
        ("messidor2", _write("messidor-2.csv", "IM000001.JPG\n"), r"messidor-2\.csv, line 1: expected the two"),
        ("MultiEYE", _write("assemble/dev/large9cls.txt", "cfp_0004\n"), r"dev/large9cls\.txt, line 1"),
        ("MultiEYE", _write("assemble/test/large9cls.txt", "x 1\n"), r"test/large9cls\.txt, line 1: image 'x'"),
    ],
)
def test_adapter_raises_naming_file_and_line_when_layout_broken(tmp_path, name, damage, message):
    root = _copy(name, tmp_path)
    damage(root)
    adapters: dict[str, Callable[..., AdapterResult]] = {
        "aptos2019": read_aptos,
        "RFMiD": read_rfmid,
        "messidor2": read_messidor2,
        "MultiEYE": read_multieye,
    }
    with pytest.raises(DatasetLayoutError, match=message):
        adapters[name](root, catalog=CATALOG)


def test_read_odir_raises_naming_sheet_row_when_image_missing(tmp_path):
    root = _copy("ODIR-5K", tmp_path)
    (root / "Training Images" / "3_right.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match=r"data\.xlsx, line 5: image not found: .*3_right\.jpg"):
        read_odir(root, catalog=CATALOG)


def test_read_odir_reads_kaggle_full_df_csv_when_no_xlsx(tmp_path):
    root = _copy("ODIR-5K", tmp_path)
    (root / "data.xlsx").unlink()
    header = "ID,Patient Age,Patient Sex,Left-Fundus,Right-Fundus,Left-Diagnostic Keywords,Right-Diagnostic Keywords"
    rows = ["0,69,Female,0_left.jpg,0_right.jpg,cataract,normal fundus"] * 2  # one row per image, both eyes' columns
    (root / "full_df.csv").write_text("\n".join([header, *rows]) + "\n")
    assert {r.path.name for r in read_odir(root, catalog=CATALOG).records} == {"0_left.jpg", "0_right.jpg"}


def test_read_native_raises_naming_adapters_when_name_unknown():
    with pytest.raises(DatasetLayoutError, match="odir5k"):
        read_native("eyepacs", FIXTURES)


# ----------------------------------------------------------------------------- predilect dataset


def test_dataset_cli_writes_manifest_and_reports_unmapped_when_fixture_imported(tmp_path, capsys):
    from predilect.training.datasets import dataset_cli

    catalog = tmp_path / "catalog.json"
    catalog.write_text(CATALOG.to_json())
    out = tmp_path / "odir" / "manifest.csv"
    code = dataset_cli.main(["odir5k", str(FIXTURES / "ODIR-5K"), "--out", str(out.parent), "--catalog", str(catalog)])
    printed = capsys.readouterr().out
    assert code == 0 and f"wrote {out}" in printed and "tessellated fundus (1)" in printed
    assert len(read_manifest(out, catalog=CATALOG)) == 5


def test_dataset_cli_applies_mapping_file_when_given(tmp_path, capsys):
    from predilect.training.datasets import dataset_cli

    mapping = tmp_path / "mapping.json"
    mapping.write_text('{"1": ["dr"]}')
    out = tmp_path / "aptos" / "manifest.csv"
    argv = ["aptos2019", str(FIXTURES / "aptos2019"), "--out", str(out.parent), "--mapping", str(mapping)]
    assert dataset_cli.main(argv) == 0
    assert len(read_manifest(out)) == 5 and "unmapped" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["aptos2019", "/nonexistent"], "no APTOS label file"),
        (["aptos2019", str(FIXTURES / "aptos2019"), "--unmapped", "drop"], "--unmapped must be one of"),
        (["aptos2019", str(FIXTURES / "aptos2019"), "--out", "data/odir.csv"], "--out is a folder"),
    ],
)
def test_dataset_cli_exits_2_with_one_line_when_input_wrong(tmp_path, capsys, argv, message):
    from predilect.training.datasets import dataset_cli

    assert dataset_cli.main(["--out", str(tmp_path / "m"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_dataset_cli_prints_mapping_when_asked(capsys):
    from predilect.training.datasets import dataset_cli

    assert dataset_cli.main(["rfmid", str(FIXTURES / "RFMiD"), "--print-mapping"]) == 0
    assert "'ODC'" in capsys.readouterr().out
