"""MotionFormer (Synchformer video backbone): shapes, divided attention layout, loading."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.models.synchformer import (MOTIONFORMER_224, DividedAttention, MotionFormer,
                                                    MotionFormerConfig, load_synchformer_backbone)
from manifest import keys_and_shapes, state_dict_for

SYNCHFORMER_FILE = "ext_weights/synchformer_state_dict.pth"
TINY = MotionFormerConfig(img_size=32, patch_size=8, frames_per_segment=4, temporal_patch=2,
                          embed_dim=32, depth=2, num_heads=4)


def _randomise(module: nn.Module) -> None:
    """Non-trivial values everywhere (zeros would hide layout mistakes)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.dim() >= 2 else 0.2))


def test_released_config_matches_checkpoint_geometry():
    shapes = keys_and_shapes(SYNCHFORMER_FILE)
    cfg = MOTIONFORMER_224
    assert shapes["vfeat_extractor.temp_embed"] == (1, cfg.temporal_slots, cfg.embed_dim) == (1, 8, 768)
    assert shapes["vfeat_extractor.pos_embed"] == (1, 1 + cfg.patches_per_slot, 768) == (1, 197, 768)
    assert len([k for k in shapes if k.startswith("vfeat_extractor.blocks.") and k.endswith("norm1.weight")]) \
        == cfg.depth


def test_tiny_forward_shapes():
    m = MotionFormer(TINY).eval()
    x = torch.rand(3, 3, 4, 32, 32) * 2 - 1
    with torch.no_grad():
        tokens = m.patch_tokens(x)
        out = m(x)
    assert tokens.shape == (3, TINY.temporal_slots * TINY.patches_per_slot, 32) == (3, 32, 32)
    assert out.shape == (3, TINY.temporal_slots, 32)
    assert torch.isfinite(out).all()


def test_wrong_segment_shape_is_a_selva_error():
    m = MotionFormer(TINY)
    with pytest.raises(SelvaError, match="segments of shape"):
        m(torch.zeros(1, 3, 6, 32, 32))


def _reference_divided_attention(attn: DividedAttention, x: torch.Tensor, over: str, slots: int,
                                 patches: int) -> torch.Tensor:
    """Loop-based re-derivation: CLS attends to all tokens, patches to CLS + their own group."""
    b, length, dim = x.shape
    h = attn.num_heads
    d = dim // h
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    split = lambda t: t.reshape(b, length, h, d)  # noqa: E731
    q, k, v = split(q) * d ** -0.5, split(k), split(v)
    out = torch.zeros(b, length, h, d)

    def attend(qi, idx):  # qi (b, h, d); idx: key positions
        w = torch.einsum("bhd,bjhd->bhj", qi, k[:, idx]).softmax(-1)
        return torch.einsum("bhj,bjhd->bhd", w, v[:, idx])

    out[:, 0] = attend(q[:, 0], list(range(length)))
    for s in range(slots):
        for p in range(patches):
            i = 1 + s * patches + p
            group = ([1 + s * patches + j for j in range(patches)] if over == "space"
                     else [1 + j * patches + p for j in range(slots)])
            out[:, i] = attend(q[:, i], [0] + group)
    return attn.proj(out.reshape(b, length, dim))


@pytest.mark.parametrize("over", ["space", "time"])
def test_divided_attention_matches_loop_reference(over):
    slots, patches, dim = 3, 4, 16
    attn = DividedAttention(dim, num_heads=2, qkv_bias=True)
    _randomise(attn)
    x = torch.randn(2, 1 + slots * patches, dim)
    with torch.no_grad():
        got = attn(x, over, slots, patches)
        want = _reference_divided_attention(attn, x, over, slots, patches)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_spatial_aggregator_equals_torch_pre_norm_encoder_layer():
    m = MotionFormer(TINY).eval()
    _randomise(m)
    agg = m.spatial_attn_agg
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=128, dropout=0.0, activation=nn.GELU(),
                                       layer_norm_eps=1e-6, batch_first=True, norm_first=True).eval()
    sd = {k: v for k, v in agg.state_dict().items() if k != "cls_token"}
    layer.load_state_dict(sd, strict=True)
    tokens = torch.randn(2, TINY.temporal_slots * TINY.patches_per_slot, 32)
    with torch.no_grad():
        got = m.aggregate(tokens)
        seq = tokens.reshape(2 * TINY.temporal_slots, TINY.patches_per_slot, 32)
        seq = torch.cat([agg.cls_token.expand(seq.shape[0], -1, -1), seq], dim=1)
        want = layer(seq)[:, 0].reshape(2, TINY.temporal_slots, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fp16_tiny_is_finite():
    m = MotionFormer(TINY).eval()
    x = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = m(x)
        half = m.half()(x.half())
    assert half.dtype == torch.float16
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), ref, atol=2e-2, rtol=2e-2)


# -- loading ------------------------------------------------------------------------------------

def _meta_motionformer() -> MotionFormer:
    with torch.device("meta"):
        return MotionFormer(MOTIONFORMER_224)


def test_full_size_synchformer_file_loads_strictly_on_meta():
    m = _meta_motionformer()
    sd = state_dict_for(SYNCHFORMER_FILE, device="meta")
    assert any(k.startswith("afeat_extractor.") for k in sd)  # the rule really drops things
    load_synchformer_backbone(m, sd, source=SYNCHFORMER_FILE)
    own = m.state_dict()
    video = {k[len("vfeat_extractor."):]: v for k, v in keys_and_shapes(SYNCHFORMER_FILE).items()
             if k.startswith("vfeat_extractor.")}
    assert {k: tuple(v.shape) for k, v in own.items()} == video


def test_backbone_loads_real_values():
    m = MotionFormer(TINY)
    src = MotionFormer(TINY)
    _randomise(src)
    sd = {f"vfeat_extractor.{k}": v for k, v in src.state_dict().items()}
    sd["transformer.off_head.weight"] = torch.zeros(3, 3)  # discarded by rule
    load_synchformer_backbone(m, sd, source="tiny.pth")
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v)


def test_unknown_key_in_synchformer_file_raises():
    m = _meta_motionformer()
    sd = state_dict_for(SYNCHFORMER_FILE, device="meta")
    sd["text_proj.0.weight"] = torch.empty(768, 768, device="meta")
    with pytest.raises(SelvaError, match=r"synchformer_state_dict\.pth.*text_proj"):
        load_synchformer_backbone(m, sd, source=SYNCHFORMER_FILE)


def test_wrong_shape_in_synchformer_file_raises():
    m = _meta_motionformer()
    sd = state_dict_for(SYNCHFORMER_FILE, device="meta")
    sd["vfeat_extractor.temp_embed"] = torch.empty(1, 16, 768, device="meta")
    with pytest.raises(SelvaError, match=r"synchformer_state_dict\.pth.*temp_embed"):
        load_synchformer_backbone(m, sd, source=SYNCHFORMER_FILE)


def test_missing_video_key_raises_and_nothing_is_written():
    m = MotionFormer(TINY)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    src = MotionFormer(TINY)
    _randomise(src)
    sd = {f"vfeat_extractor.{k}": v for k, v in src.state_dict().items() if k != "norm.bias"}
    with pytest.raises(SelvaError, match="1 missing key: norm.bias"):
        load_synchformer_backbone(m, sd, source="tiny.pth")
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])


def test_video_encoder_file_is_not_a_synchformer_file():
    m = _meta_motionformer()
    sd = state_dict_for("weights/video_enc_sup_5.pth", device="meta")
    with pytest.raises(SelvaError, match="not a Synchformer state dict"):
        load_synchformer_backbone(m, sd, source="weights/video_enc_sup_5.pth")
