"""A small real training run for the loop tests, run as a subprocess (plain python or torchrun).

    python tests/loop_harness.py RUN_DIR [--resume] [--kill-at-batch N] [--workers W]
    torchrun --standalone --nproc-per-node 2 tests/loop_harness.py RUN_DIR

Real parts throughout: fixture fundus images -> FundusDataset (the serving preprocessing, with
augmentation) -> make_loader (shuffled, global batches sharded over ranks) -> fit (AdamW,
warm-up + cosine, grad accumulation, checkpoints every step). ``--kill-at-batch N`` SIGKILLs
this process when its N-th micro-batch enters the loss, i.e. mid-epoch with no chance to clean
up. Rank 0 writes ``final.pt`` (the trained weights) when training completes.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch
from torch import nn

from predilect.catalog import Catalog, Disease
from predilect.manifest import Record
from predilect.preprocess import PreprocessCfg
from predilect.training.datasets import AugmentCfg, FundusAugment, FundusDataset, make_loader
from predilect.training.loop import LoopCfg, fit

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "datasets"
CATALOG = Catalog(diseases=(Disease("dr", "DR", ("d",)), Disease("amd", "AMD", ("a",))))
PREPROCESS = PreprocessCfg(size=32)
LOOP = LoopCfg(epochs=2, batch_size=8, grad_accum=2, lr=0.01, warmup_fraction=0.2, log_every_steps=1,
               checkpoint_every_steps=1, seed=3, progress=False, tensorboard=False)  # fmt: skip


def records() -> list[Record]:
    images = sorted((FIXTURES / "aptos2019" / "train_images").glob("*.png"))
    images += sorted((FIXTURES / "ODIR-5K" / "Training Images").glob("*.jpg"))
    labels = [frozenset(), frozenset({"dr"}), frozenset({"amd"}), frozenset({"dr", "amd"})]
    return [Record(images[i % len(images)], labels[(i * 7) % 4], patient_id=f"P{i}") for i in range(40)]


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, len(CATALOG)),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at-batch", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    dataset = FundusDataset(records(), PREPROCESS, CATALOG, augment=FundusAugment(AugmentCfg(), PREPROCESS), seed=3)
    calls = [0]

    def loss_fn(net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        calls[0] += 1
        if calls[0] == args.kill_at_batch:
            os.kill(os.getpid(), signal.SIGKILL)
        logits = net(batch["pixels"])
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"])
        return loss, {"positives": float(batch["labels"].mean())}

    def loader(epoch: int):
        workers, distributed_ = args.workers, distributed
        return make_loader(
            dataset, batch_size=LOOP.batch_size, workers=workers, seed=LOOP.seed, epoch=epoch, distributed=distributed_
        )

    net = model()
    result = fit(net, loss_fn, loader, LOOP, run_dir=args.run_dir, resume=args.resume)
    if result.rank == 0:
        torch.save(net.state_dict(), args.run_dir / "final.pt")


if __name__ == "__main__":
    main()
