"""Preprocessing on the CPU profile: time per image against the decode floor, and what each
decoder does to held-out AUROC (paired bootstrap CIs).

Timings are single-threaded, per image, measured side by side in one run on the same images:

* floor (simplejpeg): DCT-scaled decode + resize of the whole frame + normalise -- nothing a
  screening pipeline can skip (``Preprocessor`` must also find, crop and pad the field of view);
* floor (Pillow draft): the same with Pillow's DCT-scaled decode;
* ``pil_draft`` as served (``Preprocessor``, one thread);
* the previous implementation of the same steps (Pillow decode, per-pixel field-of-view mask,
  float normalisation), kept here as the reference the served tensors are compared with;
* ``dali_cpu`` (full-resolution DALI pipeline), optional.

Run through ``predilect bench decoders``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from predilect.preprocess import PreprocessCfg, Preprocessor

FLOOR = "floor: simplejpeg DCT-scaled decode + resize + normalise"
FLOOR_PIL = "floor: Pillow draft decode + resize + normalise"
SERVED = "pil_draft as served (Preprocessor, FOV crop)"
PREVIOUS = "previous pil_draft implementation (reference)"
DALI = "dali_cpu (DALI, full resolution)"


def _per_image_ms(fn: Callable[[], object], images: int, *, repeats: int) -> float:
    fn()  # warm-up: builds pipelines, fills caches
    best = math.inf
    for _ in range(repeats):  # the fastest repeat: the least disturbed by other jobs on a shared machine
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / images * 1000.0


def _normalise(image: Any, cfg: PreprocessCfg) -> np.ndarray:
    mean = np.float32(255.0) * np.asarray(cfg.mean, np.float32)
    std = np.float32(255.0) * np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(((np.asarray(image, dtype=np.float32) - mean) / std).transpose(2, 0, 1))


def floor_simplejpeg(data: bytes, cfg: PreprocessCfg) -> np.ndarray:
    import simplejpeg
    from PIL import Image

    # Decoded for cfg.decode_px, as served: the quality square (quality_size) is cut from the same frame.
    rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=cfg.decode_px, min_height=cfg.decode_px)
    return _normalise(Image.fromarray(rgb).resize((cfg.size, cfg.size), Image.Resampling.BILINEAR), cfg)


def floor_pillow(data: bytes, cfg: PreprocessCfg) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (cfg.decode_px, cfg.decode_px))
        return _normalise(im.convert("RGB").resize((cfg.size, cfg.size), Image.Resampling.BILINEAR), cfg)


def previous_pil_draft(data: bytes, cfg: PreprocessCfg) -> np.ndarray:
    """The ``pil_draft`` steps as first written: Pillow draft decode, per-pixel channel max for the
    field of view, Pillow crop + resize, float normalisation."""
    from PIL import Image

    target = request_px = cfg.decode_px  # cfg.size before PreprocessCfg.quality_size (the same at 224 px)
    while True:
        with Image.open(io.BytesIO(data)) as im:
            full_w, full_h = im.size
            im.draft("RGB", (request_px, request_px))
            rgb = np.asarray(im.convert("RGB"))
        height, width = rgb.shape[:2]
        inside = rgb.max(axis=2) > cfg.fov_threshold
        fov_w, fov_h = int(inside.any(axis=0).sum()), int(inside.any(axis=1).sum())
        side = max(fov_w, fov_h)
        if side >= target or side == 0 or (width, height) == (full_w, full_h):
            break
        request_px = max(math.ceil(min(width, height) * target / side), min(width, height) + 1)
    side = max(side, 1)
    left, top = (width - side) // 2, (height - side) // 2
    square = Image.fromarray(rgb).crop((left, top, left + side, top + side))
    return _normalise(square.resize((cfg.size, cfg.size), Image.Resampling.BILINEAR, reducing_gap=None), cfg)


def preprocess_timings(data: Sequence[bytes], cfg: PreprocessCfg, *, repeats: int = 3, dali: bool = True) -> dict:
    """ms per image, one thread, each strategy over all of ``data``; plus the served-vs-floor ratio
    and whether the served tensors equal the previous implementation's bit for bit."""
    n = len(data)
    served = Preprocessor(dataclasses.replace(cfg, decoder="pil_draft"), max_batch_size=16, num_threads=1)
    timings = {
        FLOOR: _per_image_ms(lambda: [floor_simplejpeg(d, cfg) for d in data], n, repeats=repeats),
        FLOOR_PIL: _per_image_ms(lambda: [floor_pillow(d, cfg) for d in data], n, repeats=repeats),
        SERVED: _per_image_ms(lambda: served.run(list(data)).pixels_or_raise(), n, repeats=repeats),
        PREVIOUS: _per_image_ms(lambda: [previous_pil_draft(d, cfg) for d in data], n, repeats=repeats),
    }
    if dali:
        pipe = Preprocessor(dataclasses.replace(cfg, decoder="dali_cpu"), max_batch_size=16, num_threads=1)
        timings[DALI] = _per_image_ms(lambda: pipe.run(list(data)).pixels_or_raise(), n, repeats=repeats)
    reference = np.stack([previous_pil_draft(d, cfg) for d in data])
    return {
        "images": n,
        "mean_payload_bytes": float(np.mean([len(d) for d in data])),
        "ms_per_image": timings,
        "served_over_floor": timings[SERVED] / min(timings[FLOOR], timings[FLOOR_PIL]),
        "served_equals_previous": bool(np.array_equal(served.run(list(data)).pixels_or_raise(), reference)),
    }


def heldout_auroc(checkpoint: Path, manifest: Path, decoders: Sequence[str], *, resamples: int) -> dict[str, Any]:
    """Macro AUROC of one checkpoint on the held-out split preprocessed by each decoder, and the
    paired bootstrap CI of each decoder's difference from the first."""
    from predilect.manifest import label_matrix, read_manifest
    from predilect.metrics import auroc, macro, macro_auroc, paired_bootstrap_ci
    from predilect.models.checkpoint import load_checkpoint
    from predilect.models.inference import predict_proba
    from predilect.preprocess.pixels import load_fundus_pixels

    model, meta = load_checkpoint(checkpoint)
    records = read_manifest(manifest, catalog=meta.catalog, split="test")
    labels, ids = label_matrix(records, meta.catalog), meta.catalog.ids
    scores = {
        d: predict_proba(model, load_fundus_pixels(records, dataclasses.replace(meta.preprocess, decoder=d)))
        for d in decoders
    }
    first = decoders[0]
    return {
        "checkpoint": str(checkpoint),
        "trained_with": meta.preprocess.decoder,
        "images": len(records),
        "macro_auroc": {d: macro_auroc(labels, s, ids) for d, s in scores.items()},
        "vs_" + first: {
            d: dataclasses.asdict(paired_bootstrap_ci(labels, s, scores[first], macro(auroc), resamples=resamples))
            for d, s in scores.items()
            if d != first
        },
    }


def retrained_auroc(
    manifest: Path,
    decoders: Sequence[str],
    work: Path,
    *,
    epochs: int | None,
    resamples: int,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Train one model per decoder (both UOPSL stages, their defaults plus ``overrides``, same
    seed), each evaluated on held-out images preprocessed by its own decoder; paired bootstrap CI
    of each difference from the first."""
    from predilect.manifest import label_matrix, read_manifest
    from predilect.metrics import auroc, macro, macro_auroc, paired_bootstrap_ci
    from predilect.models.checkpoint import load_checkpoint
    from predilect.models.inference import predict_proba
    from predilect.preprocess.pixels import load_fundus_pixels
    from predilect.training.train import runs, train

    if not decoders:
        raise ValueError("name at least one decoder")
    stage_epochs = [] if epochs is None else [f"loop.epochs={epochs}"]
    oct_manifest = manifest.with_name("oct_manifest.csv")
    scores: dict[str, np.ndarray] = {}
    labels, ids = np.zeros((0, 0)), []
    configs: dict[str, Any] = {}
    for decoder in decoders:
        checkpoint = work / f"retrained-{decoder}" / "model.safetensors"
        first, second = runs(
            manifest,
            oct_manifest=oct_manifest if oct_manifest.is_file() else None,
            common=[f'data.preprocess.decoder="{decoder}"', *stage_epochs, *overrides],
        )
        configs[decoder] = {"pretrain": first.model_dump(mode="json"), "finetune": second.model_dump(mode="json")}
        train(first, second, checkpoint, cache_dir=work / "cache")
        model, meta = load_checkpoint(checkpoint)
        records = read_manifest(manifest, catalog=meta.catalog, split="test")
        labels, ids = label_matrix(records, meta.catalog), meta.catalog.ids
        scores[decoder] = predict_proba(model, load_fundus_pixels(records, meta.preprocess, cache_dir=work / "cache"))
    first_decoder = decoders[0]
    return {
        "overrides": [*stage_epochs, *overrides],
        "train_configs": configs,
        "images": len(labels),
        "macro_auroc": {d: macro_auroc(labels, s, ids) for d, s in scores.items()},
        "vs_" + first_decoder: {
            d: dataclasses.asdict(
                paired_bootstrap_ci(labels, s, scores[first_decoder], macro(auroc), resamples=resamples)
            )
            for d, s in scores.items()
            if d != first_decoder
        },
    }
