"""The controls that isolate the sites: OCT labels re-drawn every epoch, fixed random sites."""

import numpy as np
import torch

from predilect.training.finetune import _randomise_sites
from predilect.training.stages import RedrawnLabels


class _Rows:
    def __init__(self, n: int) -> None:
        self.targets = np.eye(n, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.targets)

    def get(self, index: int, *, epoch: int = 0) -> dict:
        return {"scan": torch.full((1,), float(index)), "labels": torch.from_numpy(self.targets[index])}


def _labels(dataset: RedrawnLabels, epoch: int) -> np.ndarray:
    return np.stack([dataset.get(i, epoch=epoch)["labels"].numpy() for i in range(len(dataset))])


def test_redrawn_labels_change_every_epoch_and_keep_marginals_when_read():
    dataset = RedrawnLabels(_Rows(40), seed=3)
    first, second = _labels(dataset, 0), _labels(dataset, 1)
    assert not np.array_equal(first, second)  # nothing to memorise: an image's label moves
    assert np.array_equal(first.sum(axis=0), dataset.targets.sum(axis=0))  # a permutation of the rows
    assert np.array_equal(_labels(RedrawnLabels(_Rows(40), seed=3), 1), second)  # a function of (seed, epoch)
    assert dataset.get(5, epoch=1)["scan"].item() == 5.0  # the images stay where they are


def test_random_sites_are_a_function_of_the_seed_when_drawn():
    a, b = torch.nn.Parameter(torch.zeros(3, 2, 8)), torch.nn.Parameter(torch.zeros(3, 2, 8))
    _randomise_sites(a, seed=1)
    _randomise_sites(b, seed=1)
    assert torch.equal(a, b) and float(a.abs().sum()) > 0
    _randomise_sites(b, seed=2)
    assert not torch.equal(a, b)
