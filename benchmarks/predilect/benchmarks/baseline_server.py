"""Baseline (b): the screening server a team would write without Predilect.

FastAPI + PyTorch eager on the same checkpoint, with its own straightforward preprocessing:
PIL full decode -> centre square crop -> resize -> normalise. Like the served ensemble it
grades each image before answering: ``predilect.quality`` on the same crop resized to the
calibrated ``quality_size`` (the work a screening server cannot skip; the grade is returned,
not used to withhold the probabilities). One uvicorn worker; FastAPI runs the sync endpoint in
its thread pool, torch uses ``--torch-threads`` intra-op threads.

    predilect bench baseline-server --checkpoint artifacts/checkpoint/model.safetensors --port 8080
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool


def _team_crop(data: bytes):
    """Decode and centre square crop (the disc spans the frame height), as a Pillow image."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    width, height = rgb.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return rgb.crop((left, top, left + side, top + side))


def _team_normalise(crop, *, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    from PIL import Image

    x = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def team_squares(
    data: bytes, *, size: int, mean: Sequence[float], std: Sequence[float], quality_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """What a team would write: decode, centre square crop, resize, normalise (the model input), and the
    same crop at ``quality_size`` as uint8 planes ``(3, Q, Q)`` for ``predilect.quality.measure``."""
    from PIL import Image

    crop = _team_crop(data)
    graded = np.asarray(crop.resize((quality_size, quality_size), Image.Resampling.BILINEAR))
    return _team_normalise(crop, size=size, mean=mean, std=std), np.ascontiguousarray(graded.transpose(2, 0, 1))


def create_app(checkpoint: Path):
    """The FastAPI app: ``POST /screen`` with the image bytes -> ``{"probabilities": {...}}``."""
    import torch
    from PIL import UnidentifiedImageError

    from predilect import quality
    from predilect.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    cfg, ids = meta.preprocess, meta.catalog.ids
    thresholds = quality.default_quality_cfg()
    app = FastAPI(title="baseline fundus screening")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model_version": meta.version}

    def predict(body: bytes) -> dict[str, object]:
        try:
            pixels, planes = team_squares(body, size=cfg.size, mean=cfg.mean, std=cfg.std, quality_size=thresholds.size)
        except (UnidentifiedImageError, OSError) as e:
            raise HTTPException(status_code=400, detail=f"not an image: {e}") from e
        grade = quality.grade(quality.measure(planes[None], fov_threshold=cfg.fov_threshold), thresholds)
        with torch.inference_mode():
            probabilities = torch.sigmoid(model(torch.from_numpy(pixels)[None]))[0].tolist()
        return {
            "probabilities": dict(zip(ids, probabilities, strict=True)),
            "gradable": bool(grade.gradable[0]),
            "model_version": meta.version,
        }

    @app.post("/screen")
    async def screen(request: Request) -> dict[str, object]:
        # Decode and inference block: off the event loop, into the thread pool.
        return await run_in_threadpool(predict, await request.body())

    return app
