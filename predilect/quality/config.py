"""The gradability checks and their thresholds (``QualityCfg``), as the model repository serves them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predilect.contract import QUALITY_MEASURES
from predilect.errors import UserError

MEASURES = QUALITY_MEASURES
"""The measures of each photograph (``contract.QUALITY_MEASURES``; ``predilect.quality.measures`` defines each)."""


class QualityConfigError(UserError, ValueError):
    """A gradability configuration that names unknown checks or lacks thresholds."""


class QualitySizeError(QualityConfigError):
    """Thresholds calibrated at one square size, served with preprocessing that measures at another."""


DEFAULT_SIZE = 224
"""The square side of calibrations that do not say theirs (``PreprocessCfg().quality_size``)."""

ALWAYS, MASKED, UNMASKED = "always", "masked", "unmasked"
"""When a check applies: on every photograph, only where the field of view is a camera's circular mask
(``masked`` measure 1), or only where it is not (a frame-filling crop, or no field found)."""


@dataclass(frozen=True)
class Check:
    """One gradability check: ``measure`` fails past the threshold named ``name`` ("max": at or above it,
    "min": at or below it), giving ``reason``; only on the photographs ``when`` names."""

    name: str
    measure: str
    reason: str
    direction: str
    when: str = ALWAYS

    def badness(self, values: np.ndarray, threshold: float) -> np.ndarray:
        """``values / threshold`` ("max") or ``threshold / values`` ("min"): >= 1 fails."""
        values = np.asarray(values, dtype=np.float64)
        if self.direction == "max":
            return values / max(threshold, 1e-9)
        return threshold / np.maximum(values, 1e-9)


CHECKS = (
    Check("field_px", "field_px", "too_small", "min"),
    Check("field_visible", "field_visible", "field_of_view", "min"),
    Check("field_offset", "field_offset", "field_of_view", "max"),
    Check("unlit", "unlit", "artefact", "max"),
    Check("blur", "blur", "focus", "max"),
    Check("exposure", "exposure", "underexposed", "min"),
    Check("saturated", "saturated", "overexposed", "max"),
    Check("glare", "glare", "artefact", "max"),
    Check("haze", "haze", "artefact", "max"),
    Check("dust", "dust", "artefact", "max"),
    Check("chroma", "chroma", "monochrome", "min"),
    Check("redness", "redness", "wrong_image_type", "min", when=MASKED),
    Check("redness_unmasked", "redness", "wrong_image_type", "min", when=UNMASKED),
)
"""Every check, by threshold name (``QualityCfg.thresholds`` keys): see ``predilect.quality``."""
CHECK_NAMES = tuple(c.name for c in CHECKS)


@dataclass(frozen=True)
class QualityCfg:
    """Calibrated thresholds of every check (``CHECKS``), keyed by check name; travels in the model repository.

    ``source`` says where the thresholds come from (the calibration command and data); ``size``
    is the side, in pixels, of the square they were calibrated on: the only side they may be
    applied at (``check_size``). JSON without it was calibrated at 224.
    """

    thresholds: Mapping[str, float]
    version: str = "2"
    source: str = ""
    size: int = DEFAULT_SIZE
    _order: tuple[str, ...] = field(default=CHECK_NAMES, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        missing = [c for c in CHECK_NAMES if c not in self.thresholds]
        unknown = sorted(set(self.thresholds) - set(CHECK_NAMES))
        if missing or unknown:
            raise QualityConfigError(
                f"quality thresholds: missing {missing}, unknown {unknown} (a calibration of this version's checks "
                "is needed: `predilect gradability`)"
            )
        bad = {k: v for k, v in self.thresholds.items() if not (isinstance(v, (int, float)) and np.isfinite(v))}
        if bad:
            raise QualityConfigError(f"quality thresholds must be finite numbers, got {bad}")
        if not isinstance(self.size, int) or self.size < 32:
            raise QualityConfigError(f"quality calibration size must be an integer >= 32 px, got {self.size!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source": self.source,
            "size": self.size,
            "thresholds": {k: float(self.thresholds[k]) for k in CHECK_NAMES},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """First 16 hex of the sha256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def with_thresholds(self, changes: Mapping[str, float], *, source: str) -> QualityCfg:
        """A copy with ``changes`` applied to the thresholds and a new ``source``."""
        return QualityCfg(
            thresholds={**self.thresholds, **changes}, version=self.version, source=source, size=self.size
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityCfg:
        try:
            thresholds = {str(k): float(v) for k, v in dict(data["thresholds"]).items()}
            size = data.get("size", DEFAULT_SIZE)
            if isinstance(size, bool) or not isinstance(size, int):
                raise QualityConfigError(f"quality calibration size must be an integer (pixels), got {size!r}")
            return cls(
                thresholds=thresholds,
                version=str(data.get("version", "1")),
                source=str(data.get("source", "")),
                size=size,
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, QualityConfigError):
                raise
            raise QualityConfigError(f"not a quality configuration: {e!r}") from e

    @classmethod
    def from_json(cls, text: str) -> QualityCfg:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise QualityConfigError(f"quality configuration is not valid JSON: {e}") from e


DEFAULT_CALIBRATION = Path(__file__).resolve().parent.parent / "quality_calibration.json"
"""The packaged thresholds: a copy of what ``predilect gradability`` calibrated (see its results)."""


def check_size(cfg: QualityCfg, quality_size: int) -> None:
    """Raise ``QualitySizeError`` unless ``cfg`` was calibrated at ``quality_size`` (``PreprocessCfg.quality_size``)."""
    if cfg.size != quality_size:
        raise QualitySizeError(
            f"gradability thresholds calibrated on {cfg.size}-px squares cannot grade the {quality_size}-px squares "
            f"this model's preprocessing cuts (preprocess quality_size={quality_size}): serve a calibration made at "
            f"{quality_size} px (`predilect assemble --quality`), or export the model with quality_size={cfg.size}"
        )


def default_quality_cfg() -> QualityCfg:
    """The packaged calibration (``DEFAULT_CALIBRATION``)."""
    return load_quality_cfg(DEFAULT_CALIBRATION)


def load_quality_cfg(path: str | Path) -> QualityCfg:
    """Read a calibration file written by ``predilect gradability``."""
    path = Path(path)
    try:
        return QualityCfg.from_json(path.read_text(encoding="utf-8"))
    except QualityConfigError as e:
        raise QualityConfigError(f"{path}: {e}") from e
