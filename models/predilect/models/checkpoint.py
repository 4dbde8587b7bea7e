"""Checkpoints: one safetensors file carrying the weights and everything needed to use them.

Metadata keys: the model config, the preprocessing spec, the disease catalog, the model name
and version, and the held-out metrics. Export, serving and evaluation read them from here;
nothing downstream re-declares them.
"""

from __future__ import annotations

import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from predilect import contract
from predilect.catalog import Catalog
from predilect.errors import UserError
from predilect.models.classifier import FundusClassifier, ModelCfg
from predilect.models.uopsl import UopslCfg, UopslModel
from predilect.preprocess import PreprocessCfg


class CheckpointError(UserError, ValueError):
    """A file that is not a readable Predilect checkpoint."""


@dataclass(frozen=True)
class CheckpointMeta:
    model: ModelCfg
    preprocess: PreprocessCfg
    catalog: Catalog
    version: str
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def to_strings(self) -> dict[str, str]:
        return {
            **_shared_strings(self, contract.CHECKPOINT_FORMAT),
            contract.KEY_MODEL_CFG: self.model.to_json(),
            contract.KEY_MODEL_NAME: self.model.name,
        }

    @classmethod
    def from_strings(cls, data: dict[str, str]) -> CheckpointMeta:
        shared = _shared_fields(data, contract.CHECKPOINT_FORMAT, what="a predilect checkpoint")
        return cls(model=ModelCfg.from_json(data[contract.KEY_MODEL_CFG]), **shared)


class _Meta(typing.Protocol):
    """What both checkpoint formats carry beside their model config."""

    @property
    def preprocess(self) -> PreprocessCfg: ...
    @property
    def catalog(self) -> Catalog: ...
    @property
    def version(self) -> str: ...
    @property
    def metrics(self) -> dict[str, float]: ...
    @property
    def training(self) -> dict[str, Any]: ...


def _shared_strings(meta: _Meta, format_: str) -> dict[str, str]:
    return {
        contract.KEY_FORMAT: format_,
        contract.KEY_PREPROCESS: meta.preprocess.to_json(),
        contract.KEY_CATALOG: meta.catalog.to_json(),
        contract.KEY_MODEL_VERSION: meta.version,
        contract.KEY_TRAINING: json.dumps(meta.training, sort_keys=True, default=str),
        contract.KEY_METRICS: json.dumps(meta.metrics, sort_keys=True),
    }


def _shared_fields(data: dict[str, str], format_: str, *, what: str, hint: str = "") -> dict[str, Any]:
    """The ``_Meta`` fields of metadata ``data``; CheckpointError unless its format is ``format_``."""
    if data.get(contract.KEY_FORMAT) != format_:
        raise CheckpointError(f"not {what}: format is {data.get(contract.KEY_FORMAT)!r}, expected {format_!r}{hint}")
    return dict(
        preprocess=PreprocessCfg.from_json(data[contract.KEY_PREPROCESS]),
        catalog=Catalog.from_json(data[contract.KEY_CATALOG]),
        version=data[contract.KEY_MODEL_VERSION],
        metrics=json.loads(data.get(contract.KEY_METRICS, "{}")),
        training=json.loads(data.get(contract.KEY_TRAINING, "{}")),
    )


def _weights(model: FundusClassifier | UopslModel, catalog: Catalog) -> tuple[dict[str, torch.Tensor], str]:
    """The CPU weights of ``model`` and their ``weights_version``; ValueError unless it has one output
    per disease of ``catalog``."""
    if model.cfg.num_diseases != len(catalog):
        raise ValueError(f"model has {model.cfg.num_diseases} diseases but the catalog {len(catalog)}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return state, weights_version(state)


def _write(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)


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
    training: dict[str, Any] | None = None,
) -> CheckpointMeta:
    """Write ``model`` with its metadata; returns the metadata (with the computed version).

    ``training``: the options of the run (stage, ablation flags, the stage-1 checkpoint used)."""
    state, version = _weights(model, catalog)
    meta = CheckpointMeta(
        model=model.cfg,
        preprocess=preprocess,
        catalog=catalog,
        version=version,
        metrics=dict(metrics or {}),
        training=dict(training or {}),
    )
    _write(path, state, meta.to_strings())
    return meta


def read_meta(path: Path) -> CheckpointMeta:
    """The metadata of the checkpoint at ``path``; CheckpointError when it is missing or not one."""
    return CheckpointMeta.from_strings(_metadata(path))


def load_checkpoint(path: Path) -> tuple[FundusClassifier, CheckpointMeta]:
    """Load a checkpoint into an eval-mode ``FundusClassifier``."""
    meta = read_meta(path)
    model = FundusClassifier(meta.model)
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model, meta


# ----------------------------------------------------------------------------- stage-1 checkpoints


@dataclass(frozen=True)
class PretrainMeta:
    """What a stage-1 (pretraining) checkpoint carries besides the weights.

    ``catalog`` is the catalog the model was TRAINED on (held-out categories removed);
    ``training`` the run's options (stage, ablation flags, held-out ids, seed).
    """

    cfg: UopslCfg
    preprocess: PreprocessCfg
    catalog: Catalog
    tokenizer_json: str
    version: str
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def to_strings(self) -> dict[str, str]:
        return {
            **_shared_strings(self, contract.PRETRAIN_FORMAT),
            contract.KEY_UOPSL_CFG: self.cfg.to_json(),
            contract.KEY_TOKENIZER: self.tokenizer_json,
        }

    @classmethod
    def from_strings(cls, data: dict[str, str]) -> PretrainMeta:
        shared = _shared_fields(
            data,
            contract.PRETRAIN_FORMAT,
            what="a pretraining checkpoint",
            hint=" (written by `predilect train pretrain`)",
        )
        return cls(
            cfg=UopslCfg.from_json(data[contract.KEY_UOPSL_CFG]),
            tokenizer_json=data[contract.KEY_TOKENIZER],
            **shared,
        )


def _metadata(path: Path) -> dict[str, str]:
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a safetensors checkpoint: {e}") from e


def save_pretrain(
    path: Path,
    model: UopslModel,
    *,
    preprocess: PreprocessCfg,
    catalog: Catalog,
    tokenizer_json: str,
    training: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
) -> PretrainMeta:
    """Write a stage-1 model with everything needed to rebuild it (tokenizer included)."""
    state, version = _weights(model, catalog)
    meta = PretrainMeta(
        cfg=model.cfg,
        preprocess=preprocess,
        catalog=catalog,
        tokenizer_json=tokenizer_json,
        version=version,
        training=dict(training or {}),
        metrics=dict(metrics or {}),
    )
    _write(path, state, meta.to_strings())
    return meta


def load_pretrain(path: Path) -> tuple[UopslModel, PretrainMeta]:
    """A stage-1 model in eval mode, its texts rebuilt from the stored tokenizer and catalog."""
    from predilect.models.text import CatalogTexts, load_tokenizer

    meta = PretrainMeta.from_strings(_metadata(path))
    texts = None
    if meta.cfg.text_mode == "text":
        texts = CatalogTexts.build(load_tokenizer(meta.tokenizer_json), meta.catalog, meta.cfg.text.context_length)
    model = UopslModel(meta.cfg, texts)
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model, meta
