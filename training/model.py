"""UOPSL-style network at a tiny size.

A convolutional encoder turns an image into a grid of patch tokens; a learned
predilection-sites matrix (C diseases x K site vectors) attends over those tokens and each
disease reads out one logit. Two encoders share the matrix: an OCT encoder that teaches it
from unpaired OCT B-scans, and the fundus encoder that screens with it (see ``training.train``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .attention import predilection_attention_reference, use_custom_op_attention, use_fused_attention
from .kernels import is_supported, predilection_attention


@dataclass(frozen=True)
class ModelCfg:
    """Architecture hyper-parameters; saved in every checkpoint."""

    num_diseases: int
    image_size: int = 224
    in_channels: int = 3
    widths: tuple[int, int, int] = (32, 64, 128)
    sites_per_disease: int = 4
    name: str = "uopsl-tiny"

    @property
    def dim(self) -> int:
        return self.widths[-1]

    @property
    def grid(self) -> int:
        """Tokens per side: the encoder downsamples by 16."""
        if self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {self.image_size}")
        return self.image_size // 16

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ModelCfg:
        data = json.loads(text)
        data["widths"] = tuple(data["widths"])
        return cls(**data)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2 if kernel % 2 else 0, bias=False),
        nn.BatchNorm2d(cout),
        nn.GELU(),
    )


class PatchEncoder(nn.Module):
    """Image (B, in_channels, S, S) -> patch tokens (B, (S/16)^2, D) with learned positions."""

    def __init__(self, cfg: ModelCfg) -> None:
        super().__init__()
        w1, w2, w3 = cfg.widths
        self.body = nn.Sequential(
            _conv_bn(cfg.in_channels, w1, 4, 4),  # patchify: S/4
            _conv_bn(w1, w2, 3, 2),  # S/8
            _conv_bn(w2, w2, 3, 1),
            _conv_bn(w2, w3, 3, 2),  # S/16
            _conv_bn(w3, w3, 3, 1),
        )
        self.pos = nn.Parameter(torch.randn(1, cfg.grid * cfg.grid, w3) * 0.02)
        self.norm = nn.LayerNorm(w3)

    def forward(self, images: Tensor) -> Tensor:
        features = self.body(images)  # (B, D, g, g)
        tokens = features.flatten(2).transpose(1, 2)  # (B, N, D)
        return self.norm(tokens + self.pos)


class PredilectionHead(nn.Module):
    """The predilection-sites matrix and per-disease read-out."""

    def __init__(self, num_diseases: int, sites_per_disease: int, dim: int) -> None:
        super().__init__()
        self.sites = nn.Parameter(torch.randn(num_diseases, sites_per_disease, dim) * dim**-0.5)
        self.weight = nn.Parameter(torch.randn(num_diseases, dim) * dim**-0.5)
        self.bias = nn.Parameter(torch.zeros(num_diseases))

    def forward(self, tokens: Tensor, *, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        if use_custom_op_attention() or (use_fused_attention() and tokens.is_cuda):
            # One fused kernel; parameters follow the tokens' dtype (e.g. under autocast).
            sites, weight, bias = (p.to(tokens.dtype) for p in (self.sites, self.weight, self.bias))
            if is_supported(tokens, sites, weight, bias):
                return predilection_attention(tokens, sites, weight, bias, return_attention=return_attention)
        return predilection_attention_reference(
            tokens, self.sites, self.weight, self.bias, return_attention=return_attention
        )


class FundusClassifier(nn.Module):
    """Fundus image -> per-disease logits; the model that is exported and served."""

    def __init__(self, cfg: ModelCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = PatchEncoder(cfg)
        self.head = PredilectionHead(cfg.num_diseases, cfg.sites_per_disease, cfg.dim)

    def forward(self, pixels: Tensor) -> Tensor:
        logits, _ = self.head(self.encoder(pixels))
        return logits

    def forward_with_attention(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (B, C) and each disease's attention over the token grid (B, C, g, g)."""
        logits, attn = self.head(self.encoder(pixels), return_attention=True)
        grid = self.cfg.grid
        return logits, attn.reshape(attn.shape[0], attn.shape[1], grid, grid)


class OctClassifier(nn.Module):
    """OCT B-scan -> per-disease logits through a head that shares the sites matrix."""

    def __init__(self, cfg: ModelCfg, head: PredilectionHead) -> None:
        super().__init__()
        self.encoder = PatchEncoder(cfg)
        self.head = head

    def forward(self, scans: Tensor) -> Tensor:
        logits, _ = self.head(self.encoder(scans))
        return logits
