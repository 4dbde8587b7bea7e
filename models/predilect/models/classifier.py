"""The served network: image -> patch tokens -> predilection cross-attention -> one logit per disease.

Tokens live in one layout shared by every image encoder (fundus and OCT):

    token = [ content (D_c) | anatomical position (D_p) ]

``content`` is the backbone's feature at that patch (LayerNorm-ed); ``anatomical position`` is a
FIXED Fourier code of where the patch lies on the retina, in the fundus image plane, folded about
the vertical midline (``|x - 0.5|``, ``y``): the served model gets no laterality, and the disc of a
right eye and of a left eye then share one coordinate. The predilection-sites matrix (C x K x D)
is a set of queries over these tokens: each site's last D_p entries are a spatial preference that
means the same thing for an OCT B-scan (whose columns map to a line through the fovea, see
``predilect.models.uopsl.OctGeometry``) and for a fundus photograph. That shared coordinate frame is how
*where* a disease's OCT lesions lie reaches the fundus model (see ``predilect.models.uopsl``).

``FundusClassifier`` is the model that is checkpointed, exported to ONNX and served:
``contract.PIXELS [B, 3, S, S] -> contract.LOGITS [B, C]``. Its head is exactly the
``predilection_attention(tokens, sites, weight, bias)`` op (the fused kernel on CUDA, the
reference on CPU and in every export), so the TensorRT rewrite finds it unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from predilect import contract
from predilect.errors import ConfigError
from predilect.kernels import is_supported, predilection_attention
from predilect.kernels.attention import predilection_attention_reference, use_custom_op_attention, use_fused_attention

BACKBONES = ("conv", "conv-local", "conv-local8", "vit")
HEATMAPS = contract.HEATMAP_KINDS


@dataclass(frozen=True)
class ModelCfg:
    """Architecture hyper-parameters of one image encoder + head; saved in every checkpoint.

    ``backbone``: ``conv`` (small BatchNorm CNN, stride 16, the default), ``conv-local8`` (a token
    grid twice as fine: stride 8, each token seeing 32 px centred on its 8-px cell), ``conv-local`` (the same
    depth with 1 x 1 convolutions at stride 1 and centred 4 x 4 ones at stride 2: each token sees
    40 px centred on its 16-px cell, where ``conv``'s see 76 px centred 6 px up-left of it, so a
    token's evidence stays where its lesion lies) or ``vit`` (a ViT in
    timm's parameter layout, so that local timm / RETFound / open_clip weights load into it).
    ``pos_freqs``: Fourier frequencies per axis of the anatomical position code (D_p = 4 x
    pos_freqs; 0 turns the code off). ``heatmap``: what ``forward_with_attention`` returns as each
    disease's map (``evidence_map``): ``attention`` (mean over sites) or ``evidence`` (attention x
    each token's contribution to the logit, clipped at 0).
    """

    num_diseases: int
    image_size: int = 224
    in_channels: int = 3
    widths: tuple[int, int, int] = (32, 64, 128)
    sites_per_disease: int = 4
    name: str = "uopsl-tiny"
    backbone: str = "conv"
    pos_freqs: int = 4
    patch_size: int = 16
    vit_width: int = 192
    vit_depth: int = 4
    vit_heads: int = 3
    vit_mlp_ratio: float = 4.0
    vit_act: str = "gelu"
    vit_pre_norm: bool = False
    heatmap: str = "attention"

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.heatmap not in HEATMAPS:
            raise ConfigError(f"heatmap must be one of {HEATMAPS}, got {self.heatmap!r}")
        if self.pos_freqs < 0 or self.sites_per_disease < 1 or self.num_diseases < 1:
            raise ConfigError("need pos_freqs >= 0, sites_per_disease >= 1 and num_diseases >= 1")
        if self.backbone == "vit" and self.vit_width % self.vit_heads:
            raise ConfigError(f"vit_width {self.vit_width} is not divisible by vit_heads {self.vit_heads}")

    @property
    def content_dim(self) -> int:
        return self.vit_width if self.backbone == "vit" else self.widths[-1]

    @property
    def pos_dim(self) -> int:
        return 4 * self.pos_freqs

    @property
    def dim(self) -> int:
        """Token width D = content + anatomical position."""
        return self.content_dim + self.pos_dim

    @property
    def stride(self) -> int:
        return self.patch_size if self.backbone == "vit" else 8 if self.backbone == "conv-local8" else 16

    @property
    def grid(self) -> int:
        """Tokens per side."""
        if self.image_size % self.stride:
            raise ConfigError(
                f"image size {self.image_size} is not a multiple of {self.stride}, the model's token stride "
                "(data.preprocess.size, --image-size)"
            )
        return self.image_size // self.stride

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ModelCfg:
        data = json.loads(text)
        data["widths"] = tuple(data["widths"])
        return cls(**data)


@dataclass(frozen=True)
class ArchCfg:
    """The ``model`` section of a run config: the encoder architecture (the disease count, input
    size and channels come from the catalog and the data section)."""

    backbone: str = field(
        default="conv",
        metadata={
            "help": "conv (small CNN) | conv-local (40-px tokens centred on their cells) | conv-local8 (stride 8, "
            "32-px tokens) | vit (timm layout)"
        },
    )
    widths: tuple[int, int, int] = field(default=(32, 64, 128), metadata={"help": "conv encoder widths"})
    sites_per_disease: int = field(default=4, metadata={"help": "K, predilection sites per disease"})
    pos_freqs: int = field(default=4, metadata={"help": "Fourier frequencies of the anatomical position code"})
    patch_size: int = field(default=16, metadata={"help": "vit: patch side"})
    vit_width: int = field(default=192, metadata={"help": "vit: width"})
    vit_depth: int = field(default=4, metadata={"help": "vit: blocks"})
    vit_heads: int = field(default=3, metadata={"help": "vit: heads (also for --image-checkpoint)"})
    vit_act: str = field(default="gelu", metadata={"help": "vit: gelu | quick_gelu (OpenAI CLIP weights)"})
    image_checkpoint: str = field(
        default="", metadata={"help": "LOCAL timm / RETFound / open_clip ViT weights for both image encoders"}
    )
    image_layout: str = field(default="auto", metadata={"help": "auto | timm | retfound | open_clip"})
    heatmap: str = field(
        default="attention", metadata={"help": "served map: attention | evidence (attention x token's logit share)"}
    )

    def model_cfg(self, *, num_diseases: int, image_size: int, in_channels: int = 3, name: str = "uopsl") -> ModelCfg:
        return ModelCfg(
            num_diseases=num_diseases,
            image_size=image_size,
            in_channels=in_channels,
            widths=self.widths,
            sites_per_disease=self.sites_per_disease,
            name=name,
            backbone=self.backbone,
            pos_freqs=self.pos_freqs,
            patch_size=self.patch_size,
            vit_width=self.vit_width,
            vit_depth=self.vit_depth,
            vit_heads=self.vit_heads,
            vit_act=self.vit_act,
            heatmap=self.heatmap,
        )


# ----------------------------------------------------------------------------- anatomical positions


def fourier_code(xy: Tensor, freqs: int) -> Tensor:
    """``(N, 2)`` coordinates in [-1, 1] -> ``(N, 4 * freqs)`` sin/cos features, periods 4, 2, 1, 1/2 ..."""
    if freqs == 0:
        return xy.new_zeros((xy.shape[0], 0))
    scales = math.pi / 2 * 2.0 ** torch.arange(freqs, dtype=xy.dtype)
    angles = xy[:, :, None] * scales  # (N, 2, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(xy.shape[0], -1)


def fold(x: Tensor, y: Tensor) -> Tensor:
    """Fundus-plane coordinates (0..1, x right, y down) -> the folded code's inputs in [-1, 1]:
    horizontal distance from the vertical midline (0 at the centre, 1 at the edge) and height."""
    return torch.stack([(x - 0.5).abs() * 4.0 - 1.0, y * 2.0 - 1.0], dim=-1)


def fundus_token_positions(grid: int) -> tuple[Tensor, Tensor]:
    """Fundus-plane centres ``(x, y)``, each ``(grid * grid,)``, of a row-major token grid."""
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return x.flatten(), y.flatten()


# ----------------------------------------------------------------------------- backbones


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, padding: int | None = None) -> nn.Sequential:
    padding = (kernel // 2 if kernel % 2 else 0) if padding is None else padding
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(cout),
        nn.GELU(),
    )


class ConvBackbone(nn.Module):
    """Image (B, in_channels, S, S) -> content tokens (B, (S/stride)^2, widths[-1]) with learned positions."""

    def __init__(self, cfg: ModelCfg) -> None:
        super().__init__()
        w1, w2, w3 = cfg.widths
        if cfg.backbone == "conv-local8":
            # stride 8: one centred 4 x 4 / stride 2 downsampling, then one centred 3 x 3 mixing
            # (padding 1 at stride 1 keeps the window on its cell) and 1 x 1 layers: 32 px per token.
            self.body = nn.Sequential(
                _conv_bn(cfg.in_channels, w1, 4, 4),  # patchify: S/4
                _conv_bn(w1, w2, 4, 2, 1),  # S/8
                _conv_bn(w2, w2, 3, 1),
                _conv_bn(w2, w3, 1, 1),
                _conv_bn(w3, w3, 1, 1),
            )
        else:
            local = cfg.backbone == "conv-local"
            # conv-local: 1 x 1 mixing, and 4 x 4 / stride 2 / padding 1 downsampling, whose window is
            # centred on the output cell (3 x 3 / padding 1 shifts it 6 px up-left by the last layer).
            mix = 1 if local else 3
            down = (4, 2, 1) if local else (3, 2, None)
            self.body = nn.Sequential(
                _conv_bn(cfg.in_channels, w1, 4, 4),  # patchify: S/4
                _conv_bn(w1, w2, *down),  # S/8
                _conv_bn(w2, w2, mix, 1),
                _conv_bn(w2, w3, *down),  # S/16
                _conv_bn(w3, w3, mix, 1),
            )
        self.pos = nn.Parameter(torch.randn(1, cfg.grid * cfg.grid, w3) * 0.02)

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images).flatten(2).transpose(1, 2) + self.pos


class _VitAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, w))


class _VitMlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act: nn.Module = nn.GELU() if act == "gelu" else _QuickGELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class _VitBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = _VitAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = _VitMlp(width, int(width * mlp_ratio), act)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: ModelCfg) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_channels, cfg.vit_width, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VitBackbone(nn.Module):
    """A ViT in timm's ``VisionTransformer`` parameter names (cls token, absolute positions);
    returns the patch tokens (B, N, vit_width) after the final norm, the class token dropped."""

    def __init__(self, cfg: ModelCfg) -> None:
        super().__init__()
        w = cfg.vit_width
        self.patch_embed = _PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + cfg.grid * cfg.grid, w) * 0.02)
        self.norm_pre: nn.Module = nn.LayerNorm(w, eps=1e-6) if cfg.vit_pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(
            _VitBlock(w, cfg.vit_heads, cfg.vit_mlp_ratio, cfg.vit_act) for _ in range(cfg.vit_depth)
        )
        self.norm = nn.LayerNorm(w, eps=1e-6)

    def all_tokens(self, images: Tensor) -> Tensor:
        """Every token after the final norm, the class token first: ``(B, 1 + N, vit_width)``."""
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: Tensor) -> Tensor:
        return self.all_tokens(images)[:, 1:]


def make_backbone(cfg: ModelCfg) -> nn.Module:
    return VitBackbone(cfg) if cfg.backbone == "vit" else ConvBackbone(cfg)


# ----------------------------------------------------------------------------- encoder and head


class PatchEncoder(nn.Module):
    """Image -> tokens ``(B, N, D)`` = [LayerNorm(content) | fixed anatomical code].

    ``positions``: the fundus-plane ``(x, y)`` of each token (default: the image's own grid).
    """

    def __init__(self, cfg: ModelCfg, positions: tuple[Tensor, Tensor] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = make_backbone(cfg)
        self.norm = nn.LayerNorm(cfg.content_dim)
        x, y = positions if positions is not None else fundus_token_positions(cfg.grid)
        if x.numel() != cfg.grid * cfg.grid:
            raise ValueError(f"{x.numel()} token positions for a {cfg.grid}x{cfg.grid} grid")
        self.anatomy: Tensor
        self.register_buffer("anatomy", fourier_code(fold(x, y), cfg.pos_freqs), persistent=False)

    def content(self, images: Tensor) -> Tensor:
        """LayerNorm-ed content tokens ``(B, N, D_c)``."""
        return self.norm(self.backbone(images))

    def with_position(self, content: Tensor, code: Tensor | None = None) -> Tensor:
        """``[content | anatomical code]``; ``code (B, N, D_p)`` replaces the encoder's own per image
        (e.g. each OCT scan's own line on the fundus plane)."""
        if code is None:
            code = self.anatomy.expand(content.shape[0], -1, -1)
        return torch.cat([content, code.to(content.dtype)], dim=-1)

    def forward(self, images: Tensor) -> Tensor:
        return self.with_position(self.content(images))


def predilection(
    tokens: Tensor, sites: Tensor, weight: Tensor, bias: Tensor, *, return_attention: bool = False
) -> tuple[Tensor, Tensor | None]:
    """The predilection cross-attention: the fused kernel on CUDA (or the custom op when an
    export asks for it), the reference elsewhere."""
    if use_custom_op_attention() or (use_fused_attention() and tokens.is_cuda):
        # One fused kernel; parameters follow the tokens' dtype (e.g. under autocast).
        sites, weight, bias = (p.to(tokens.dtype) for p in (sites, weight, bias))
        if is_supported(tokens, sites, weight, bias):
            return predilection_attention(tokens, sites, weight, bias, return_attention=return_attention)
    return predilection_attention_reference(tokens, sites, weight, bias, return_attention=return_attention)


def evidence_map(attention: Tensor, tokens: Tensor, weight: Tensor) -> Tensor:
    """Each token's positive share of each disease's logit, ``(B, C, N)``.

    attention ``(B, C, N)`` (mean over sites), tokens ``(B, N, D)``, weight ``(C, D)``. Unclipped,
    ``attention * (token . w_c)`` sums over the tokens to the logit less its bias, so the map's peak
    is the token that adds most to the finding; where the attention alone peaks need not be (a
    token can draw attention and add little).
    """
    contribution = torch.einsum("bnd,cd->bcn", tokens, weight.to(tokens.dtype))
    return (attention * contribution).clamp_min(0.0)


class PredilectionHead(nn.Module):
    """The predilection-sites matrix (C, K, D) and the per-disease read-out (C, D) + (C,)."""

    def __init__(self, num_diseases: int, sites_per_disease: int, dim: int) -> None:
        super().__init__()
        self.sites = nn.Parameter(torch.randn(num_diseases, sites_per_disease, dim) * dim**-0.5)
        self.weight = nn.Parameter(torch.randn(num_diseases, dim) * dim**-0.5)
        self.bias = nn.Parameter(torch.zeros(num_diseases))

    def forward(self, tokens: Tensor, *, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        return predilection(tokens, self.sites, self.weight, self.bias, return_attention=return_attention)


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
        """Logits (B, C) and each disease's map over the token grid (B, C, g, g): its attention, or
        its evidence (``cfg.heatmap``, ``evidence_map``)."""
        tokens = self.encoder(pixels)
        logits, attn = self.head(tokens, return_attention=True)
        assert attn is not None
        if self.cfg.heatmap == "evidence":
            attn = evidence_map(attn, tokens, self.head.weight)
        grid = self.cfg.grid
        return logits, attn.reshape(attn.shape[0], attn.shape[1], grid, grid)
