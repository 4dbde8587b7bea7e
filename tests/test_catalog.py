import json

import pytest

from predilect.catalog import DEFAULT_CATALOG, Catalog, CatalogError, Disease, load_catalog


def test_catalog_round_trips_when_serialised_to_json():
    assert Catalog.from_json(DEFAULT_CATALOG.to_json()) == DEFAULT_CATALOG


def test_catalog_has_at_least_six_diseases_when_default():
    assert len(DEFAULT_CATALOG) >= 6
    assert all(d.name and d.descriptions and d.descriptions[0] for d in DEFAULT_CATALOG)


def test_catalog_rejects_duplicates_when_ids_repeat():
    d = Disease(id="dr", name="x", descriptions=("y",))
    with pytest.raises(CatalogError, match="duplicate"):
        Catalog(diseases=(d, d))


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "Normal"},
        {"id": "normal"},
        {"threshold": 1.0},
        {"id": "has space"},
        {"descriptions": ()},
        {"descriptions": ("",)},
        {"referral": "soon"},
    ],
)
def test_disease_rejects_invalid_fields_when_constructed(bad):
    fields = {"id": "dr", "name": "x", "descriptions": ("y",), **bad}
    with pytest.raises(CatalogError):
        Disease(**fields)


def test_catalog_index_names_known_ids_when_id_unknown():
    with pytest.raises(KeyError, match="catalog has"):
        DEFAULT_CATALOG.index("cataract")


def test_catalog_reads_single_description_when_written_by_older_version():
    old = {"version": "1", "diseases": [{"id": "dr", "name": "DR", "description": "dots", "threshold": 0.4}]}
    (disease,) = Catalog.from_dict(old)
    assert disease.descriptions == ("dots",) and disease.threshold == 0.4


def test_catalog_digest_changes_when_a_threshold_changes():
    first = DEFAULT_CATALOG.diseases[0]
    moved = Disease(**{**first.to_dict(), "descriptions": first.descriptions, "threshold": 0.3})
    changed = Catalog(diseases=(moved, *DEFAULT_CATALOG.diseases[1:]))
    assert changed.digest() != DEFAULT_CATALOG.digest()
    assert Catalog.from_json(DEFAULT_CATALOG.to_json()).digest() == DEFAULT_CATALOG.digest()


def test_load_catalog_names_file_when_entry_invalid(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"version": "2", "diseases": [{"id": "dr", "name": "DR", "descriptions": []}]}))
    with pytest.raises(CatalogError, match=r"catalog\.json.*description"):
        load_catalog(path)


def test_load_catalog_names_file_when_not_json(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text("{not json")
    with pytest.raises(CatalogError, match=r"catalog\.json.*JSON"):
        load_catalog(path)


def test_default_catalog_is_the_packaged_file_through_load_catalog_when_imported():
    from predilect.catalog import DEFAULT_CATALOG_FILE

    assert DEFAULT_CATALOG_FILE.is_file() and DEFAULT_CATALOG_FILE.parent.name == "catalogs"
    assert load_catalog(DEFAULT_CATALOG_FILE) == DEFAULT_CATALOG
    # The digest the catalog had when it was Python literals: served models and results name it.
    assert DEFAULT_CATALOG.digest() == "9674db304e8ed37f"
    assert len(DEFAULT_CATALOG) == 22 and DEFAULT_CATALOG.version == "2"


def test_load_catalog_names_the_file_and_entry_when_a_copy_of_the_default_is_broken(tmp_path):
    data = json.loads(DEFAULT_CATALOG.to_json())
    data["diseases"][1]["referral"] = "soon"
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CatalogError, match=r"mine\.json: referral of 'dme' must be one of"):
        load_catalog(path)
