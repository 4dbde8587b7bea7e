"""Both UOPSL stages in one call: ``pretrain`` (stage 1) then ``finetune`` (stage 2).

What ``predilect demo`` and the tests run; the command line runs the stages separately
(``predilect train pretrain`` / ``predilect train finetune``). Training stops after the
configured epochs, never on a clock: the same configs and data give the same model (and
version) on a busy machine as on an idle one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from predilect.catalog import DEFAULT_CATALOG, Catalog

from .finetune import FinetuneCfg, FinetuneResult, finetune
from .pretrain import PretrainCfg, PretrainResult, pretrain

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    pretrain: PretrainResult | None
    finetune: FinetuneResult

    @property
    def seconds(self) -> float:
        return self.finetune.seconds + (self.pretrain.seconds if self.pretrain else 0.0)


def train(
    manifest: Path,
    out: Path,
    *,
    oct_manifest: Path | None,
    catalog: Catalog = DEFAULT_CATALOG,
    pretrain_cfg: PretrainCfg | None = PretrainCfg(),
    finetune_cfg: FinetuneCfg = FinetuneCfg(),
    cache_dir: Path | None = None,
    report: Callable[[str], None] = log.info,
) -> TrainResult:
    """Stage 1 into ``out.parent / "pretrain.safetensors"`` (skipped when ``pretrain_cfg`` is None:
    the supervised baseline), then stage 2 into ``out`` (the served checkpoint)."""
    stage1 = None
    if pretrain_cfg is not None:
        stage1 = pretrain(
            manifest,
            out.parent / "pretrain" / "pretrain.safetensors",
            oct_manifest=oct_manifest,
            catalog=catalog,
            cfg=pretrain_cfg,
            cache_dir=cache_dir,
            report=report,
        )
    stage2 = finetune(
        manifest,
        out,
        catalog=catalog,
        pretrained=stage1.path if stage1 else None,
        cfg=finetune_cfg,
        cache_dir=cache_dir,
        report=report,
    )
    return TrainResult(stage1, stage2)
