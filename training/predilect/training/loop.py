"""The training-loop engine: one ``fit`` for every stage (pretraining, fine-tuning, baselines).

``fit(model, loss_fn, train_loader_factory, cfg, run_dir=...)`` owns what every stage needs and
no stage should rewrite:

* device placement (``--device auto|cpu|cuda``) and AMP: bf16 autocast on CUDA, fp32 on CPU;
* AdamW (fused on CUDA; no weight decay on biases and norms unless ``param_groups`` say
  otherwise) with linear warm-up then cosine decay, stepped once per optimiser step;
* gradient accumulation over ``grad_accum`` micro-batches (a shorter last window at the end of
  an epoch is averaged over its own size) and optional gradient clipping;
* DDP under ``torchrun`` (gloo on CPU, nccl on GPU): ``loss_fn`` runs inside the DDP wrapper, so
  it may call any sub-module, and ``cfg.batch_size`` is GLOBAL (see ``datasets.make_loader``),
  so 1 and N processes take the same optimisation steps;
* exact resume: ``run_dir/state.pt`` (model, optimiser, schedule, RNG states, epoch, batch
  within the epoch, step, running log sums), written atomically after an optimiser step every
  ``checkpoint_every_steps`` and at each epoch end; ``resume=True`` continues from it, skipping
  the consumed batches without reading them, and truncates the logs to the resumed step;
* logs: ``run_dir/steps.csv`` (every ``log_every_steps``) and ``run_dir/epochs.csv`` (mean loss
  and what ``on_epoch_end`` returns), plus TensorBoard under ``run_dir/tensorboard`` when the
  ``tensorboard`` package is importable; a tqdm progress bar on rank 0 when stderr is a TTY, and
  a log line per epoch with its loss, what ``on_epoch_end`` returns (the stages' validation
  metric), the seconds per epoch and the ETA;
* deterministic seeding of Python, NumPy and torch from ``cfg.seed``.

Training stops after ``cfg.epochs`` epochs, never on a clock. ``loss_fn(model, batch)`` returns
``(loss, metrics)``: a scalar tensor and a dict of floats (or scalar tensors) averaged for the
logs; it may be an ``nn.Module`` whose own parameters (a learnable temperature) are optimised,
synchronised and saved with the model's. ``train_loader_factory(epoch)`` returns the epoch's
iterable of batches with ``len``; ``datasets.make_loader`` makes one that also resumes mid-epoch
without reading skipped images.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from predilect import contract
from predilect.errors import ConfigError, UserError

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
STEPS_LOG = "steps.csv"
EPOCHS_LOG = "epochs.csv"
DEVICES = ("auto", "cpu", "cuda")

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping[str, Any]]]
LoaderFactory = Callable[[int], Iterable[Any]]
EpochEnd = Callable[[int, nn.Module], Mapping[str, float] | None]


@dataclass(frozen=True)
class LoopCfg:
    """How to optimise. ``batch_size`` counts images per micro-batch over ALL processes."""

    epochs: int = field(default=10, metadata={"help": "epochs to train (the only stopping rule)"})
    batch_size: int = field(default=32, metadata={"help": "images per micro-batch, summed over processes"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases/norms)"})
    warmup_fraction: float = field(default=0.05, metadata={"help": "share of steps with linear warm-up"})
    min_lr_fraction: float = field(default=0.0, metadata={"help": "cosine floor, as a share of lr"})
    grad_clip_norm: float = field(default=0.0, metadata={"help": "clip the gradient norm to this (0: off)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA (CPU always runs fp32)"})
    workers: int = field(default=0, metadata={"help": "DataLoader worker processes per training process"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, sampling and augmentation"})
    log_every_steps: int = field(default=10, metadata={"help": "optimiser steps between log rows"})
    checkpoint_every_steps: int = field(default=0, metadata={"help": "steps between resumable states (0: epoch ends)"})
    progress: bool = field(default=True, metadata={"help": "progress bar (shown only when stderr is a TTY)"})
    tensorboard: bool = field(default=True, metadata={"help": "also log to TensorBoard when it is installed"})
    ddp_find_unused: bool = field(default=True, metadata={"help": "DDP: allow parameters a step does not use"})
    deterministic: bool = field(default=False, metadata={"help": "torch deterministic algorithms (slower on GPU)"})

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"loop.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("workers", "checkpoint_every_steps", "weight_decay", "grad_clip_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loop.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.lr < 1.0:
            raise ConfigError(f"loop.lr must lie in (0, 1), got {self.lr}")
        for name in ("warmup_fraction", "min_lr_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"loop.{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.device not in DEVICES:
            raise ConfigError(f"loop.device must be one of {DEVICES}, got {self.device!r}")


RESUME_MUST_MATCH = (
    "epochs",
    "batch_size",
    "grad_accum",
    "lr",
    "weight_decay",
    "warmup_fraction",
    "min_lr_fraction",
    "grad_clip_norm",
    "seed",
    "amp",
)
"""LoopCfg fields a resumed run must share with the run it continues (else it is another run)."""


@dataclass(frozen=True)
class FitResult:
    """What ``fit`` did: epochs and optimiser steps completed, and one row per epoch run in this call."""

    epochs: int
    steps: int
    resumed_from_step: int | None
    history: list[dict[str, float]]
    run_dir: Path
    rank: int
    world_size: int


# ----------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class Runtime:
    """Where this process trains: its device, and its rank among ``world`` processes."""

    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a ConfigError."""
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch sees no CUDA GPU; use --device cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def init_distributed(device: str = "auto") -> Runtime:
    """The process's runtime; under ``torchrun`` (WORLD_SIZE > 1) joins the process group (idempotent).

    Backend: nccl for CUDA, gloo for CPU. Each CUDA process uses GPU ``LOCAL_RANK``.
    """
    base = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Runtime(device=base)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        torch.cuda.set_device(local_rank)
        base = torch.device("cuda", local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if base.type == "cuda" else "gloo")
    return Runtime(device=base, rank=torch.distributed.get_rank(), world=world, local_rank=local_rank)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def is_main_process() -> bool:
    """True outside DDP and on rank 0 inside it."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


# ----------------------------------------------------------------------------- optimisation


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two AdamW groups: decayed matrices, undecayed biases and norms."""
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup_fraction: float, min_fraction: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup_fraction`` of the steps, then cosine to ``min_fraction``."""
    warmup = max(1, round(total_steps * warmup_fraction)) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_fraction + (1.0 - min_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class _LossModule(nn.Module):
    """``model`` and ``loss_fn`` as one module, so DDP's forward covers the whole loss computation."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> tuple[torch.Tensor, Mapping[str, Any]]:
        return self.loss_fn(self.model, batch)


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (in dicts, lists, tuples) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# ----------------------------------------------------------------------------- state


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.array(keys)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_atomic(obj: Any, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    partial.replace(path)  # a kill never leaves a half-written state behind


def _load_state(path: Path, cfg: LoopCfg) -> dict[str, Any]:
    try:
        # On the CPU: RNG states must stay there; model and optimiser states move to their parameters.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read the run state to resume: {e}") from e
    if state.get("format") != contract.LOOP_STATE_FORMAT:
        raise UserError(f"{path}: not a training-loop state (format {state.get('format')!r})")
    saved, now = state["cfg"], asdict(cfg)
    changed = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in RESUME_MUST_MATCH if saved.get(k) != now[k]]
    if changed:
        raise ConfigError(f"{path}: cannot resume with a different loop config ({'; '.join(changed)})")
    return state


# ----------------------------------------------------------------------------- logs


class _CsvLog:
    """A CSV whose header grows with new keys (the file is rewritten then; logs are small)."""

    def __init__(self, path: Path, *, keep: Callable[[dict[str, str]], bool] | None) -> None:
        self.path = path
        self.rows: list[dict[str, str]] = []
        if path.exists() and keep is not None:
            with path.open(newline="", encoding="utf-8") as f:
                self.rows = [row for row in csv.DictReader(f) if keep(row)]
        self.columns: list[str] = list(dict.fromkeys(k for row in self.rows for k in row))
        self._rewrite()

    def _rewrite(self) -> None:
        with self.path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n")
            if self.columns:
                writer.writeheader()
            writer.writerows(self.rows)

    def append(self, values: Mapping[str, float | int]) -> None:
        row = {k: f"{v:.8g}" if isinstance(v, float) else str(v) for k, v in values.items()}
        self.rows.append(row)
        if set(row) - set(self.columns):
            self.columns += [k for k in row if k not in self.columns]
            self._rewrite()
            return
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n").writerow(row)


class _Logs:
    """steps.csv, epochs.csv and (optionally) TensorBoard, on the main process only."""

    def __init__(self, run_dir: Path, *, enabled: bool, resume_step: int, resume_epoch: int, tensorboard: bool):
        self.enabled = enabled
        self.board: Any = None
        if not enabled:
            return
        self.steps = _CsvLog(run_dir / STEPS_LOG, keep=lambda row: int(row["step"]) <= resume_step)
        self.epochs = _CsvLog(run_dir / EPOCHS_LOG, keep=lambda row: int(row["epoch"]) < resume_epoch)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.debug("tensorboard not installed: CSV logs only")
            else:
                self.board = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step or None)

    def step(self, row: Mapping[str, float | int]) -> None:
        if not self.enabled:
            return
        self.steps.append(row)
        if self.board is not None:
            for key, value in row.items():
                if key not in ("step", "epoch"):
                    self.board.add_scalar(f"train/{key}", value, int(row["step"]))

    def epoch(self, row: Mapping[str, float | int], step: int) -> None:
        if not self.enabled:
            return
        self.epochs.append(row)
        if self.board is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.board.add_scalar(f"epoch/{key}", value, step)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


class _Sums:
    """Running sums of loss and metrics over micro-batches, kept on the device until read."""

    def __init__(self, device: torch.device, saved: Mapping[str, float] | None = None) -> None:
        self.device = device
        self.values: dict[str, torch.Tensor] = {
            k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in (saved or {}).items()
        }

    def add(self, loss: torch.Tensor, metrics: Mapping[str, Any]) -> None:
        for key, value in (("loss", loss), *metrics.items()):
            value = torch.as_tensor(value, dtype=torch.float64, device=self.device).detach()
            self.values[key] = self.values.get(key, torch.zeros((), dtype=torch.float64, device=self.device)) + value
        self.values["_count"] = self.values.get("_count", torch.zeros((), dtype=torch.float64, device=self.device)) + 1

    def means(self, runtime: Runtime) -> dict[str, float]:
        """Means over micro-batches (and processes); every rank must call it at the same point."""
        sums = self.state(runtime)
        if not sums:
            return {}
        count = sums.pop("_count")
        return {k: v / count for k, v in sums.items()}

    def state(self, runtime: Runtime) -> dict[str, float]:
        """The sums over all processes, in key order (every rank must call it at the same point, in one
        all-reduce); rank 0 saves them, the others resume at 0."""
        keys = sorted(self.values)
        if not keys:
            return {}
        packed = torch.stack([self.values[k] for k in keys])
        if runtime.distributed:
            torch.distributed.all_reduce(packed)
        return dict(zip(keys, packed.tolist(), strict=True))

    def reset(self) -> None:
        self.values = {}


# ----------------------------------------------------------------------------- fit


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``: an ETA for people."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def _batches(loader: Iterable[Any], start: int) -> Iterator[Any]:
    """The loader's batches from ``start`` on; loaders with ``skip_batches`` skip without reading."""
    if start and hasattr(loader, "skip_batches"):
        loader.skip_batches(start)
        return iter(loader)
    return islice(iter(loader), start, None)


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train_loader_factory: LoaderFactory,
    cfg: LoopCfg,
    *,
    run_dir: str | os.PathLike,
    resume: bool = False,
    param_groups: Sequence[Mapping[str, Any]] | None = None,
    on_epoch_end: EpochEnd | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs; see the module docstring for what it owns.

    ``param_groups`` (AdamW groups over ``model``'s parameters, e.g. a different ``lr`` for one
    part) replace the default decay/no-decay split. ``on_epoch_end(epoch, model)`` runs on every
    process after an epoch's last step (``model`` unwrapped); what it returns on rank 0 goes to
    ``epochs.csv``. Raises ``UserError`` when ``run_dir`` already holds a run and ``resume`` is
    false, when there is nothing to resume, or when the resumed config differs.
    """
    run_dir = Path(run_dir)
    created_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    runtime = init_distributed(cfg.device)
    try:
        return _fit(model, loss_fn, train_loader_factory, cfg, runtime, run_dir, resume, param_groups, on_epoch_end)
    finally:
        if runtime.distributed and created_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _fit(
    model: nn.Module,
    loss_fn: LossFn,
    factory: LoaderFactory,
    cfg: LoopCfg,
    runtime: Runtime,
    run_dir: Path,
    resume: bool,
    param_groups: Sequence[Mapping[str, Any]] | None,
    on_epoch_end: EpochEnd | None,
) -> FitResult:
    state_path = run_dir / STATE_FILE
    if state_path.exists() and not resume:
        raise UserError(f"{run_dir} already holds a run ({STATE_FILE}); resume it (--resume) or use another run dir")
    if resume and not state_path.exists():
        raise UserError(f"nothing to resume: {state_path} does not exist")
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    seed_everything(cfg.seed)
    device = runtime.device
    # The loss may be a module with parameters of its own (a learnable temperature): they train,
    # synchronise and resume with the model's.
    module = _LossModule(model, loss_fn).to(device)
    groups = list(param_groups) if param_groups is not None else default_param_groups(module, cfg.weight_decay)
    fused = {"fused": True} if device.type == "cuda" else {}
    optimiser = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)  # type: ignore[arg-type]

    first_loader = factory(0)
    batches_per_epoch = len(first_loader)  # type: ignore[arg-type]
    if batches_per_epoch < 1:
        raise ConfigError("the training loader yields no batch")
    steps_per_epoch = -(-batches_per_epoch // cfg.grad_accum)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, warmup_cosine(cfg.epochs * steps_per_epoch, cfg.warmup_fraction, cfg.min_lr_fraction)
    )

    epoch0, batch0, step = 0, 0, 0
    saved_sums: dict[str, dict[str, float]] = {}
    resumed_from: int | None = None
    if resume:
        state = _load_state(state_path, cfg)
        module.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        epoch0, batch0, step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        saved_sums = state.get("sums", {}) if runtime.main else {}  # sums over all ranks live on rank 0
        resumed_from = step
        log.info("resuming %s at epoch %d, batch %d, step %d", run_dir, epoch0, batch0, step)

    wrapped: nn.Module = module
    if runtime.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=cfg.ddp_find_unused
        )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if (cfg.amp and device.type == "cuda")
        else contextlib.nullcontext()
    )
    logs = _Logs(run_dir, enabled=runtime.main, resume_step=step, resume_epoch=epoch0, tensorboard=cfg.tensorboard)
    window_sums = _Sums(device, saved_sums.get("window"))
    epoch_sums = _Sums(device, saved_sums.get("epoch"))
    trainable = [p for g in optimiser.param_groups for p in g["params"]]
    history: list[dict[str, float]] = []
    started = time.monotonic()

    def save(epoch: int, batch: int) -> None:
        sums = {"window": window_sums.state(runtime), "epoch": epoch_sums.state(runtime)}
        if runtime.main:
            _save_atomic(
                {
                    "format": contract.LOOP_STATE_FORMAT,
                    "cfg": asdict(cfg),
                    "epoch": epoch,
                    "batch": batch,
                    "step": step,
                    "world_size": runtime.world,
                    "model": module.state_dict(),  # the model's and the loss module's parameters
                    "optimizer": optimiser.state_dict(),
                    "scheduler": schedule.state_dict(),
                    "rng": _rng_state(),
                    "sums": sums,
                },
                state_path,
            )
        if runtime.distributed:
            torch.distributed.barrier()

    try:
        for epoch in range(epoch0, cfg.epochs):
            loader = first_loader if epoch == 0 else factory(epoch)
            total = len(loader)  # type: ignore[arg-type]
            start = batch0 if epoch == epoch0 else 0
            bar = _progress(
                total, start, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and runtime.main and sys.stderr.isatty()
            )
            model.train()
            for micro, batch in enumerate(_batches(loader, start), start):
                window_start = micro - micro % cfg.grad_accum
                window = min(cfg.grad_accum, total - window_start)
                last_of_window = micro == window_start + window - 1
                sync = contextlib.nullcontext()
                if runtime.distributed and not last_of_window:
                    sync = wrapped.no_sync()  # type: ignore[operator]
                with sync:
                    with autocast:
                        loss, metrics = wrapped(to_device(batch, device))
                    (loss / window).backward()
                window_sums.add(loss, metrics)
                epoch_sums.add(loss, metrics)
                if bar is not None:
                    bar.update(1)
                if not last_of_window:
                    continue
                if cfg.grad_clip_norm:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip_norm)
                optimiser.step()
                schedule.step()
                optimiser.zero_grad(set_to_none=True)
                step += 1
                if step % cfg.log_every_steps == 0:
                    means = window_sums.means(runtime)
                    window_sums.reset()
                    lr = optimiser.param_groups[0]["lr"]
                    logs.step({"step": step, "epoch": epoch, "lr": lr, **means, "seconds": time.monotonic() - started})
                    if bar is not None:
                        bar.set_postfix(loss=f"{means['loss']:.4f}")
                if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                    save(epoch, micro + 1)
            if bar is not None:
                bar.close()
            row = {"epoch": epoch, "step": step, **epoch_sums.means(runtime)}
            epoch_sums.reset()
            extra = on_epoch_end(epoch, model) if on_epoch_end is not None else None
            row.update({k: float(v) for k, v in (extra or {}).items()})
            logs.epoch(row, step)
            history.append(row)
            elapsed_s = time.monotonic() - started
            per_epoch_s = elapsed_s / (epoch + 1 - epoch0)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step"))
            log.info(
                "epoch %d/%d (step %d): %s; %.1f s/epoch, ETA %s",
                epoch + 1,
                cfg.epochs,
                step,
                shown,
                per_epoch_s,
                _duration(per_epoch_s * (cfg.epochs - epoch - 1)),
            )
            save(epoch + 1, 0)
    finally:
        logs.close()
    return FitResult(
        epochs=cfg.epochs,
        steps=step,
        resumed_from_step=resumed_from,
        history=history,
        run_dir=run_dir,
        rank=runtime.rank,
        world_size=runtime.world,
    )
