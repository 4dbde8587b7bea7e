"""Inference with a PyTorch model on preprocessed pixels, shared by training's evaluation and build's checks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def predict_proba(model: nn.Module, pixels: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Sigmoid probabilities ``(N, C)`` for preprocessed pixels ``(N, 3, S, S)``."""
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            outputs.append(torch.sigmoid(model(torch.from_numpy(pixels[start : start + batch_size]))).numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)
