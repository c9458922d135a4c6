"""The whole pipeline, frames to waveform, on tiny random-weight models loaded from disk."""
from __future__ import annotations

import logging
import math
import sys

import pytest
import torch

from comfyui_selva.selva import host_memory
from comfyui_selva.selva import weights as W
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.features import FeatureCache
from comfyui_selva.selva.hooks import Hooks, Interrupted
from comfyui_selva.selva.options import MaskOptions
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline

import tiny
from page_helpers import present_pages, whole_pages


def load(models_dir, variant="tiny_16k", precision="fp32", **kw) -> SelvaPipeline:
    return SelvaPipeline.load(LoadOptions(variant=variant, precision=precision, device="cpu",
                                          models_dir=models_dir, allow_download=False, **kw))


@pytest.fixture(scope="session")
def pipe(models_dir):
    return load(models_dir)


def video(seconds=2.0, fps=25.0, seed=0, h=48, w=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(int(round(seconds * fps)), h, w, 3, generator=g)


@pytest.fixture(scope="session")
def feats(pipe):
    return pipe.extract_features(video(), 25.0, "a dog barking")


def test_end_to_end_shapes_and_rate(pipe, feats):
    seq = pipe.variant.seq_lengths(2.0)
    assert feats.duration == 2.0 and feats.sync_features.shape == (1, seq.sync, tiny.SYNC_DIM)
    assert feats.text_clip.shape == (1, 77, tiny.CLIP_WIDTH) and feats.clip_features is None
    audio = pipe.generate(feats, steps=3, seed=1)
    assert audio.shape == (1, 1, seq.audio_samples) and audio.dtype == torch.float32
    assert audio.device.type == "cpu" and pipe.sample_rate == 16000
    assert torch.isfinite(audio).all() and audio.abs().max() > 0


def test_seed_determinism_and_batch_variations(pipe, feats):
    a = pipe.generate(feats, steps=2, seed=7)
    assert torch.equal(a, pipe.generate(feats, steps=2, seed=7))
    assert not torch.equal(a, pipe.generate(feats, steps=2, seed=8))
    batch = pipe.generate(feats, steps=2, seed=7, batch_size=3)
    assert batch.shape[0] == 3
    for i in range(3):
        single = pipe.generate(feats, steps=2, seed=7 + i)
        torch.testing.assert_close(batch[i], single[0], atol=1e-5, rtol=1e-5)


def test_cfg_and_negative_prompt_change_the_result(pipe, feats):
    base = pipe.sample_latent(feats, steps=2, seed=3, cfg_strength=4.5)
    assert not torch.allclose(base, pipe.sample_latent(feats, steps=2, seed=3, cfg_strength=1.0))
    neg = pipe.sample_latent(feats, steps=2, seed=3, cfg_strength=4.5, negative_prompt="music")
    assert not torch.allclose(base, neg)
    # below 1 the official wrapper skips the unconditional branch: the negative prompt is moot
    torch.testing.assert_close(pipe.sample_latent(feats, steps=2, seed=3, cfg_strength=0.5),
                               pipe.sample_latent(feats, steps=2, seed=3, cfg_strength=0.5,
                                                  negative_prompt="music"))


def test_duration_handling(pipe, feats, caplog):
    short = pipe.generate(feats, steps=1, duration=1.0)
    assert short.shape[-1] == pipe.variant.seq_lengths(1.0).audio_samples
    with caplog.at_level(logging.WARNING):
        long = pipe.generate(feats, steps=1, duration=5.0)
    assert long.shape[-1] == pipe.variant.seq_lengths(2.0).audio_samples
    assert "longer" in caplog.text
    f = pipe.extract_features(video(3.0), 25.0, "rain", duration=1.5)
    assert f.duration == 1.5
    with caplog.at_level(logging.WARNING):
        g = pipe.extract_features(video(1.0), 25.0, "rain", duration=4.0)
    assert g.duration == pytest.approx(1.0)


def test_prompt_override_reencodes_text_and_sync(pipe, feats):
    direct = pipe.extract_features(video(), 25.0, "rain on a roof")
    a = pipe.sample_latent(feats, prompt="rain on a roof", steps=2, seed=5)
    b = pipe.sample_latent(direct, steps=2, seed=5)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, pipe.sample_latent(feats, steps=2, seed=5))


def test_clip_frames_mode(models_dir):
    pipe = load(models_dir, clip_frames=True)
    f = pipe.extract_features(video(), 25.0, "a dog barking")
    assert f.clip_features.shape == (1, 16, tiny.CLIP_EMBED)
    norms = f.clip_features.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert torch.isfinite(pipe.generate(f, steps=1)).all()
    # a per-frame mask follows the frames picked for CLIP (8 fps) as well as for sync (25 fps)
    per_frame = torch.ones(50, 48, 64)
    per_frame[:, :, :32] = 0
    masked = pipe.extract_features(video(), 25.0, "a dog barking", mask=MaskOptions(per_frame))
    static = pipe.extract_features(video(), 25.0, "a dog barking", mask=MaskOptions(per_frame[:1]))
    torch.testing.assert_close(masked.clip_features, static.clip_features)
    assert not torch.allclose(masked.clip_features, f.clip_features)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precisions_give_finite_audio(models_dir, precision):
    pipe = load(models_dir, precision=precision)
    f = pipe.extract_features(video(), 25.0, "a dog barking")
    audio = pipe.generate(f, steps=2)
    assert audio.dtype == torch.float32 and torch.isfinite(audio).all()
    assert pipe.stage_dtype("generator") == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def test_44k_variant_runs_bigvgan_v2(models_dir):
    pipe = load(models_dir, "tiny_44k")
    f = pipe.extract_features(video(), 25.0, "engine")
    audio = pipe.generate(f, steps=1)
    assert pipe.sample_rate == 44100
    assert audio.shape == (1, 1, pipe.variant.seq_lengths(2.0).audio_samples)


def test_feature_cache_skips_encoders_and_misses_on_any_change(pipe, tmp_path, monkeypatch):
    calls = []
    real = pipe.encoding._encode
    monkeypatch.setattr(pipe.encoding, "_encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = FeatureCache(tmp_path)
    frames = video(seed=3)
    first = pipe.extract_features(frames, 25.0, "a dog", cache=cache)
    again = pipe.extract_features(frames.clone(), 25.0, "a dog", cache=cache)
    assert len(calls) == 1
    assert torch.equal(first.sync_features, again.sync_features)
    changed = frames.clone()
    changed[30, 10, 10, 0] = 1.0 - changed[30, 10, 10, 0]
    for kwargs in ({"frames": changed}, {"prompt": "a cat"}, {"fps": 24.0}, {"duration": 1.5},
                   {"mask": MaskOptions(torch.ones(1, 48, 64) * 0.5)}):
        args = {"frames": frames, "fps": 25.0, "prompt": "a dog", **kwargs}
        n = len(calls)
        pipe.extract_features(args.pop("frames"), args.pop("fps"), args.pop("prompt"), cache=cache, **args)
        assert len(calls) == n + 1, kwargs


def test_mask_semantics(pipe):
    frames = video(seed=4)
    plain = pipe.extract_features(frames, 25.0, "a dog")
    zero_strength = pipe.extract_features(frames, 25.0, "a dog", mask=MaskOptions(torch.zeros(1, 48, 64),
                                                                               mask_strength=0.0))
    assert torch.equal(plain.sync_features, zero_strength.sync_features)
    full = pipe.extract_features(frames, 25.0, "a dog", mask=MaskOptions(torch.zeros(1, 48, 64), mask_strength=1.0))
    # a full background is the neutral fill: exactly 0 at the sync encoder's input
    net = pipe.manager.get("text_synch")
    text_f, text_mask = net.prepend_sup_tokens(full.text_t5, full.text_t5_mask)
    neutral = net.encode(torch.zeros(1, 50, 3, 224, 224), text_f, text_mask)
    torch.testing.assert_close(full.sync_features, neutral)
    with pytest.raises(SelvaError, match="mask"):
        pipe.extract_features(frames, 25.0, "a dog", mask=MaskOptions(torch.ones(7, 48, 64)))


def test_bad_inputs(pipe):
    with pytest.raises(SelvaError, match="no frames"):
        pipe.extract_features(torch.zeros(0, 48, 64, 3), 25.0, "x")
    with pytest.raises(SelvaError, match="too short"):
        pipe.extract_features(video(0.4), 25.0, "x")
    with pytest.raises(SelvaError, match="frame rate"):
        pipe.extract_features(video(), 0.0, "x")


def test_interrupt_stops_sampling(pipe, feats):
    seen = []
    hooks = Hooks(progress=lambda stage, d, n: seen.append((stage, d, n)),
                  interrupted=lambda: sum(s == "sampling" for s, _, _ in seen) >= 2)
    with pytest.raises(Interrupted):
        pipe.generate(feats, steps=10, hooks=hooks)
    assert [d for s, d, _ in seen if s == "sampling"] == [1, 2]


def test_vae_roundtrip_any_rate_and_channels(pipe):
    t = torch.arange(44100) / 44100
    stereo = torch.stack([torch.sin(2 * math.pi * 440 * t), torch.sin(2 * math.pi * 660 * t)])[None] * 0.3
    out = pipe.decoding.vae_roundtrip(stereo, 44100)
    assert out.shape == (1, 2, 16000)  # same length as the input, at the model's rate
    assert torch.isfinite(out).all()
    assert pipe.decoding.vae_roundtrip(torch.zeros(1, 1, 16100), 16000).shape == (1, 1, 16100)
    with pytest.raises(SelvaError, match="too short"):
        pipe.decoding.vae_roundtrip(torch.zeros(1, 1, 300), 16000)


def test_released_pipeline_reloads_on_next_use(models_dir, feats):
    pipe = load(models_dir)
    a = pipe.generate(feats, steps=1, seed=2)
    pipe.release()
    assert not pipe.manager.is_loaded("generator")
    torch.testing.assert_close(pipe.generate(feats, steps=1, seed=2), a)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pages are read from /proc (Linux)")
def test_auto_on_cpu_gives_back_idle_weight_pages_with_the_same_audio(pipe, feats):
    assert pipe.manager.return_idle_memory and not pipe.manager.release_after_use
    a = pipe.generate(feats, steps=2, seed=3)
    gen = pipe.manager.get("generator")  # still loaded ...
    mapped = [t for t in host_memory.module_tensors(gen)
              if host_memory.mapping_holding(host_memory.tensor_span(t), host_memory.file_mappings())]
    whole = sum(last - first for first, last in map(whole_pages, mapped))
    assert whole > 0, "the generator's weights should be the memory-mapped file's"
    assert sum(map(present_pages, mapped)) == 0  # ... but none of its file pages is resident
    assert torch.equal(pipe.generate(feats, steps=2, seed=3), a)


def test_offload_to_cpu_on_cpu_releases_each_network_after_use_with_the_same_audio(models_dir, pipe, feats):
    lean = load(models_dir, offload="offload_to_cpu")
    assert lean.manager.release_after_use and not pipe.manager.release_after_use
    wave = lean.generate(feats, steps=2, seed=3)
    assert not any(lean.manager.is_loaded(n) for n in ("generator", "vae", "vocoder"))
    assert torch.equal(wave, pipe.generate(feats, steps=2, seed=3))
    assert torch.equal(lean.generate(feats, steps=2, seed=3), wave)  # rebuilt, same numbers


def test_spectral_match_uses_vae_statistics(pipe):
    x = torch.randn(1, 1, 16000) * 0.1
    y = pipe.decoding.spectral_match(x, 16000, strength=1.0)
    assert y.shape == x.shape and not torch.allclose(x, y)
    assert torch.equal(pipe.decoding.spectral_match(x, 16000, strength=0.0), x)


def test_missing_weights_offline_lists_every_file(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with caplog.at_level(logging.WARNING):
        pipe = load(tmp_path / "empty", "small_16k")  # nothing is needed until a stage runs
    assert "best_netG.pt" in caplog.text
    with pytest.raises(W.MissingWeightsError) as e:
        pipe.extract_features(video(), 25.0, "a dog")
    msg = str(e.value)
    for part in ("video_enc_sup_5.pth", "generator_small_16k_sup_5.pth", "v1-16.pth", "best_netG.pt",
                 "google/flan-t5-base", "apple/DFN5B-CLIP-ViT-H-14-384"):
        assert part in msg


def test_wrong_generator_file_is_a_clear_error(models_dir, tmp_path):
    import shutil

    bad = tmp_path / "models"
    shutil.copytree(models_dir, bad)
    # a VAE checkpoint saved under the generator's name must not half-load
    shutil.copy(bad / W.FILES["vae_16k"].path, bad / W.FILES["generator_small_16k"].path)
    pipe = load(bad)
    with pytest.raises(SelvaError, match="generator_small_16k_sup_5.pth"):
        pipe.preload()


def test_stages_load_on_first_use(models_dir):
    pipe = load(models_dir)
    assert not any(pipe.manager.is_loaded(n) for n in pipe.manager.stages)
    t = torch.arange(16000) / 16000
    pipe.decoding.vae_roundtrip(torch.sin(2 * math.pi * 440 * t)[None, None] * 0.3, 16000)
    loaded = {n for n in pipe.manager.stages if pipe.manager.is_loaded(n)}
    assert loaded == {"vae", "vocoder", "mel"}  # no text encoders, video encoder or generator
    assert pipe.manager.get("vae").encoder is not None


def test_interrupt_while_preparing_frames(pipe, monkeypatch):
    calls = []
    monkeypatch.setattr(pipe.encoding, "_encode", lambda *a, **k: calls.append(1))
    stages = []
    hooks = Hooks(progress=lambda stage, d, n: stages.append(stage), interrupted=lambda: True)
    with pytest.raises(Interrupted):
        pipe.extract_features(video(), 25.0, "a dog", hooks=hooks)
    assert stages == ["resize"] and calls == []  # stopped before any network ran
