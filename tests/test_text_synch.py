"""Text-conditioned Synchformer: segmenting, text conditioning, batching, fp16, loading."""
from __future__ import annotations

import pytest
import torch

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.models.synchformer import MotionFormerConfig
from comfyui_selva.selva.models.text_synch import (TEXT_SYNCH_DEPTH1, TextSynchConfig, TextSynchformer,
                                                   load_text_synch_weights)
from manifest import keys_and_shapes, state_dict_for

VIDEO_ENC_FILE = "weights/video_enc_sup_5.pth"
SYNCHFORMER_FILE = "ext_weights/synchformer_state_dict.pth"

TINY_BACKBONE = MotionFormerConfig(img_size=32, patch_size=16, frames_per_segment=16, temporal_patch=2,
                                   embed_dim=32, depth=1, num_heads=4)
TINY = TextSynchConfig(backbone=TINY_BACKBONE, text_dim=24, num_sup_text_tokens=5)


def _official_num_segments(t: int, segment: int = 16, step: int = 8) -> int:
    # generate_multiple_segments: (t - segment) // step + 1, for t >= segment
    return (t - segment) // step + 1


@pytest.fixture(scope="module")
def tiny() -> TextSynchformer:
    torch.manual_seed(0)
    m = TextSynchformer(TINY).eval()
    with torch.no_grad():
        for p in m.parameters():  # the zero-initialised parts would hide the text path
            p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.dim() >= 2 else 0.3))
    return m


def _inputs(b: int, t: int, length: int = 6, pad: tuple[int, ...] = ()):
    frames = torch.rand(b, t, 3, 32, 32) * 2 - 1
    text = torch.randn(b, length, 24)
    mask = torch.ones(b, length, dtype=torch.bool)
    for i, n in enumerate(pad):
        if n:
            mask[i, length - n:] = False
    return frames, text, mask


def _encode(m, frames, text, mask, **kw):
    text, mask = m.prepend_sup_tokens(text, mask)
    with torch.no_grad():
        return m.encode(frames, text, mask, **kw)


def test_segment_count_follows_official_formula():
    for t in range(16, 260):
        assert TEXT_SYNCH_DEPTH1.num_segments(t) == _official_num_segments(t)
    assert TEXT_SYNCH_DEPTH1.num_segments(50) == 5
    assert TEXT_SYNCH_DEPTH1.num_segments(15) == 0
    # 8 s at 25 fps is the official video_seq_len of 192 sync tokens
    assert TEXT_SYNCH_DEPTH1.num_segments(200) * TEXT_SYNCH_DEPTH1.backbone.temporal_slots == 192


@pytest.mark.parametrize("t", [16, 23, 24, 50])
def test_encode_shapes(tiny, t):
    out = _encode(tiny, *_inputs(2, t))
    assert out.shape == (2, _official_num_segments(t) * 8, 32)
    assert torch.isfinite(out).all()


def test_too_short_video_is_a_selva_error(tiny):
    with pytest.raises(SelvaError, match="too short"):
        _encode(tiny, *_inputs(1, 15))


def test_batching_does_not_change_results(tiny):
    frames, text, mask = _inputs(2, 40, pad=(0, 3))
    calls = []
    whole = _encode(tiny, frames, text, mask, segments_per_batch=100)
    for n in (1, 3, None):
        got = _encode(tiny, frames, text, mask, segments_per_batch=n,
                      on_batch=lambda done, total: calls.append((done, total)))
        torch.testing.assert_close(got, whole, atol=1e-5, rtol=1e-5)
    total = 2 * _official_num_segments(40)
    assert calls[:total] == [(i, total) for i in range(1, total + 1)]
    assert calls[-1] == (total, total)


def test_default_segments_per_call_is_several_on_an_accelerator_one_on_the_cpu(tiny):
    from comfyui_selva.selva.models.text_synch import (CPU_SEGMENTS_PER_CALL, DEFAULT_SEGMENTS_PER_CALL,
                                                       default_segments_per_call)

    assert default_segments_per_call(torch.device("cpu")) == CPU_SEGMENTS_PER_CALL == 1
    assert default_segments_per_call(torch.device("cuda")) == DEFAULT_SEGMENTS_PER_CALL > 1
    assert default_segments_per_call(torch.device("mps")) == DEFAULT_SEGMENTS_PER_CALL


def test_default_runs_several_segments_per_backbone_call_on_an_accelerator(tiny, monkeypatch):
    from comfyui_selva.selva.models import text_synch as ts
    from comfyui_selva.selva.models.text_synch import DEFAULT_SEGMENTS_PER_CALL

    # the tiny network runs on the CPU; here it is batched as on an accelerator
    monkeypatch.setattr(ts, "CPU_SEGMENTS_PER_CALL", DEFAULT_SEGMENTS_PER_CALL)

    frames, text, mask = _inputs(1, 40)  # 4 segments
    sizes = []
    original = tiny.vfeat_extractor.patch_tokens

    def counting(segments):
        sizes.append(segments.shape[0])
        return original(segments)

    tiny.vfeat_extractor.patch_tokens = counting
    try:
        batched = _encode(tiny, frames, text, mask)
        assert sizes == [min(4, DEFAULT_SEGMENTS_PER_CALL)] and DEFAULT_SEGMENTS_PER_CALL > 1
        sizes.clear()
        single = _encode(tiny, frames, text, mask, segments_per_batch=1)
        assert sizes == [1, 1, 1, 1]
    finally:
        del tiny.vfeat_extractor.patch_tokens
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_clips_are_encoded_independently(tiny):
    frames, text, mask = _inputs(2, 32, pad=(2, 0))
    both = _encode(tiny, frames, text, mask)
    second = _encode(tiny, frames[1:], text[1:], mask[1:])
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=1e-5)


def test_segment_order_is_clip_major_and_time_ordered(tiny):
    frames, text, mask = _inputs(1, 32)
    full = _encode(tiny, frames, text, mask)
    # the 2nd segment starts at frame 8: encoding frames 8..23 alone gives tokens 8..15
    second = _encode(tiny, frames[:, 8:24], text, mask)
    torch.testing.assert_close(full[:, 8:16], second, atol=1e-5, rtol=1e-5)


def test_text_changes_output_and_padding_is_ignored(tiny):
    frames, text, mask = _inputs(1, 16, pad=(2,))
    base = _encode(tiny, frames, text, mask)
    other_text = text.clone()
    other_text[:, 0] += 1.0
    assert (base - _encode(tiny, frames, other_text, mask)).abs().max() > 1e-3
    padded_changed = text.clone()
    padded_changed[:, -2:] = torch.randn(1, 2, 24) * 10
    torch.testing.assert_close(_encode(tiny, frames, padded_changed, mask), base, atol=1e-6, rtol=1e-6)


def test_prepend_sup_tokens(tiny):
    text = torch.randn(2, 4, 24)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    t, m = tiny.prepend_sup_tokens(text, mask)
    assert t.shape == (2, 9, 24) and m.shape == (2, 9) and m.dtype == torch.bool
    assert torch.equal(t[:, :5], tiny.sup_text_feat.detach().expand(2, -1, -1))
    assert torch.equal(t[:, 5:], text)
    assert m[:, :5].all() and torch.equal(m[:, 5:], mask)
    # the supplementary tokens are used: the output depends on them
    frames = torch.rand(1, 16, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a = tiny.encode(frames, t[:1], m[:1])
        b = tiny.encode(frames, t[:1, 5:], m[:1, 5:])
    assert (a - b).abs().max() > 1e-3


def test_no_sup_tokens_leaves_text_alone():
    m = TextSynchformer(TextSynchConfig(backbone=TINY_BACKBONE, text_dim=24, num_sup_text_tokens=0))
    assert "sup_text_feat" not in m.state_dict()
    text, mask = torch.randn(1, 3, 24), torch.ones(1, 3, dtype=torch.bool)
    t, k = m.prepend_sup_tokens(text, mask)
    assert t is text and k is mask


def test_fp16_tiny_is_finite(tiny):
    frames, text, mask = _inputs(1, 24, pad=(1,))
    ref = _encode(tiny, frames, text, mask)
    half = TextSynchformer(TINY).eval()
    half.load_state_dict(tiny.state_dict())
    half.half()
    text, mask = half.prepend_sup_tokens(text.half(), mask)
    with torch.no_grad():
        out = half.encode(frames.half(), text, mask)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


def test_int_mask_is_accepted_like_bool(tiny):
    frames, text, mask = _inputs(1, 16, pad=(2,))
    torch.testing.assert_close(_encode(tiny, frames, text, mask.long()), _encode(tiny, frames, text, mask))


# -- loading ------------------------------------------------------------------------------------

def _meta_model() -> TextSynchformer:
    with torch.device("meta"):
        return TextSynchformer(TEXT_SYNCH_DEPTH1)


def test_full_size_release_loads_strictly_on_meta():
    m = _meta_model()
    load_text_synch_weights(m, state_dict_for(VIDEO_ENC_FILE, device="meta"), source=VIDEO_ENC_FILE)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == keys_and_shapes(VIDEO_ENC_FILE)


def test_stray_key_raises():
    sd = state_dict_for(VIDEO_ENC_FILE, device="meta")
    sd["afeat_extractor.ast.layernorm.weight"] = torch.empty(768, device="meta")
    with pytest.raises(SelvaError, match=r"video_enc_sup_5\.pth.*1 unexpected key: afeat_extractor"):
        load_text_synch_weights(_meta_model(), sd, source=VIDEO_ENC_FILE)


def test_wrong_shape_raises():
    sd = state_dict_for(VIDEO_ENC_FILE, device="meta")
    sd["sup_text_feat"] = torch.empty(8, 768, device="meta")
    with pytest.raises(SelvaError, match=r"video_enc_sup_5\.pth.*sup_text_feat \(file \(8, 768\)"):
        load_text_synch_weights(_meta_model(), sd, source=VIDEO_ENC_FILE)


def test_synchformer_file_is_not_a_video_encoder_file():
    with pytest.raises(SelvaError, match=r"synchformer_state_dict\.pth.*missing"):
        load_text_synch_weights(_meta_model(), state_dict_for(SYNCHFORMER_FILE, device="meta"),
                                source=SYNCHFORMER_FILE)


def test_real_values_round_trip(tiny):
    m = TextSynchformer(TINY)
    load_text_synch_weights(m, tiny.state_dict(), source="tiny.pth")
    for k, v in tiny.state_dict().items():
        assert torch.equal(m.state_dict()[k], v)
