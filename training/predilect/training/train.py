"""Both UOPSL stages in one call: ``pretrain`` (stage 1) then ``finetune`` (stage 2).

What ``predilect demo`` and the tests run; the command line runs the stages separately
(``predilect train pretrain`` / ``predilect train finetune``). Training stops after the
configured epochs, never on a clock: the same configs and data give the same model (and
version) on a busy machine as on an idle one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from predilect.training.config import load_config
from predilect.training.finetune import FinetuneResult, FinetuneRun, finetune
from predilect.training.pretrain import PretrainResult, PretrainRun, pretrain

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    pretrain: PretrainResult | None
    finetune: FinetuneResult

    @property
    def seconds(self) -> float:
        return self.finetune.seconds + (self.pretrain.seconds if self.pretrain else 0.0)


def runs(
    manifest: Path,
    *,
    recipe: Path | None = None,
    oct_manifest: Path | None = None,
    catalog: Path | None = None,
    common: Sequence[str] = (),
    pretrain: Sequence[str] = (),
    finetune: Sequence[str] = (),
) -> tuple[PretrainRun, FinetuneRun]:
    """The two stages' configs: the ``recipe`` file (a run config holding both stages' sections, as
    ``predilect.training.config.recipe("demo")``; None: the defaults), then ``--set``-style overrides:
    ``common`` for both (``loop.*``, ``model.*``, ``data.*``; a ``pretrain.*`` or ``finetune.*`` one
    goes to its stage only), then each stage's own."""
    paths = [f'data.manifest="{manifest}"'] + ([f'data.catalog="{catalog}"'] if catalog else [])
    first_common = [o for o in common if not o.startswith("finetune.")]
    second_common = [o for o in common if not o.startswith("pretrain.")]
    first = load_config(recipe, overrides=[*paths, *first_common, *pretrain], cls=PretrainRun)
    if oct_manifest is not None:
        first = first.model_copy(update={"data": first.data.model_copy(update={"oct_manifest": oct_manifest})})
    second = load_config(recipe, overrides=[*paths, *second_common, *finetune], cls=FinetuneRun)
    return first, second


def train(
    pretrain_run: PretrainRun | None,
    finetune_run: FinetuneRun,
    out: Path,
    *,
    cache_dir: Path | None = None,
    report: Callable[[str], None] = log.info,
) -> TrainResult:
    """Stage 1 into ``out.parent / "pretrain"`` (skipped when ``pretrain_run`` is None: the
    supervised baseline), then stage 2, started from it, into ``out`` (the served checkpoint)."""
    stage1 = None
    if pretrain_run is not None:
        stage1 = pretrain(
            pretrain_run, out.parent / "pretrain" / "pretrain.safetensors", cache_dir=cache_dir, report=report
        )
        section = dataclasses.replace(finetune_run.finetune, pretrained=str(stage1.path))
        finetune_run = finetune_run.model_copy(update={"finetune": section})
    stage2 = finetune(finetune_run, out, cache_dir=cache_dir, report=report)
    return TrainResult(stage1, stage2)
