"""Work the pipeline no longer repeats: Sampler prompt encodings, the VAE for the Spectral
Matcher, and reading a whole video file for a short clip."""
from __future__ import annotations

import pytest
import torch

from comfyui_selva.selva import video as video_ops
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.hooks import NO_HOOKS
from comfyui_selva.selva.options import MaskOptions
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline

from node_helpers import frames, write_video


def load(models_dir) -> SelvaPipeline:
    return SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False))


def count_uses(pipe, monkeypatch) -> list:
    used = []
    original = pipe.manager.use

    def spy(name):
        used.append(name)
        return original(name)

    monkeypatch.setattr(pipe.manager, "use", spy)
    return used


def test_a_sampler_prompt_is_encoded_once(models_dir, monkeypatch):
    pipe = load(models_dir)
    feats = pipe.extract_features(frames(1.0, seed=1), 25.0, "a dog barking")
    used = count_uses(pipe, monkeypatch)
    first = pipe.sample_latent(feats, prompt="a bell", negative_prompt="music", steps=1, seed=3)
    assert {"t5", "text_synch", "clip"} <= set(used)
    used.clear()
    again = pipe.sample_latent(feats, prompt="a bell", negative_prompt="music", steps=1, seed=3)
    assert used == ["generator"]  # no encoder ran again
    assert torch.equal(first, again)

    # a fresh pipeline (no cache) gives the same result: the cache serves the right encoding
    fresh = load(models_dir).sample_latent(feats, prompt="a bell", negative_prompt="music",
                                           steps=1, seed=3)
    torch.testing.assert_close(first, fresh, rtol=0, atol=0)

    used.clear()
    other = pipe.sample_latent(feats, prompt="a cat", negative_prompt="music", steps=1, seed=3)
    assert "text_synch" in used and not torch.equal(other, first)
    used.clear()
    pipe.sample_latent(feats, prompt="a cat", negative_prompt="speech", steps=1, seed=3)
    assert used == ["clip", "generator"]  # only the new negative prompt is encoded


def test_a_new_prompt_on_the_same_frames_reuses_the_sync_backbone(models_dir, monkeypatch):
    pipe = load(models_dir)
    net = pipe.manager.get("text_synch")
    runs = []
    original = net.vfeat_extractor.patch_tokens
    monkeypatch.setattr(net.vfeat_extractor, "patch_tokens", lambda seg: runs.append(1) or original(seg))
    video = frames(1.0, seed=1)
    a = pipe.extract_features(video, 25.0, "a dog barking")
    assert runs
    runs.clear()
    b = pipe.extract_features(video, 25.0, "a bell")  # same frames, another prompt
    assert runs == []
    fresh = load(models_dir).extract_features(video, 25.0, "a bell")
    torch.testing.assert_close(b.sync_features, fresh.sync_features, rtol=0, atol=0)
    assert not torch.equal(a.sync_features, b.sync_features)
    pipe.extract_features(frames(1.0, seed=2), 25.0, "a bell")  # other frames: the backbone runs
    assert runs
    runs.clear()
    pipe.extract_features(video, 25.0, "a bell", mask=MaskOptions(torch.ones(1, 32, 48) * 0.5))  # a mask too
    assert runs


def test_the_cached_encoding_belongs_to_the_frames(models_dir):
    pipe = load(models_dir)
    a = pipe.extract_features(frames(1.0, seed=1), 25.0, "a dog")
    b = pipe.extract_features(frames(1.0, seed=2), 25.0, "a dog")
    ra = pipe.encoding.features_for_prompt(a, "a bell", NO_HOOKS)
    rb = pipe.encoding.features_for_prompt(b, "a bell", NO_HOOKS)
    assert not torch.equal(ra.sync_features, rb.sync_features)
    assert torch.equal(ra.text_t5, rb.text_t5)  # same prompt, same text features


def test_spectral_match_does_not_load_the_vae(models_dir):
    pipe = load(models_dir)
    x = torch.randn(1, 2, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    y = pipe.decoding.spectral_match(x, 16000, strength=0.8)
    assert not pipe.manager.is_loaded("vae")
    with_vae = load(models_dir)
    with_vae.manager.get("vae")
    torch.testing.assert_close(with_vae.decoding.spectral_match(x, 16000, strength=0.8), y, rtol=0, atol=0)
    assert not torch.allclose(x, y)


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("perf") / "v.mp4", frames(3.0, seed=4), fps=25)


@pytest.mark.parametrize("mask_frames,counted", [(None, False), (1, False), (75, True)])
def test_only_a_per_frame_mask_reads_the_whole_file(models_dir, video_file, monkeypatch,
                                                    mask_frames, counted):
    pipe = load(models_dir)
    calls = []
    original = video_ops.decode_video

    def spy(*args, **kw):
        calls.append(kw.get("count_frames"))
        return original(*args, **kw)

    monkeypatch.setattr(video_ops, "decode_video", spy)
    mask = None if mask_frames is None else torch.ones(mask_frames, 32, 48)
    p = pipe.prepare(video_file, duration=1.0, mask=MaskOptions(mask))
    assert calls == [counted]
    assert (p.frames.n_source_frames == 75) == counted
    if counted:  # and a per-frame mask of the wrong length is still caught
        with pytest.raises(SelvaError, match="the video has 75"):
            pipe.prepare(video_file, duration=1.0, mask=MaskOptions(torch.ones(40, 32, 48)))
