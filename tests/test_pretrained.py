"""Local pretrained weights in timm, RETFound and open_clip key layouts (tiny random checkpoints
saved in each library's layout; nothing is downloaded)."""

import pytest
import torch
from safetensors.torch import save_file

from predilect.catalog import DEFAULT_CATALOG
from predilect.models.classifier import ModelCfg, VitBackbone
from predilect.models.pretrained import (
    PretrainedError,
    load_text_encoder,
    load_vit_backbone,
    read_state,
    timm_vit_state,
    vit_cfg_from_state,
)
from predilect.models.text import TextCfg, TextEncoder

BASE = ModelCfg(num_diseases=3, image_size=64)
VIT = {"backbone": "vit", "vit_width": 32, "vit_depth": 2, "vit_heads": 2, "patch_size": 16}


def _reference(*, pre_norm: bool = False, image_size: int = 64, in_channels: int = 3) -> VitBackbone:
    torch.manual_seed(0)
    cfg = ModelCfg(num_diseases=3, image_size=image_size, in_channels=in_channels, vit_pre_norm=pre_norm, **VIT)
    backbone = VitBackbone(cfg).eval()
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-trivial LayerNorms and biases
    return backbone


def _loaded(path, *, image_size: int = 64, in_channels: int = 3, layout: str = "auto"):
    vit, _, _ = timm_vit_state(read_state(path), layout)
    base = ModelCfg(num_diseases=3, image_size=image_size, in_channels=in_channels)
    cfg = vit_cfg_from_state(base, vit, heads=2)
    backbone = VitBackbone(cfg).eval()
    report = load_vit_backbone(backbone, path, layout=layout, grid=cfg.grid, in_channels=in_channels)
    return backbone, cfg, report


def _open_clip_visual(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm names -> open_clip's native ViT names (as ``open_clip.VisionTransformer`` saves them)."""
    blocks = {
        "norm1": "ln_1",
        "attn.qkv.weight": "attn.in_proj_weight",
        "attn.qkv.bias": "attn.in_proj_bias",
        "attn.proj": "attn.out_proj",
        "norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    out = {
        "visual.conv1.weight": state["patch_embed.proj.weight"],
        "visual.class_embedding": state["cls_token"].reshape(-1),
        "visual.positional_embedding": state["pos_embed"][0],
        "visual.proj": torch.randn(32, 16),
    }
    for key, value in state.items():
        if key.startswith("norm_pre."):
            out["visual.ln_pre." + key.removeprefix("norm_pre.")] = value
        elif key.startswith("norm."):
            out["visual.ln_post." + key.removeprefix("norm.")] = value
        elif key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            for src, dst in blocks.items():
                if rest.startswith(src):
                    out[f"visual.transformer.resblocks.{i}.{dst}{rest[len(src) :]}"] = value
    return out


def test_vit_loads_timm_layout_exactly_when_saved_as_safetensors(tmp_path):
    reference = _reference()
    state = {**reference.state_dict(), "head.weight": torch.randn(5, 32), "head.bias": torch.zeros(5)}
    save_file(state, str(tmp_path / "timm.safetensors"))
    backbone, cfg, report = _loaded(tmp_path / "timm.safetensors")
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(backbone(x), reference(x))
    assert report.layout == "timm" and set(report.ignored) == {"head.weight", "head.bias"}
    assert (cfg.vit_width, cfg.vit_depth, cfg.patch_size, cfg.vit_mlp_ratio) == (32, 2, 16, 4.0)


def test_vit_loads_retfound_layout_dropping_mae_decoder_when_pickled(tmp_path):
    reference = _reference()
    state = {
        **reference.state_dict(),
        "mask_token": torch.zeros(1, 1, 16),
        "decoder_embed.weight": torch.randn(16, 32),
        "decoder_pos_embed": torch.zeros(1, 17, 16),
    }
    torch.save({"model": state, "epoch": 799}, tmp_path / "RETFound_mae.pth")
    backbone, _, report = _loaded(tmp_path / "RETFound_mae.pth")
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(backbone(x), reference(x))
    assert report.layout == "retfound" and "mask_token" in report.ignored


def test_vit_loads_open_clip_layout_when_full_clip_state_saved(tmp_path):
    reference = _reference(pre_norm=True)
    with torch.no_grad():
        reference.patch_embed.proj.bias.zero_()  # CLIP's conv1 has no bias
    state = _open_clip_visual(reference.state_dict())
    state |= {"token_embedding.weight": torch.randn(10, 8), "logit_scale": torch.tensor(4.6)}
    torch.save(state, tmp_path / "open_clip_model.bin")
    backbone, cfg, report = _loaded(tmp_path / "open_clip_model.bin")
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(backbone(x), reference(x))
    assert report.layout == "open_clip" and cfg.vit_pre_norm and "visual.proj" in report.ignored


def test_vit_loads_open_clip_timm_trunk_when_keys_under_visual_trunk(tmp_path):
    reference = _reference()
    state = {f"visual.trunk.{k}": v for k, v in reference.state_dict().items()}
    state["visual.head.proj.weight"] = torch.randn(16, 32)
    save_file(state, str(tmp_path / "clip_timm.safetensors"))
    backbone, _, report = _loaded(tmp_path / "clip_timm.safetensors")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(backbone(x), reference(x))
    assert report.ignored == ("visual.head.proj.weight",)


def test_vit_resizes_positions_and_sums_filters_when_grid_and_channels_differ(tmp_path):
    save_file(_reference().state_dict(), str(tmp_path / "timm.safetensors"))
    backbone, cfg, report = _loaded(tmp_path / "timm.safetensors", image_size=96, in_channels=1)
    assert cfg.grid == 6 and backbone.pos_embed.shape == (1, 37, 32)
    assert set(report.resized) == {"pos_embed", "patch_embed.proj.weight"}
    assert backbone(torch.randn(1, 1, 96, 96)).shape == (1, 36, 32)


def test_read_state_raises_naming_file_when_not_weights(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(PretrainedError, match="notes.pth"):
        read_state(bad)
    save_file({"fc.weight": torch.zeros(2, 2)}, str(tmp_path / "resnet.safetensors"))
    with pytest.raises(PretrainedError, match="no ViT image tower"):
        _loaded(tmp_path / "resnet.safetensors")


def test_vit_load_raises_when_shapes_do_not_fit(tmp_path):
    save_file(_reference().state_dict(), str(tmp_path / "timm.safetensors"))
    other = VitBackbone(ModelCfg(num_diseases=3, image_size=64, **{**VIT, "vit_width": 48}))
    with pytest.raises(PretrainedError, match="does not fit"):
        load_vit_backbone(other, tmp_path / "timm.safetensors", grid=4, in_channels=3)


def _open_clip_text() -> TextEncoder:
    torch.manual_seed(0)
    cfg = TextCfg(vocab_size=40, context_length=12, width=32, layers=2, heads=2, embed_dim=16, dropout=0.0)
    cfg = TextCfg(**{**cfg.__dict__, "pool": "last", "causal": True})
    return TextEncoder(cfg).eval()


def test_text_encoder_loads_open_clip_text_tower_when_saved_with_clip(tmp_path):
    reference = _open_clip_text()
    state = {**reference.state_dict(), "visual.conv1.weight": torch.zeros(32, 3, 16, 16), "logit_scale": torch.ones(())}
    state["attn_mask"] = torch.zeros(12, 12)
    save_file(state, str(tmp_path / "clip.safetensors"))
    encoder, report = load_text_encoder(tmp_path / "clip.safetensors", heads=2)
    ids = torch.tensor([[2, 5, 9, 3, 0, 0, 0, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(encoder(ids), reference(ids))
    assert encoder.cfg.causal and encoder.cfg.pool == "last" and report.loaded == len(reference.state_dict())


def test_text_encoder_transposes_linear_projection_when_saved_as_module(tmp_path):
    reference = _open_clip_text()
    state = dict(reference.state_dict())
    state["text_projection.weight"] = state.pop("text_projection").t().contiguous()
    save_file(state, str(tmp_path / "clip.safetensors"))
    encoder, _ = load_text_encoder(tmp_path / "clip.safetensors", heads=2)
    ids = torch.tensor([[2, 5, 9, 3, 0, 0, 0, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(encoder(ids), reference(ids))


def test_pretrain_builds_vit_encoders_from_local_checkpoint_when_configured(tmp_path):
    from predilect.training.config import load_config
    from predilect.training.pretrain import PretrainRun, build_model, make_tokenizer

    reference = _reference()
    save_file(reference.state_dict(), str(tmp_path / "timm.safetensors"))
    run = load_config(
        None,
        overrides=[
            "data.preprocess.size=64",
            "data.oct.size=32",
            'model.backbone="vit"',
            f'model.image_checkpoint="{tmp_path / "timm.safetensors"}"',
            "model.vit_heads=2",
        ],
        cls=PretrainRun,
    )
    catalog = DEFAULT_CATALOG.subset(["dr", "dme"])
    model = build_model(run, catalog, make_tokenizer(run.pretrain, catalog))
    blocks = model.fundus.backbone.blocks
    assert isinstance(blocks, torch.nn.ModuleList)
    torch.testing.assert_close(blocks[1].mlp.fc2.weight, reference.blocks[1].mlp.fc2.weight)
    assert model.oct.backbone.patch_embed.proj.weight.shape == (32, 1, 16, 16) and model.oct.cfg.grid == 2


def test_open_clip_zero_shot_baseline_embeds_as_the_original_towers_when_loaded(tmp_path):
    from predilect.models.pretrained import CLIP_MEAN, CLIP_STD, load_open_clip

    visual = _reference(pre_norm=True)
    with torch.no_grad():
        visual.patch_embed.proj.bias.zero_()  # CLIP's conv1 has no bias
    text = _open_clip_text()
    state = _open_clip_visual(visual.state_dict())
    state |= dict(text.state_dict()) | {"logit_scale": torch.tensor(2.0)}
    save_file(state, str(tmp_path / "open_clip_model.safetensors"))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # the project's preprocessing, not CLIP's
    clip = load_open_clip(
        tmp_path / "open_clip_model.safetensors", pixel_mean=mean, pixel_std=std, image_size=64, heads=2, text_heads=2
    ).eval()
    ours = torch.randn(2, 3, 64, 64)
    unit = ours * torch.tensor(std).reshape(1, 3, 1, 1) + torch.tensor(mean).reshape(1, 3, 1, 1)
    as_clip = (unit - torch.tensor(CLIP_MEAN).reshape(1, 3, 1, 1)) / torch.tensor(CLIP_STD).reshape(1, 3, 1, 1)
    expected = torch.nn.functional.normalize(visual.all_tokens(as_clip)[:, 0] @ state["visual.proj"], dim=-1)
    torch.testing.assert_close(clip.image_embedding(ours), expected, rtol=1e-4, atol=1e-5)
    ids = torch.tensor([[2, 5, 9, 3, 0, 0, 0, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(clip.text(ids), text(ids))
    assert float(clip.logit_scale) == pytest.approx(float(torch.tensor(2.0).exp()))


def test_open_clip_zero_shot_baseline_refuses_file_without_projection_when_loaded(tmp_path):
    from predilect.models.pretrained import load_open_clip

    save_file(_open_clip_text().state_dict(), str(tmp_path / "text_only.safetensors"))
    with pytest.raises(PretrainedError, match="visual.proj"):
        load_open_clip(tmp_path / "text_only.safetensors", pixel_mean=(0, 0, 0), pixel_std=(1, 1, 1))
