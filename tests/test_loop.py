"""The training-loop engine: exact resume after SIGKILL, torchrun DDP (gloo) against one process, and the rest."""

from __future__ import annotations

import csv
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from predilect.errors import ConfigError, UserError
from predilect.training.loop import EPOCHS_LOG, STATE_FILE, STEPS_LOG, LoopCfg, fit, warmup_cosine

HARNESS = Path(__file__).resolve().parent / "loop_harness.py"
DDP_ATOL = 1e-5
"""Largest weight difference accepted between 2-process DDP and 1 process after the harness run
(6 AdamW steps). Both optimise the same global batches; they differ only in float rounding: DDP
averages two half-batch gradient means with an all-reduce, one process takes one mean over the
whole batch. Measured: 3.9e-7 (2-core CPU, torch 2.13 CPU, gloo)."""


def _run(*args: str, torchrun: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*(launcher if torchrun else [sys.executable]), str(HARNESS), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def _csv(path: Path, drop: tuple[str, ...] = ("seconds",)) -> list[dict[str, str]]:
    with path.open() as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final.pt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    _run(str(run_dir))
    return run_dir


def test_fit_matches_uninterrupted_run_exactly_when_sigkilled_mid_epoch_and_resumed(uninterrupted, tmp_path):
    run_dir = tmp_path / "killed"
    # Micro-batch 8 of 10 is in epoch 1 (5 per epoch), after the state of step 4 was written.
    killed = _run(str(run_dir), "--kill-at-batch", "8", "--workers", "1", check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (run_dir / STATE_FILE).exists() and not (run_dir / "final.pt").exists()
    _run(str(run_dir), "--resume", "--workers", "1")
    expected, resumed = _weights(uninterrupted), _weights(run_dir)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)  # bit for bit
    assert _csv(run_dir / STEPS_LOG) == _csv(uninterrupted / STEPS_LOG)
    assert _csv(run_dir / EPOCHS_LOG) == _csv(uninterrupted / EPOCHS_LOG)


def test_fit_matches_single_process_within_tolerance_when_run_by_torchrun_on_two_processes(uninterrupted, tmp_path):
    run_dir = tmp_path / "ddp"
    _run(str(run_dir), "--workers", "1", torchrun=True)  # each rank with its own DataLoader worker
    expected, ddp = _weights(uninterrupted), _weights(run_dir)
    worst = max((expected[k] - ddp[k]).abs().max().item() for k in expected)
    assert worst < DDP_ATOL, worst
    single, double = _csv(uninterrupted / STEPS_LOG), _csv(run_dir / STEPS_LOG)
    assert [r["step"] for r in single] == [r["step"] for r in double]
    for a, b in zip(single, double, strict=True):
        assert math.isclose(float(a["loss"]), float(b["loss"]), rel_tol=1e-5)


# ----------------------------------------------------------------------------- in-process


def _problem(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=generator)
    return x, (x[:, :1] > 0).float()


def _net() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))


def _loss(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    x, y = batch
    return nn.functional.binary_cross_entropy_with_logits(net(x), y), {}


def _factory(batch_size: int):
    x, y = _problem()

    def loader(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        return [(x[i], y[i]) for i in order.split(batch_size)]

    return loader


CFG = LoopCfg(epochs=3, batch_size=8, lr=0.05, log_every_steps=1, progress=False, tensorboard=False)


def test_fit_reduces_loss_and_writes_logs_and_state_when_trained(tmp_path):
    net = _net()
    result = fit(net, _loss, _factory(8), CFG, run_dir=tmp_path)
    assert result.steps == 12 and result.epochs == 3 and result.resumed_from_step is None
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert len(_csv(tmp_path / STEPS_LOG)) == 12 and (tmp_path / STATE_FILE).exists()


def test_fit_takes_same_steps_when_micro_batches_accumulate_to_the_same_batch(tmp_path):
    whole, halves = _net(), _net()
    fit(whole, _loss, _factory(8), CFG, run_dir=tmp_path / "a")
    halves_cfg = LoopCfg(**{**CFG.__dict__, "batch_size": 4, "grad_accum": 2})
    # Batches of 4 in the same order, two per step: the same 8 images per step.
    fit(halves, _loss, _factory(4), halves_cfg, run_dir=tmp_path / "b")
    for a, b in zip(whole.parameters(), halves.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_fit_resumes_exactly_when_a_plain_loader_crashed_mid_epoch(tmp_path):
    reference = _net()
    fit(reference, _loss, _factory(8), CFG, run_dir=tmp_path / "ref")
    calls = [0]

    def crashing(net, batch):
        calls[0] += 1
        if calls[0] == 7:
            raise KeyboardInterrupt  # stands in for a crash after the state of step 6
        return _loss(net, batch)

    crashed_cfg = LoopCfg(**{**CFG.__dict__, "checkpoint_every_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        fit(_net(), crashing, _factory(8), crashed_cfg, run_dir=tmp_path / "run")
    net = _net()
    result = fit(net, _loss, _factory(8), crashed_cfg, run_dir=tmp_path / "run", resume=True)
    assert result.resumed_from_step == 6
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), net.parameters(), strict=True))


class _ScaledLoss(nn.Module):
    """A loss with a learnable logit scale, as contrastive losses have."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        x, y = batch
        return nn.functional.binary_cross_entropy_with_logits(net(x) * self.scale, y), {}


def test_fit_trains_and_saves_loss_parameters_when_loss_is_a_module(tmp_path):
    loss = _ScaledLoss()
    fit(_net(), loss, _factory(8), CFG, run_dir=tmp_path)
    assert loss.scale.item() != 1.0
    saved = torch.load(tmp_path / STATE_FILE, weights_only=True)["model"]
    assert torch.equal(saved["loss_fn.scale"], loss.scale.detach())


def test_fit_logs_what_on_epoch_end_returns_when_given(tmp_path):
    seen: list[int] = []

    def on_epoch_end(epoch: int, model: nn.Module) -> dict[str, float]:
        seen.append(epoch)
        return {"val_auroc": 0.5 + epoch / 10}

    fit(_net(), _loss, _factory(8), CFG, run_dir=tmp_path, on_epoch_end=on_epoch_end)
    assert seen == [0, 1, 2]
    assert [r["val_auroc"] for r in _csv(tmp_path / EPOCHS_LOG)] == ["0.5", "0.6", "0.7"]


def test_fit_uses_given_param_groups_when_some_parameters_frozen(tmp_path):
    net = _net()
    first = next(net.parameters())
    frozen = first.detach().clone()
    groups = [{"params": list(net[2].parameters()), "lr": 0.1}]
    fit(net, _loss, _factory(8), CFG, run_dir=tmp_path, param_groups=groups)
    assert torch.equal(first, frozen)


@pytest.mark.parametrize(
    "setup, kwargs, error, message",
    [
        pytest.param("run", {}, UserError, "already holds a run", id="run-dir-taken"),
        pytest.param("none", {"resume": True}, UserError, "nothing to resume", id="nothing-to-resume"),
        pytest.param("run", {"resume": True, "lr": 0.01}, ConfigError, r"lr: 0\.05 -> 0\.01", id="config-changed"),
    ],
)
def test_fit_raises_when_resume_does_not_fit_the_run_dir(tmp_path, setup, kwargs, error, message):
    if setup == "run":
        fit(_net(), _loss, _factory(8), LoopCfg(**{**CFG.__dict__, "epochs": 1}), run_dir=tmp_path)
    cfg = LoopCfg(**{**CFG.__dict__, "epochs": 1, **{k: v for k, v in kwargs.items() if k != "resume"}})
    with pytest.raises(error, match=message):
        fit(_net(), _loss, _factory(8), cfg, run_dir=tmp_path, resume=kwargs.get("resume", False))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_fit_raises_naming_cpu_option_when_cuda_requested_without_gpu(tmp_path):
    with pytest.raises(ConfigError, match="--device cpu"):
        fit(_net(), _loss, _factory(8), LoopCfg(**{**CFG.__dict__, "device": "cuda"}), run_dir=tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: bf16 autocast and fused AdamW run on CUDA")
def test_fit_trains_in_bf16_autocast_when_device_cuda(tmp_path):
    dtypes: list[torch.dtype] = []

    def loss(net, batch):
        x, y = batch
        logits = net(x)
        dtypes.append(logits.dtype)
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), y), {}

    net = _net()
    result = fit(net, loss, _factory(8), LoopCfg(**{**CFG.__dict__, "device": "cuda"}), run_dir=tmp_path)
    assert dtypes[0] == torch.bfloat16 and next(net.parameters()).device.type == "cuda"
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_warmup_cosine_rises_linearly_then_decays_to_floor_when_stepped():
    factor = warmup_cosine(100, 0.1, 0.1)
    assert [round(factor(s), 3) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert factor(10) == pytest.approx(1.0) and factor(55) == pytest.approx(0.55) and factor(100) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs",
    [{"epochs": 0}, {"batch_size": 0}, {"grad_accum": 0}, {"lr": 0}, {"warmup_fraction": 1}, {"device": "tpu"}],
)
def test_loop_cfg_raises_when_value_out_of_range(kwargs):
    with pytest.raises(ConfigError):
        LoopCfg(**kwargs)


def test_fit_writes_tensorboard_events_when_tensorboard_installed(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard logging is optional: CSV logs only without it")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(_net(), _loss, _factory(8), LoopCfg(**{**CFG.__dict__, "tensorboard": True}), run_dir=tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("train/loss")) == 12 and len(events.Scalars("epoch/loss")) == 3
