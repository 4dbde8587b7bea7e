"""The acquisition-shift augmentation: physical operations before the served preprocessing, off by default,
configurable in the run config, and never touching an item it does not re-photograph."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from predilect.catalog import Catalog, Disease
from predilect.errors import ConfigError
from predilect.manifest import Record
from predilect.preprocess import PreprocessCfg, Preprocessor
from predilect.training.config import load_config, recipe, save_config
from predilect.training.datasets import AugmentCfg, FundusAugment, FundusDataset, item_rng
from predilect.training.datasets.augment import AcquisitionCfg, draw_shot, photograph, reshape_field
from predilect.training.finetune import FinetuneRun
from predilect.training.pretrain import PretrainRun
from predilect.training.stages import MemoryFundusDataset

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "datasets"
IMAGES = sorted((FIXTURES / "ODIR-5K" / "Training Images").glob("*.jpg"))
CATALOG = Catalog(diseases=tuple(Disease(i, i, ("d",)) for i in ("dr", "amd")))
CFG = PreprocessCfg(size=64)
QUIET = {"mirror_p": 0.0, "rotate_deg": 0.0, "scale": 0.0, "brightness": 0.0, "contrast": 0.0, "gamma": 0.0}


def _records() -> list[Record]:
    return [Record(p, frozenset({"dr"}) if i % 2 else frozenset(), patient_id=f"P{i}") for i, p in enumerate(IMAGES)]


def _augment(**acquisition) -> FundusAugment:
    return FundusAugment(AugmentCfg(**QUIET, acquisition=AcquisitionCfg(enabled=True, **acquisition)), CFG)


def _square(side: int = 128) -> np.ndarray:
    """A lit disc on black, the shape of a field-of-view square."""
    ys, xs = np.mgrid[0:side, 0:side]
    disc = np.hypot(xs + 0.5 - side / 2, ys + 0.5 - side / 2) < side / 2 - 1
    square = np.zeros((side, side, 3), np.uint8)
    square[disc] = (190, 90, 40)
    return square


def test_augment_draws_the_old_stream_first_when_acquisition_enabled_without_a_source():
    x = torch.from_numpy(Preprocessor(CFG).run([IMAGES[0].read_bytes()]).pixels_or_raise()[0])
    old = FundusAugment(AugmentCfg(), CFG)
    new = FundusAugment(AugmentCfg(acquisition=AcquisitionCfg(enabled=True, p=1.0)), CFG)
    for index in range(4):
        assert torch.equal(old(x, item_rng(0, 1, index)), new(x, item_rng(0, 1, index)))


def test_rephotographed_item_is_the_served_tensor_of_its_photograph_when_fired():
    dataset = FundusDataset(_records(), CFG, CATALOG, augment=_augment(p=1.0), seed=3)
    square = dataset.square(0, 256)
    rng = item_rng(3, 2, 0)
    for _ in range(6):  # the tensor augmentation's draws come first
        rng.random()
    shot = draw_shot(AcquisitionCfg(enabled=True, p=1.0), rng)
    served = Preprocessor(CFG).run([photograph(square, shot, AcquisitionCfg())]).pixels_or_raise()[0]
    assert shot.fire
    got = dataset.get(0, epoch=2)["pixels"]  # the quiet tensor steps round-trip intensities: not bit for bit
    torch.testing.assert_close(got, torch.from_numpy(served), atol=1e-5, rtol=0)
    assert (got - torch.from_numpy(dataset.pixels(0))).abs().max() > 0.1


def test_item_is_what_the_tensor_augmentation_makes_of_the_served_tensor_when_the_policy_does_not_fire():
    dataset = FundusDataset(_records(), CFG, CATALOG, augment=_augment(p=0.0), seed=3)
    old = FundusDataset(_records(), CFG, CATALOG, augment=FundusAugment(AugmentCfg(**QUIET), CFG), seed=3)
    for index in range(len(IMAGES)):
        assert torch.equal(dataset.get(index, epoch=1)["pixels"], old.get(index, epoch=1)["pixels"])


def test_memory_dataset_rephotographs_like_the_streaming_one_when_policy_on(tmp_path):
    augment = _augment(p=0.7)
    streaming = FundusDataset(_records(), CFG, CATALOG, augment=augment, seed=5)
    memory = MemoryFundusDataset(_records(), CFG, CATALOG, augment=augment, seed=5, cache_dir=tmp_path)
    assert memory.squares is not None and memory.squares.shape == (len(IMAGES), 256, 256, 3)
    for epoch in range(3):
        for index in range(len(IMAGES)):
            assert torch.equal(streaming.get(index, epoch=epoch)["pixels"], memory.get(index, epoch=epoch)["pixels"])
    again = MemoryFundusDataset(_records(), CFG, CATALOG, augment=augment, seed=5, cache_dir=tmp_path)
    assert np.array_equal(again.squares, memory.squares)  # from the cache


def test_dataset_square_is_the_served_crop_before_normalisation_when_asked():
    dataset = FundusDataset(_records(), CFG, CATALOG)
    square = dataset.square(1, CFG.size)
    levels = torch.from_numpy(square.transpose(2, 0, 1).astype(np.float32) / 255.0)
    mean, std = torch.tensor(CFG.mean).view(3, 1, 1), torch.tensor(CFG.std).view(3, 1, 1)
    torch.testing.assert_close((levels - mean) / std, torch.from_numpy(dataset.pixels(1)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", ["cut", "fill", "notch", "offcentre"])
def test_reshape_field_changes_the_field_stop_when_asked(shape):
    square = _square()
    out = reshape_field(square, shape, (0.5, 0.5, 0.5))
    lit, was = out.max(axis=2) > 20, square.max(axis=2) > 20
    if shape == "cut":
        assert not lit[:10].any() and not lit[-10:].any() and lit[64, :10].any()
    elif shape == "fill":
        assert lit[64].all() and lit.mean() > was.mean()
    elif shape == "notch":
        assert 0 < was.sum() - lit.sum() < 0.02 * was.sum()
    else:
        assert lit.sum() < was.sum() and not np.array_equal(lit, was)
    assert reshape_field(square, None, (0.5, 0.5, 0.5)) is square


def test_photograph_darkens_warms_and_compresses_as_its_shot_says_when_taken():
    cfg = AcquisitionCfg(enabled=True)
    base = draw_shot(dataclasses.replace(cfg, p=1.0), np.random.default_rng(0))
    neutral = dataclasses.replace(
        base, shape=None, blur=0.0, vignette=0.0, scale=1.0, exposure=1.0, illuminant_k=5500.0, gamma=1.0
    )
    warm = dataclasses.replace(neutral, illuminant_k=3000.0, exposure=0.6, quality=30)

    def decoded(shot) -> np.ndarray:
        from io import BytesIO

        with Image.open(BytesIO(photograph(_square(), shot, cfg))) as im:
            return np.asarray(im.convert("RGB")).astype(float)

    a, b = decoded(neutral), decoded(warm)
    inside = _square().max(axis=2) > 0
    assert b[inside].mean() < 0.75 * a[inside].mean()
    assert (b[inside][:, 0] / b[inside][:, 1]).mean() > (a[inside][:, 0] / a[inside][:, 1]).mean()
    small = dataclasses.replace(neutral, scale=0.5)
    assert Image.open(__import__("io").BytesIO(photograph(_square(), small, cfg))).size == (64, 64)


@pytest.mark.parametrize(
    "kwargs", [{"p": 1.5}, {"field_shapes": ("round",)}, {"jpeg_quality": (10, 99)}, {"rescale": (0.8, 0.5)}]
)
def test_acquisition_cfg_raises_when_out_of_range(kwargs):
    with pytest.raises(ConfigError):
        AcquisitionCfg(**kwargs)


def test_demo_recipe_trains_both_stages_with_the_policy_and_saves_it_when_resolved(tmp_path):
    for cls in (PretrainRun, FinetuneRun):
        run = load_config(recipe("demo"), cls=cls, overrides=["data.augment.acquisition.p=0.25"])
        assert run.data.augment.enabled and run.data.augment.acquisition.enabled
        saved = json.loads(save_config(run, tmp_path / cls.__name__).read_text())
        assert saved["data"]["augment"]["acquisition"]["p"] == 0.25
        assert saved["data"]["augment"]["acquisition"]["jpeg_quality"] == [25, 95]
        assert load_config(tmp_path / cls.__name__ / "config.json", cls=cls) == run
