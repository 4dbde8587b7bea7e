"""Data for training and evaluation: native-layout adapters, streaming datasets, loaders, augmentation.

* ``adapters``: public data sets in their native layouts -> manifest records on a catalog;
* ``FundusDataset`` / ``OctDataset``: one file read per item, fundus through the ONE shared
  ``predilect.preprocess.Preprocessor`` (evaluation tensors equal served tensors);
* ``make_loader``: epoch orders (shuffle, class-balanced, sequential), global batches sharded
  across DDP ranks, workers, exact mid-epoch resume;
* ``FundusAugment``: mirror, small rotation/zoom inside the field of view, photometric jitter.
"""

from __future__ import annotations

from predilect.training.datasets.augment import AugmentCfg, FundusAugment
from predilect.training.datasets.fundus import DatasetItemError, FundusDataset, item_rng, read_payload
from predilect.training.datasets.oct import OctCfg, OctDataset, read_scan, scan_count
from predilect.training.datasets.sampling import (
    SAMPLING_MODES,
    EpochLoader,
    class_balanced_weights,
    distributed_rank_world,
    epoch_order,
    make_loader,
)

__all__ = [
    "SAMPLING_MODES",
    "AugmentCfg",
    "DatasetItemError",
    "EpochLoader",
    "FundusAugment",
    "FundusDataset",
    "OctCfg",
    "OctDataset",
    "class_balanced_weights",
    "distributed_rank_world",
    "epoch_order",
    "item_rng",
    "make_loader",
    "read_payload",
    "read_scan",
    "scan_count",
]
