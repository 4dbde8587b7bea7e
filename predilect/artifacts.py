"""Where the pipeline's artefacts live: one layout under one root, the default of every command.

``PREDILECT_ARTIFACTS`` (default ``artifacts``) names the root; ``make demo`` fills it in
order (phantom data -> checkpoint -> ONNX -> model repository) and every later command
defaults its paths from here, so no command spells ``artifacts/...`` itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "PREDILECT_ARTIFACTS"


@dataclass(frozen=True)
class Artifacts:
    """The artefact paths under ``root``."""

    root: Path

    @property
    def phantom(self) -> Path:
        return self.root / "phantom"

    @property
    def manifest(self) -> Path:
        """The phantom's fundus manifest."""
        return self.phantom / "manifest.csv"

    @property
    def oct_manifest(self) -> Path:
        return self.phantom / "oct_manifest.csv"

    @property
    def pretrain_checkpoint(self) -> Path:
        """Stage 1's checkpoint (the whole UOPSL model; never served)."""
        return self.root / "pretrain" / "pretrain.safetensors"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint" / "model.safetensors"

    @property
    def onnx(self) -> Path:
        return self.root / "onnx" / "model.onnx"

    @property
    def engine(self) -> Path:
        return self.root / "tensorrt" / "model.plan"

    @property
    def repository(self) -> Path:
        return self.root / "model_repository"

    @property
    def cache(self) -> Path:
        return self.root / "cache"


def default_artifacts() -> Artifacts:
    """The layout under ``$PREDILECT_ARTIFACTS`` (default ``./artifacts``)."""
    return Artifacts(Path(os.environ.get(ENV_VAR) or "artifacts"))
