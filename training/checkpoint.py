"""Checkpoints: one safetensors file carrying the weights and everything needed to use them.

Metadata keys: the model config, the preprocessing spec, the disease catalog, the model name
and version, and the held-out metrics. Export, serving and evaluation read them from here;
nothing downstream re-declares them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from predilect import contract
from predilect.catalog import Catalog
from predilect.errors import UserError
from predilect.preprocess import PreprocessCfg

from .model import FundusClassifier, ModelCfg


class CheckpointError(UserError, ValueError):
    """A file that is not a readable Predilect checkpoint."""


@dataclass(frozen=True)
class CheckpointMeta:
    model: ModelCfg
    preprocess: PreprocessCfg
    catalog: Catalog
    version: str
    metrics: dict[str, float] = field(default_factory=dict)

    def to_strings(self) -> dict[str, str]:
        return {
            contract.KEY_FORMAT: contract.CHECKPOINT_FORMAT,
            contract.KEY_MODEL_CFG: self.model.to_json(),
            contract.KEY_PREPROCESS: self.preprocess.to_json(),
            contract.KEY_CATALOG: self.catalog.to_json(),
            contract.KEY_MODEL_NAME: self.model.name,
            contract.KEY_MODEL_VERSION: self.version,
            contract.KEY_METRICS: json.dumps(self.metrics, sort_keys=True),
        }

    @classmethod
    def from_strings(cls, data: dict[str, str]) -> CheckpointMeta:
        if data.get(contract.KEY_FORMAT) != contract.CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"not a predilect checkpoint: format is {data.get(contract.KEY_FORMAT)!r}, "
                f"expected {contract.CHECKPOINT_FORMAT!r}"
            )
        return cls(
            model=ModelCfg.from_json(data[contract.KEY_MODEL_CFG]),
            preprocess=PreprocessCfg.from_json(data[contract.KEY_PREPROCESS]),
            catalog=Catalog.from_json(data[contract.KEY_CATALOG]),
            version=data[contract.KEY_MODEL_VERSION],
            metrics=json.loads(data.get(contract.KEY_METRICS, "{}")),
        )


def weights_version(state: dict[str, torch.Tensor], *, major: int = 1) -> str:
    """``<major>+<first 8 hex of the weights' sha256>``: changes whenever the weights do."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return f"{major}+{digest.hexdigest()[:8]}"


def save_checkpoint(
    path: Path,
    model: FundusClassifier,
    *,
    preprocess: PreprocessCfg,
    catalog: Catalog,
    metrics: dict[str, float] | None = None,
) -> CheckpointMeta:
    """Write ``model`` with its metadata; returns the metadata (with the computed version)."""
    if model.cfg.num_diseases != len(catalog):
        raise ValueError(f"model has {model.cfg.num_diseases} outputs but the catalog {len(catalog)} diseases")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = CheckpointMeta(
        model=model.cfg,
        preprocess=preprocess,
        catalog=catalog,
        version=weights_version(state),
        metrics=dict(metrics or {}),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta.to_strings())
    return meta


def read_meta(path: Path) -> CheckpointMeta:
    """The metadata of the checkpoint at ``path``; CheckpointError when it is missing or not one."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a safetensors checkpoint: {e}") from e
    return CheckpointMeta.from_strings(metadata)


def load_checkpoint(path: Path) -> tuple[FundusClassifier, CheckpointMeta]:
    """Load a checkpoint into an eval-mode ``FundusClassifier``."""
    meta = read_meta(path)
    model = FundusClassifier(meta.model)
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model, meta
