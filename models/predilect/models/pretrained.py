"""Local pretrained weights: a ViT image backbone (timm, RETFound or open_clip layout) and a text
encoder (open_clip layout). Files only: nothing here downloads anything.

Layouts (key names as the libraries save them):

* ``timm``: ``VisionTransformer.state_dict()``: ``patch_embed.proj.*``, ``cls_token``,
  ``pos_embed``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``
  (``norm_pre.*`` with pre-norm, ``fc_norm.*`` with global pooling), ``head.*``.
* ``retfound``: RETFound's released files, ``torch.save({"model": <timm state>})``; MAE
  pretraining files also hold the decoder (``decoder_*``, ``mask_token``), which is dropped.
* ``open_clip``: a CLIP ``state_dict()``; the image tower under ``visual.``: native ViT
  (``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
  ``transformer.resblocks.N.{ln_1,attn.in_proj_*,attn.out_proj.*,ln_2,mlp.c_fc,mlp.c_proj}``,
  ``ln_post``, ``proj``) or a timm trunk (``visual.trunk.<timm keys>``); the text tower at the
  root (``token_embedding``, ``positional_embedding``, ``transformer.resblocks.N...``,
  ``ln_final``, ``text_projection``), which ``predilect.models.text.TextEncoder`` mirrors by name.

The image backbone's shape (width, depth, patch, MLP ratio, pre-norm) is read from the
weights; the number of heads cannot be, and defaults to width / 64 (timm and open_clip's ViTs).
Absolute position embeddings are resized (bicubic) to the model's grid; a one-channel model
(OCT) gets the RGB patch filters summed, as timm's ``adapt_input_conv`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from predilect.errors import ConfigError
from predilect.models.classifier import ModelCfg, VitBackbone
from predilect.models.text import TextCfg, TextEncoder

IMAGE_LAYOUTS = ("auto", "timm", "retfound", "open_clip")


class PretrainedError(ConfigError):
    """A weights file that cannot be read or does not fit: the message names the file and keys."""


@dataclass(frozen=True)
class LoadReport:
    """What a load did: keys loaded, keys of the file not used, and resized tensors."""

    layout: str
    loaded: int
    ignored: tuple[str, ...]
    resized: tuple[str, ...]


def read_state(path: Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` or a torch pickle (read with ``weights_only=True``),
    unwrapped from ``{"model": ...}`` / ``{"state_dict": ...}``, a DDP ``module.`` prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise PretrainedError(f"{path}: not a readable weights file ({type(e).__name__}: {e})") from e
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedError(f"{path}: expected a mapping of names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def detect_image_layout(state: dict[str, Tensor]) -> str:
    if any(k.startswith("visual.") for k in state):
        return "open_clip"
    if "patch_embed.proj.weight" in state:
        return "retfound" if any(k.startswith(("decoder_", "mask_token")) for k in state) else "timm"
    raise PretrainedError(
        "no ViT image tower found: expected timm/RETFound keys (patch_embed.proj.weight ...) "
        "or open_clip keys (visual.conv1.weight or visual.trunk.patch_embed.proj.weight ...)"
    )


_OPEN_CLIP_BLOCK = {
    "ln_1": "norm1",
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj": "attn.proj",
    "ln_2": "norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def _from_open_clip_visual(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    if any(k.startswith("trunk.") for k in visual):
        trunk = {k.removeprefix("trunk."): v for k, v in visual.items() if k.startswith("trunk.")}
        return trunk, [f"visual.{k}" for k in visual if not k.startswith("trunk.")]
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in visual.items():
        if key == "conv1.weight":
            out["patch_embed.proj.weight"] = value
            out["patch_embed.proj.bias"] = value.new_zeros(value.shape[0])  # CLIP's conv1 has no bias
        elif key == "class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key == "positional_embedding":
            out["pos_embed"] = value.reshape(1, *value.shape[-2:])
        elif key.startswith("ln_pre."):
            out["norm_pre." + key.removeprefix("ln_pre.")] = value
        elif key.startswith("ln_post."):
            out["norm." + key.removeprefix("ln_post.")] = value
        elif m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", key):
            rest = m.group(2)
            for src, dst in _OPEN_CLIP_BLOCK.items():
                if rest == src or rest.startswith(src + "."):
                    out[f"blocks.{m.group(1)}.{dst}{rest[len(src) :]}"] = value
                    break
            else:
                ignored.append("visual." + key)
        else:
            ignored.append("visual." + key)  # proj (CLIP's image projection), attn_pool ...
    return out, ignored


def timm_vit_state(state: dict[str, Tensor], layout: str = "auto") -> tuple[dict[str, Tensor], str, list[str]]:
    """The ViT backbone's tensors in timm names, the layout found, and the file's keys left out."""
    layout = detect_image_layout(state) if layout == "auto" else layout
    if layout not in IMAGE_LAYOUTS:
        raise PretrainedError(f"layout must be one of {IMAGE_LAYOUTS}, got {layout!r}")
    if layout == "open_clip":
        vit, ignored = _from_open_clip_visual(state)
    else:
        vit, ignored = dict(state), []
    keep = ("patch_embed.", "cls_token", "pos_embed", "norm_pre.", "blocks.", "norm.", "fc_norm.")
    for key in list(vit):
        if not key.startswith(keep):
            ignored.append(key)  # head, decoder_*, mask_token ...
            del vit[key]
    if "norm.weight" not in vit and "fc_norm.weight" in vit:  # fine-tuned with global pooling
        vit["norm.weight"], vit["norm.bias"] = vit.pop("fc_norm.weight"), vit.pop("fc_norm.bias")
    else:
        for k in ("fc_norm.weight", "fc_norm.bias"):
            if k in vit:
                ignored.append(k)
                del vit[k]
    if "patch_embed.proj.weight" not in vit or "pos_embed" not in vit:
        raise PretrainedError(f"{layout} weights lack patch_embed.proj.weight / pos_embed")
    return vit, layout, ignored


def vit_cfg_from_state(base: ModelCfg, vit: dict[str, Tensor], *, heads: int | None = None) -> ModelCfg:
    """``base`` with the ViT fields read from timm-named tensors."""
    width, _, patch, _ = vit["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in vit if k.startswith("blocks."))
    hidden = vit["blocks.0.mlp.fc1.weight"].shape[0]
    return replace(
        base,
        backbone="vit",
        patch_size=int(patch),
        vit_width=int(width),
        vit_depth=depth,
        vit_heads=heads or max(1, int(width) // 64),
        vit_mlp_ratio=hidden / width,
        vit_pre_norm="norm_pre.weight" in vit,
    )


def _resize_pos(pos: Tensor, grid: int) -> Tensor:
    cls, patches = pos[:, :1], pos[:, 1:]
    old = int(round(patches.shape[1] ** 0.5))
    if old * old != patches.shape[1]:
        raise PretrainedError(f"position embedding of {patches.shape[1]} patches is not a square grid")
    img = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    img = F.interpolate(img.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, img.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)], dim=1)


def load_vit_backbone(
    backbone: VitBackbone, path: Path, *, layout: str = "auto", grid: int, in_channels: int
) -> LoadReport:
    """Load a local checkpoint into ``backbone`` (shapes must match the file: build the model's
    config with ``vit_cfg_from_state``); raises ``PretrainedError`` naming what does not fit."""
    vit, found, ignored = timm_vit_state(read_state(path), layout)
    resized: list[str] = []
    if vit["pos_embed"].shape[1] != 1 + grid * grid:
        vit["pos_embed"] = _resize_pos(vit["pos_embed"], grid)
        resized.append("pos_embed")
    weight = vit["patch_embed.proj.weight"]
    if weight.shape[1] != in_channels:
        if in_channels != 1:
            raise PretrainedError(f"{path}: patch filters take {weight.shape[1]} channels, the model {in_channels}")
        vit["patch_embed.proj.weight"] = weight.sum(dim=1, keepdim=True)
        resized.append("patch_embed.proj.weight")
    own = backbone.state_dict()
    missing = sorted(set(own) - set(vit))
    extra = sorted(set(vit) - set(own))
    wrong = sorted(k for k in set(own) & set(vit) if own[k].shape != vit[k].shape)
    if missing or extra or wrong:
        raise PretrainedError(
            f"{path} ({found} layout) does not fit the ViT backbone: missing {missing[:6]}, "
            f"unexpected {extra[:6]}, shape mismatch {wrong[:6]}"
        )
    backbone.load_state_dict(vit)
    return LoadReport(found, len(vit), tuple(ignored), tuple(resized))


# ----------------------------------------------------------------------------- text


def open_clip_text_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The text tower of an open_clip CLIP state dict (root keys, or under ``text.``)."""
    if any(k.startswith("text.token_embedding") for k in state):
        state = {k.removeprefix("text."): v for k, v in state.items() if k.startswith("text.")}
    prefixes = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
    text = {k: v for k, v in state.items() if k.startswith(prefixes) and not k.endswith("attn_mask")}
    if "token_embedding.weight" not in text:
        raise PretrainedError("no open_clip text tower found (token_embedding.weight)")
    if "text_projection.weight" in text:  # an nn.Linear projection: (E, W) -> the (W, E) matrix
        text["text_projection"] = text.pop("text_projection.weight").t().contiguous()
    return text


def text_cfg_from_state(text: dict[str, Tensor], *, heads: int | None = None, act: str = "gelu") -> TextCfg:
    vocab, width = text["token_embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in text if k.startswith("transformer.resblocks."))
    hidden = text["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    return TextCfg(
        vocab_size=int(vocab),
        context_length=int(text["positional_embedding"].shape[0]),
        width=int(width),
        layers=layers,
        heads=heads or max(1, int(width) // 64),
        embed_dim=int(text["text_projection"].shape[1]),
        mlp_ratio=hidden / width,
        pool="last",
        causal=True,
        act=act,
        dropout=0.0,
    )


def load_text_encoder(path: Path, *, heads: int | None = None, act: str = "gelu") -> tuple[TextEncoder, LoadReport]:
    """An open_clip text tower from a local file, as a ``TextEncoder`` (causal, end-token pooling)."""
    text = open_clip_text_state(read_state(path))
    encoder = TextEncoder(text_cfg_from_state(text, heads=heads, act=act))
    own = encoder.state_dict()
    missing, extra = sorted(set(own) - set(text)), sorted(set(text) - set(own))
    if missing or extra:
        raise PretrainedError(
            f"{path}: open_clip text tower does not fit: missing {missing[:6]}, unexpected {extra[:6]}"
        )
    encoder.load_state_dict(text)
    return encoder, LoadReport("open_clip", len(text), (), ())


# ----------------------------------------------------------------------------- a whole CLIP


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""The pixel statistics CLIP's image tower was trained with (open_clip's OPENAI_DATASET_MEAN/STD)."""


class ClipZeroShot(torch.nn.Module):
    """A local CLIP in open_clip's layout as the zero-shot baseline: ``image_embedding`` (the class
    token after the final norm, times ``visual.proj``, L2-normalised), ``text`` (the text tower,
    as ``CatalogTexts.embed`` reads it) and ``logit_scale``. Images arrive as this project's preprocessed tensors
    (``(x / 255 - mean) / std`` with the checkpoint's ``PreprocessCfg``): they are mapped back to
    [0, 1], resized to ``image_size`` and normalised with CLIP's statistics."""

    def __init__(
        self,
        visual: VitBackbone,
        proj: Tensor,
        text: TextEncoder,
        logit_scale: Tensor,
        *,
        image_size: int,
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.visual, self.text = visual, text
        self.proj = torch.nn.Parameter(proj, requires_grad=False)
        self.logit_scale = torch.nn.Parameter(logit_scale.reshape(()), requires_grad=False)
        self.image_size = image_size
        ours = torch.tensor(pixel_mean).reshape(1, 3, 1, 1), torch.tensor(pixel_std).reshape(1, 3, 1, 1)
        clip = torch.tensor(CLIP_MEAN).reshape(1, 3, 1, 1), torch.tensor(CLIP_STD).reshape(1, 3, 1, 1)
        self.scale: Tensor
        self.shift: Tensor
        self.register_buffer("scale", ours[1] / clip[1], persistent=False)
        self.register_buffer("shift", (ours[0] - clip[0]) / clip[1], persistent=False)

    def image_embedding(self, pixels: Tensor) -> Tensor:
        x = pixels * self.scale + self.shift  # the same [0, 1] pixels in CLIP's normalisation
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return F.normalize(self.visual.all_tokens(x)[:, 0] @ self.proj, dim=-1)


def load_open_clip(
    path: Path,
    *,
    pixel_mean: tuple[float, float, float],
    pixel_std: tuple[float, float, float],
    image_size: int = 224,
    heads: int | None = None,
    text_heads: int | None = None,
    act: str = "gelu",
) -> ClipZeroShot:
    """A whole CLIP (image and text towers, ``visual.proj``, ``logit_scale``) from a local open_clip
    checkpoint; raises ``PretrainedError`` naming what is missing. ``act="quick_gelu"`` for OpenAI's
    weights. The text tower reads token ids of the checkpoint's own vocabulary: pass the matching
    ``tokenizer.json`` to whatever tokenises the descriptions."""
    state = read_state(path)
    if "visual.proj" not in state or "logit_scale" not in state:
        raise PretrainedError(f"{path}: an open_clip CLIP needs visual.proj and logit_scale (native ViT layout)")
    vit, _, _ = timm_vit_state(state, "open_clip")
    grid = image_size // int(vit["patch_embed.proj.weight"].shape[-1])
    cfg = vit_cfg_from_state(ModelCfg(num_diseases=1, image_size=image_size), vit, heads=heads)
    cfg = replace(cfg, vit_act=act)
    visual = VitBackbone(cfg)
    load_vit_backbone(visual, path, layout="open_clip", grid=grid, in_channels=3)
    text, _ = load_text_encoder(path, heads=text_heads, act=act)
    return ClipZeroShot(
        visual,
        state["visual.proj"].float(),
        text,
        state["logit_scale"].float().exp(),
        image_size=image_size,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
    )
