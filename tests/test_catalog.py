import pytest

from predilect.catalog import DEFAULT_CATALOG, Catalog, Disease


def test_catalog_round_trips_when_serialised_to_json():
    assert Catalog.from_json(DEFAULT_CATALOG.to_json()) == DEFAULT_CATALOG


def test_catalog_has_at_least_six_diseases_when_default():
    assert len(DEFAULT_CATALOG) >= 6
    assert all(d.name and d.description for d in DEFAULT_CATALOG)


def test_catalog_rejects_duplicates_when_ids_repeat():
    d = Disease(id="dr", name="x", description="y")
    with pytest.raises(ValueError, match="duplicate"):
        Catalog(diseases=(d, d))


@pytest.mark.parametrize("bad", [{"id": "Normal"}, {"id": "normal"}, {"threshold": 1.0}, {"id": "has space"}])
def test_disease_rejects_invalid_fields_when_constructed(bad):
    fields = {"id": "dr", "name": "x", "description": "y", **bad}
    with pytest.raises(ValueError):
        Disease(**fields)


def test_catalog_index_names_known_ids_when_id_unknown():
    with pytest.raises(KeyError, match="catalog has"):
        DEFAULT_CATALOG.index("cataract")
