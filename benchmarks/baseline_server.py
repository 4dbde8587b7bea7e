"""Baseline (b): the screening server a team would write without Predilect.

FastAPI + PyTorch eager on the same checkpoint, with its own straightforward preprocessing:
PIL full decode -> centre square crop -> resize -> normalise. One uvicorn worker; FastAPI
runs the sync endpoint in its thread pool, torch uses ``--torch-threads`` intra-op threads.

    predilect bench baseline-server --checkpoint artifacts/checkpoint/model.safetensors --port 8080
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool


def team_preprocess(data: bytes, *, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """What a team would write: decode, centre square crop (the disc spans the frame height), resize."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    width, height = rgb.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = rgb.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
    x = np.asarray(square, dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def create_app(checkpoint: Path):
    """The FastAPI app: ``POST /screen`` with the image bytes -> ``{"probabilities": {...}}``."""
    import torch
    from PIL import UnidentifiedImageError

    from predilect.training.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    cfg, ids = meta.preprocess, meta.catalog.ids
    app = FastAPI(title="baseline fundus screening")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model_version": meta.version}

    def predict(body: bytes) -> dict[str, object]:
        try:
            pixels = team_preprocess(body, size=cfg.size, mean=cfg.mean, std=cfg.std)
        except (UnidentifiedImageError, OSError) as e:
            raise HTTPException(status_code=400, detail=f"not an image: {e}") from e
        with torch.inference_mode():
            probabilities = torch.sigmoid(model(torch.from_numpy(pixels)[None]))[0].tolist()
        return {"probabilities": dict(zip(ids, probabilities, strict=True)), "model_version": meta.version}

    @app.post("/screen")
    async def screen(request: Request) -> dict[str, object]:
        # Decode and inference block: off the event loop, into the thread pool.
        return await run_in_threadpool(predict, await request.body())

    return app
