"""Predilect: retinal fundus screening with predilection-site attention.

The wheel holds every layer under this one namespace: ``predilect.catalog`` and
``predilect.preprocess`` (the shared core), ``predilect.training``, ``predilect.build``,
``predilect.serving`` and ``predilect.client``.
"""

from __future__ import annotations

from pathlib import Path as _Path

__version__ = "0.1.0"

# In a source checkout the layers sit at the top level (training/, build/, serving/, client/)
# and the wheel maps them under ``predilect``; extending __path__ gives a checkout the same
# import names as the installed wheel, so `python -m pytest` from the root sees one layout.
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "training" / "__init__.py").is_file():
    __path__.append(str(_root))  # type: ignore[name-defined]
del _root
