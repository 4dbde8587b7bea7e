"""Streaming datasets, loaders, samplers and augmentation (training/datasets)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from predilect.catalog import Catalog, Disease
from predilect.manifest import Record
from predilect.preprocess import PreprocessCfg, Preprocessor
from predilect.training.datasets import (
    AugmentCfg,
    DatasetItemError,
    FundusAugment,
    FundusDataset,
    OctCfg,
    OctDataset,
    class_balanced_weights,
    epoch_order,
    item_rng,
    make_loader,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "datasets"
IMAGES = sorted((FIXTURES / "aptos2019" / "train_images").glob("*.png")) + sorted(
    (FIXTURES / "ODIR-5K" / "Training Images").glob("*.jpg")
)
CATALOG = Catalog(diseases=tuple(Disease(i, i, ("d",)) for i in ("dr", "amd", "glaucoma")))
CFG = PreprocessCfg(size=32)


def _records(count: int = 12) -> list[Record]:
    labels = [frozenset(), frozenset({"dr"}), frozenset({"amd"}), frozenset({"dr", "glaucoma"})]
    return [Record(IMAGES[i % len(IMAGES)], labels[i % 4], patient_id=f"P{i}") for i in range(count)]


# ----------------------------------------------------------------------------- fundus items


def test_fundus_dataset_yields_serving_tensors_when_not_augmented():
    records = _records(len(IMAGES))
    dataset = FundusDataset(records, CFG, CATALOG)
    served = Preprocessor(CFG).run([r.path.read_bytes() for r in records]).pixels_or_raise()
    for i in range(len(records)):
        item = dataset[i]
        assert item["index"] == i and item["pixels"].dtype == torch.float32
        assert torch.equal(item["pixels"], torch.from_numpy(served[i]))  # bit for bit
        assert item["labels"].tolist() == [float(d in records[i].labels) for d in CATALOG.ids]


def test_fundus_dataset_holds_no_pixels_and_reads_nothing_when_constructed(tmp_path):
    missing = [Record(tmp_path / f"never-written-{i:05d}.jpg", frozenset({"dr"})) for i in range(2000)]
    dataset = FundusDataset(missing, CFG, CATALOG)  # would fail if construction opened a file
    per_record = len(pickle.dumps(dataset)) / len(missing)
    assert per_record < 200, f"{per_record:.0f} bytes per record"
    with pytest.raises(DatasetItemError, match="never-written-00007"):
        dataset[7]


def test_fundus_dataset_raises_naming_file_when_image_not_a_fundus(tmp_path):
    black = tmp_path / "black.png"
    Image.new("RGB", (100, 100)).save(black)
    with pytest.raises(DatasetItemError, match=r"black\.png: no fundus field of view"):
        FundusDataset([Record(black, frozenset())], CFG, CATALOG)[0]


def test_fundus_dataset_raises_naming_file_when_jpeg_truncated(tmp_path):
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(IMAGES[-1].read_bytes()[:-200])
    with pytest.raises(DatasetItemError, match=r"cut\.jpg: truncated JPEG"):
        FundusDataset([Record(cut, frozenset())], CFG, CATALOG)[0]


def test_fundus_dataset_raises_naming_frame_when_dicom_has_fewer_frames(tmp_path, dicom_from_jpeg):
    dicom = dicom_from_jpeg(FIXTURES / "ODIR-5K" / "Training Images" / "0_left.jpg", tmp_path / "one.dcm")
    with pytest.raises(DatasetItemError, match=r"one\.dcm: DICOM instance has no frame 2"):
        FundusDataset([Record(dicom, frozenset(), extra={"frame": "2"})], CFG, CATALOG)[0]


def test_fundus_dataset_reads_dicom_frame_as_client_sends_it_when_record_is_dicom(tmp_path, dicom_from_jpeg):
    jpeg = FIXTURES / "ODIR-5K" / "Training Images" / "0_left.jpg"
    dicom = dicom_from_jpeg(jpeg, tmp_path / "fundus.dcm", sop_class="oph")
    dataset = FundusDataset([Record(dicom, frozenset()), Record(jpeg, frozenset())], CFG, CATALOG)
    assert torch.equal(dataset[0]["pixels"], dataset[1]["pixels"])


def test_fundus_dataset_raises_naming_file_when_dicom_unsupported(tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")  # CT: not screened
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.4")
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    ds = pydicom.Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, meta.MediaStorageSOPClassUID, "1.2.3.4"
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DatasetItemError, match=r"ct\.dcm: SOP class .* is not screened"):
        FundusDataset([Record(path, frozenset())], CFG, CATALOG)[0]


# ----------------------------------------------------------------------------- augmentation


def _pixels() -> torch.Tensor:
    return FundusDataset(_records(1), PreprocessCfg(size=64), CATALOG)[0]["pixels"]


def test_augment_is_identical_when_same_seed_epoch_index_and_differs_across_epochs():
    augment = FundusAugment(AugmentCfg(), PreprocessCfg(size=64))
    x = _pixels()
    assert torch.equal(augment(x, item_rng(0, 1, 5)), augment(x, item_rng(0, 1, 5)))
    assert not torch.equal(augment(x, item_rng(0, 1, 5)), augment(x, item_rng(0, 2, 5)))


def test_augment_keeps_surround_black_when_rotating_and_jittering():
    cfg = PreprocessCfg(size=64)
    black = ((torch.zeros(3) - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)).view(3, 1, 1)
    augment = FundusAugment(AugmentCfg(rotate_deg=30.0, scale=0.2, brightness=0.3, contrast=0.3), cfg)
    x = _pixels()
    for index in range(8):
        y = augment(x, item_rng(0, 0, index))
        assert torch.allclose(y[:, 0, 0], black[:, 0, 0], atol=1e-5)  # a corner outside the disc
        assert (y - black).abs().amax(dim=0).gt(1e-3).float().mean() > 0.3  # the disc is still there


def test_augment_mirrors_image_when_mirror_certain_and_nothing_else():
    cfg = PreprocessCfg(size=64)
    augment = FundusAugment(AugmentCfg(mirror_p=1.0, rotate_deg=0, scale=0, brightness=0, contrast=0, gamma=0), cfg)
    x = _pixels()
    torch.testing.assert_close(augment(x, item_rng(0, 0, 0)), x.flip(-1), atol=1e-5, rtol=0)


def test_augment_returns_input_when_disabled():
    x = _pixels()
    assert FundusAugment(AugmentCfg(enabled=False), PreprocessCfg(size=64))(x, item_rng(0, 0, 0)) is x


@pytest.mark.parametrize("kwargs", [{"mirror_p": 1.5}, {"rotate_deg": 90}, {"gamma": 0.7}])
def test_augment_cfg_raises_when_out_of_range(kwargs):
    with pytest.raises(ValueError):
        AugmentCfg(**kwargs)


# ----------------------------------------------------------------------------- OCT


def _scan(seed: int, dtype=np.uint8) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 65535
    return np.random.default_rng(seed).integers(0, top, size=(40, 60)).astype(dtype)


def test_oct_dataset_reads_file_folder_tiff_and_npy_volumes_when_center_slice(tmp_path):
    planes = [_scan(i) for i in range(5)]
    folder = tmp_path / "volume"
    folder.mkdir()
    for i, plane in enumerate(planes):
        Image.fromarray(plane).save(folder / f"b{i:03d}.png")
    Image.fromarray(planes[0]).save(tmp_path / "single.png")
    pages = [Image.fromarray(p) for p in planes]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    np.save(tmp_path / "stack.npy", np.stack(planes))
    np.save(tmp_path / "stack16.npy", np.stack(planes).astype(np.uint16) * 257)
    np.save(tmp_path / "stackf.npy", np.stack(planes).astype(np.float32) / 255)
    paths = ["single.png", "volume", "stack.tif", "stack.npy", "stack16.npy", "stackf.npy"]
    dataset = OctDataset([Record(tmp_path / p, frozenset()) for p in paths], OctCfg(size=32), CATALOG)
    items = [dataset[i] for i in range(len(paths))]
    assert [item["slice"] for item in items] == [0, 2, 2, 2, 2, 2]
    assert all(item["scan"].shape == (1, 32, 32) for item in items)
    for item in items[2:]:
        torch.testing.assert_close(item["scan"], items[1]["scan"], atol=2e-2, rtol=0)  # same plane, any container


def test_oct_dataset_matches_previous_loader_when_8bit_png():
    from predilect.preprocess.pixels import load_oct_scans

    records = [Record(p, frozenset()) for p in sorted((FIXTURES / "MultiEYE" / "assemble_oct").rglob("*.png"))]
    dataset = OctDataset(records, OctCfg(size=128), CATALOG)
    expected = load_oct_scans(records, size=128)
    for i in range(len(records)):
        np.testing.assert_array_equal(dataset[i]["scan"].numpy(), expected[i])


def test_oct_dataset_yields_every_scan_when_slices_all(tmp_path):
    np.save(tmp_path / "a.npy", np.stack([_scan(i) for i in range(3)]))
    Image.fromarray(_scan(9)).save(tmp_path / "b.png")
    records = [Record(tmp_path / "a.npy", frozenset({"dr"})), Record(tmp_path / "b.png", frozenset())]
    dataset = OctDataset(records, OctCfg(size=16, slices="all"), CATALOG)
    assert len(dataset) == 4 and dataset.targets.shape == (4, 3)
    assert [(dataset[i]["index"], dataset[i]["slice"]) for i in range(4)] == [(0, 0), (0, 1), (0, 2), (1, 0)]


def test_oct_dataset_draws_slice_per_epoch_when_slices_random(tmp_path):
    np.save(tmp_path / "a.npy", np.stack([_scan(i) for i in range(50)]))
    dataset = OctDataset([Record(tmp_path / "a.npy", frozenset())], OctCfg(size=16, slices="random"), CATALOG)
    picks = [dataset.get(0, epoch=e)["slice"] for e in range(6)]
    assert picks == [dataset.get(0, epoch=e)["slice"] for e in range(6)] and len(set(picks)) > 1


def test_oct_dataset_raises_naming_folder_when_it_holds_no_scans(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetItemError, match="empty: folder holds no B-scan"):
        OctDataset([Record(tmp_path / "empty", frozenset())], OctCfg(), CATALOG)[0]


# ----------------------------------------------------------------------------- orders and loaders


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch_when_shuffled():
    a = epoch_order(100, sampling="shuffle", seed=3, epoch=1)
    assert sorted(a.tolist()) == list(range(100))
    assert np.array_equal(a, epoch_order(100, sampling="shuffle", seed=3, epoch=1))
    assert not np.array_equal(a, epoch_order(100, sampling="shuffle", seed=3, epoch=2))


def test_class_balanced_weights_give_each_class_equal_share_when_prevalence_long_tailed():
    targets = np.zeros((1000, 3), np.float32)
    targets[:600, 0] = 1  # common
    targets[600:630, 1] = 1  # rare
    targets[630:640, 2] = 1  # rarer; the other 360 are normal
    w = class_balanced_weights(targets)
    shares = [w[targets[:, c] > 0].sum() for c in range(3)] + [w[targets.sum(1) == 0].sum()]
    np.testing.assert_allclose(shares, 0.25, atol=1e-9)


def test_balanced_order_raises_rare_class_share_when_sampled():
    targets = np.zeros((1000, 1), np.float32)
    targets[:20] = 1
    order = epoch_order(1000, sampling="balanced", seed=0, epoch=0, targets=targets)
    assert 0.4 < (order < 20).mean() < 0.6


def _indices(loader) -> list[list[int]]:
    return [batch["index"].tolist() for batch in loader]


def test_rank_batches_union_to_single_process_batches_when_sharded():
    dataset = FundusDataset(_records(12), CFG, CATALOG)
    single = make_loader(dataset, batch_size=4, seed=1, epoch=0)
    shards = []
    for rank in range(2):
        loader = make_loader(dataset, batch_size=4, seed=1, epoch=0)
        loader.rank, loader.world = rank, 2  # as make_loader sets them under a 2-process group
        shards.append(loader.rank_indices())
    batches = [single.order[k * 4 : (k + 1) * 4] for k in range(3)]
    for k, batch in enumerate(batches):
        assert sorted(batch) == sorted([*shards[0][2 * k : 2 * k + 2], *shards[1][2 * k : 2 * k + 2]])


def test_loader_skips_whole_batches_without_reading_them_when_resumed():
    dataset = FundusDataset(_records(12), CFG, CATALOG)
    full = _indices(make_loader(dataset, batch_size=4, seed=2, epoch=1))
    resumed = make_loader(dataset, batch_size=4, seed=2, epoch=1)
    resumed.skip_batches(2)
    assert len(resumed) == 3 and _indices(resumed) == full[2:]


def test_loader_yields_same_batches_when_workers_forked_or_spawned():
    dataset = FundusDataset(_records(12), CFG, CATALOG, augment=FundusAugment(AugmentCfg(), CFG), seed=4)
    batches = []
    for workers, context in ((0, None), (2, "fork"), (1, "spawn")):
        loader = make_loader(dataset, batch_size=4, workers=workers, seed=4, epoch=3, mp_context=context)
        batches.append([(b["index"], b["pixels"], b["labels"]) for b in loader])
    for other in batches[1:]:
        for (i0, p0, l0), (i1, p1, l1) in zip(batches[0], other, strict=True):
            assert torch.equal(i0, i1) and torch.equal(p0, p1) and torch.equal(l0, l1)


def test_loader_drops_incomplete_batch_when_training_and_keeps_it_when_sequential():
    dataset = FundusDataset(_records(10), CFG, CATALOG)
    assert [len(b) for b in _indices(make_loader(dataset, batch_size=4))] == [4, 4]
    assert _indices(make_loader(dataset, batch_size=4, sampling="sequential")) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 20}, "exceeds"),
        ({"batch_size": 0}, "positive"),
        ({"batch_size": 4, "sampling": "random"}, "sampling"),
        ({"batch_size": 4, "workers": -1}, "workers"),
        ({"batch_size": 4, "distributed": True}, "torchrun"),
    ],
)
def test_make_loader_raises_when_options_invalid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_loader(FundusDataset(_records(10), CFG, CATALOG), **kwargs)
