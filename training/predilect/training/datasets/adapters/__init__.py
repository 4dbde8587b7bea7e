"""Adapters for public data sets in their native layouts -> manifest ``Record``s on a catalog.

``read_native(name, root, catalog=..., overrides=..., unmapped=...)`` dispatches to one of
``ADAPTERS`` (each an ``Adapter``: name, ``mapping`` table, layout reader); each module documents
the exact layout it reads and owns its ``MAPPING`` table (native label -> catalog ids).
``predilect dataset`` writes the result as a manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from predilect.training.datasets.adapters.aptos import read_aptos
from predilect.training.datasets.adapters.base import (
    UNMAPPED_POLICIES,
    Adapter,
    AdapterResult,
    DatasetLayoutError,
    LabelMapper,
    LabelMapping,
)
from predilect.training.datasets.adapters.messidor import read_messidor2
from predilect.training.datasets.adapters.multieye import MODALITIES, read_multieye
from predilect.training.datasets.adapters.oct_public import read_kermany, read_octdl, read_octid
from predilect.training.datasets.adapters.odir import read_odir
from predilect.training.datasets.adapters.rfmid import read_rfmid

ADAPTERS: dict[str, Adapter] = {
    "odir5k": read_odir,
    "rfmid": read_rfmid,
    "aptos2019": read_aptos,
    "messidor2": read_messidor2,
    "multieye": MODALITIES["fundus"],
    "multieye_all": MODALITIES["fundus_all"],
    "multieye_oct": MODALITIES["oct"],
    "kermany_oct2017": read_kermany,
    "octdl": read_octdl,
    "octid": read_octid,
}


def read_native(name: str, root: str | Path, **options: Any) -> AdapterResult:
    """Records of data set ``name`` (a key of ``ADAPTERS``) in its native layout under ``root``."""
    try:
        adapter = ADAPTERS[name]
    except KeyError as e:
        raise DatasetLayoutError(f"unknown data set {name!r}; adapters exist for {sorted(ADAPTERS)}") from e
    return adapter(root, **options)


__all__ = [
    "ADAPTERS",
    "UNMAPPED_POLICIES",
    "Adapter",
    "AdapterResult",
    "DatasetLayoutError",
    "LabelMapper",
    "LabelMapping",
    "read_aptos",
    "read_kermany",
    "read_messidor2",
    "read_multieye",
    "read_native",
    "read_octdl",
    "read_octid",
    "read_odir",
    "read_rfmid",
]
