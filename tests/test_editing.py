"""Editing (selva/editing.py): audio-to-audio, range regeneration, continuation, text to audio."""
from __future__ import annotations

import pytest
import torch

from comfyui_selva.selva import audio as audio_ops
from comfyui_selva.selva import conditioning
from comfyui_selva.selva.editing import CROSSFADE_SECONDS, EditOptions
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline
from comfyui_selva.selva.sampling import initial_noise

STEPS = 3


@pytest.fixture(scope="module")
def pipe(models_dir):
    return SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False))


@pytest.fixture(scope="module")
def feats(pipe):
    g = torch.Generator().manual_seed(0)
    return pipe.extract_features(torch.rand(50, 48, 64, 3, generator=g), 25.0, "a dog barking")


def tone(seconds: float, rate: int = 16000, channels: int = 1, freq: float = 440.0) -> torch.Tensor:
    t = torch.arange(int(round(seconds * rate))) / rate
    g = torch.Generator().manual_seed(1)
    mono = 0.3 * torch.sin(2 * torch.pi * freq * t) + 0.05 * torch.randn(t.shape, generator=g)
    return mono.expand(1, channels, -1).clone()


def audio_samples(pipe, seconds=2.0) -> int:
    return pipe.variant.seq_lengths(seconds).audio_samples


def test_denoise_one_is_the_plain_sampler_bit_for_bit(pipe, feats):
    plain = pipe.generate(feats, steps=STEPS, seed=4)
    edited = pipe.generate(feats, steps=STEPS, seed=4, edit=EditOptions(tone(2.0), 16000, denoise=1.0))
    assert torch.equal(plain, edited)
    assert torch.equal(plain, pipe.generate(feats, steps=STEPS, seed=4, edit=EditOptions()))


def test_denoise_zero_is_the_vae_roundtrip_of_the_mixed_down_input(pipe, feats):
    stereo = tone(2.0, rate=22050, channels=2)
    stereo[:, 1] *= 0.5
    out = pipe.generate(feats, steps=STEPS, seed=4, edit=EditOptions(stereo, 22050, denoise=0.0))
    n = audio_samples(pipe)
    mono = audio_ops.resample(stereo.mean(dim=1, keepdim=True), 22050, 16000)
    mono = torch.nn.functional.pad(mono[..., :n], (0, max(0, n - mono.shape[-1])))
    assert out.shape == (1, 1, n)
    assert torch.equal(out, pipe.decoding.vae_roundtrip(mono, 16000))


def test_partial_denoise_starts_part_way_along_the_flow(pipe, feats):
    """denoise 0.4: x(0.6) = 0.4 noise + 0.6 latent, then STEPS Euler steps over [0.6, 1]."""
    wave = tone(2.0)
    got = pipe.sample_latent(feats, steps=STEPS, seed=9, edit=_plan(pipe, wave, denoise=0.4))
    seq = pipe.variant.seq_lengths(2.0)
    gen = pipe.manager.get("generator")
    gen.set_seq_lengths(seq.latent, seq.clip, seq.sync)
    inputs = conditioning.condition_inputs(feats, seq, pipe.device, torch.float32)
    cond = gen.preprocess_conditions(gen.empty_clip_sequence(1), inputs.sync, inputs.text)
    uncond = gen.empty_conditions(1, negative_text_clip_f=pipe.encoding.encode_clip_text([""]))
    known = gen.normalize(pipe.decoding.encode_audio(wave, 16000))
    noise = initial_noise(1, seq.latent, gen.latent_dim, seed=9, device="cpu", dtype=torch.float32)
    x = 0.4 * noise + 0.6 * known
    grid = torch.linspace(0.6, 1.0, STEPS + 1)
    with torch.no_grad():
        for i in range(STEPS):
            x = x + (grid[i + 1] - grid[i]) * gen.cfg_velocity(float(grid[i]), x, cond, uncond, 4.5)
    torch.testing.assert_close(got, gen.unnormalize(x), atol=1e-5, rtol=1e-5)
    plain = pipe.sample_latent(feats, steps=STEPS, seed=9)
    assert not torch.allclose(got, plain)


def _plan(pipe, wave, **kw):
    from comfyui_selva.selva.editing import plan_edit

    seq = pipe.variant.seq_lengths(2.0)
    return plan_edit(pipe.decoding, EditOptions(wave, 16000, **kw), seq.latent, seq.duration, 1)


def test_regenerated_range_keeps_the_input_exactly_outside_and_crossfades_inside(pipe, feats):
    wave = tone(2.0)
    n = audio_samples(pipe)
    out = pipe.generate(feats, steps=STEPS, seed=2,
                        edit=EditOptions(wave, 16000, regenerate_start=0.6, regenerate_end=1.3))
    a, b, f = 9600, 20800, int(CROSSFADE_SECONDS * 16000)
    assert out.shape == (1, 1, n)
    end = wave.shape[-1]  # 2 s; the model's 2 s are a little longer: padded, within one latent frame
    assert torch.equal(out[..., :a], wave[..., :a]) and torch.equal(out[..., b:end], wave[..., b:])
    assert not torch.allclose(out[..., a + f:b - f], wave[..., a + f:b - f])
    # the crossfades lie inside the range: its first and last samples are still mostly the input
    assert (out[0, 0, a] - wave[0, 0, a]).abs() < (out[..., a + f:b - f] - wave[..., a + f:b - f]).abs().max()


def test_range_at_the_start_has_no_fade_in_before_it(pipe, feats):
    wave = tone(2.0)
    out = pipe.generate(feats, steps=STEPS, seed=2,
                        edit=EditOptions(wave, 16000, regenerate_start=0.0, regenerate_end=0.5))
    assert torch.equal(out[..., 8000:wave.shape[-1]], wave[..., 8000:])
    assert not torch.allclose(out[..., :6000], wave[..., :6000])


def test_continuation_keeps_the_input_and_has_the_exact_length(pipe, feats):
    wave = tone(1.1)
    out = pipe.generate(feats, steps=STEPS, seed=3, edit=EditOptions(wave, 16000))
    assert out.shape == (1, 1, audio_samples(pipe))
    assert torch.equal(out[..., :wave.shape[-1]], wave)
    assert out[..., wave.shape[-1]:].abs().max() > 0


def test_input_within_one_latent_frame_counts_as_full_length(pipe, feats):
    n = audio_samples(pipe)
    unit = pipe.decoding.samples_per_latent
    wave = tone(2.0)[..., : n - unit + 1]
    plain = pipe.generate(feats, steps=STEPS, seed=5)
    assert torch.equal(pipe.generate(feats, steps=STEPS, seed=5, edit=EditOptions(wave, 16000)), plain)


@pytest.mark.parametrize("edit, message", [
    (EditOptions(None, 0, regenerate_start=0.5, regenerate_end=1.0),
     "regenerate_start / regenerate_end need init_audio"),
    (EditOptions(None, 0, denoise=0.5), "denoise 0.5 needs init_audio"),
    (EditOptions(tone(2.0), 16000, regenerate_start=1.0, regenerate_end=0.5),
     "The range to regenerate must have 0 <= start < end, got 1 s .. 0.5 s."),
    (EditOptions(tone(2.0), 16000, regenerate_start=1.0, regenerate_end=3.0),
     "The range to regenerate ends at 3 s, after the end of the audio (2.00 s)"),
    (EditOptions(tone(2.0), 16000, denoise=1.5), "denoise must be within [0, 1], got 1.5."),
    (EditOptions(torch.zeros(1, 1, 32000), 16000, denoise=0.5),
     "init_audio is silent (all samples are zero)"),
    (EditOptions(torch.zeros(1, 1, 0), 16000, denoise=0.5), "init_audio is empty (0 samples)."),
    (EditOptions(tone(1.0), 16000, regenerate_start=0.2, regenerate_end=0.5),
     "a range needs audio for the whole duration"),
])
def test_bad_edits_say_what_is_wrong(pipe, feats, edit, message):
    with pytest.raises(SelvaError) as e:
        pipe.generate(feats, steps=1, edit=edit)
    assert message in str(e.value)


def test_text_to_audio_uses_the_learned_empty_video_sequences(pipe):
    text = pipe.encoding.text_features("rain on a roof", 1.5)
    assert not text.has_video
    got = pipe.sample_latent(text, steps=STEPS, seed=1, negative_prompt="music")
    seq = pipe.variant.seq_lengths(1.5)
    gen = pipe.manager.get("generator")
    gen.set_seq_lengths(seq.latent, seq.clip, seq.sync)
    with torch.no_grad():
        cond = gen.preprocess_conditions(gen.empty_clip_sequence(1), gen.empty_sync_sequence(1),
                                         pipe.encoding.encode_clip_text(["rain on a roof"]))
        uncond = gen.empty_conditions(1, negative_text_clip_f=pipe.encoding.encode_clip_text(["music"]))
        x = initial_noise(1, seq.latent, gen.latent_dim, seed=1, device="cpu", dtype=torch.float32)
        grid = torch.linspace(0.0, 1.0, STEPS + 1)
        for i in range(STEPS):
            x = x + (grid[i + 1] - grid[i]) * gen.cfg_velocity(float(grid[i]), x, cond, uncond, 4.5)
    assert torch.equal(got, gen.unnormalize(x))
    audio = pipe.generate(text, steps=1, seed=1)
    assert audio.shape == (1, 1, seq.audio_samples)
    other = pipe.sample_latent(text, prompt="a bell", steps=STEPS, seed=1)
    assert not torch.allclose(other, got)  # a prompt override re-encodes the CLIP text only


def test_text_to_audio_needs_a_duration(pipe):
    with pytest.raises(SelvaError, match="Text to audio needs a positive duration in seconds, got 0"):
        pipe.encoding.text_features("rain", 0)


def test_continuation_over_several_windows(pipe):
    """Beyond one window the long-video windows continue the audio window by window."""
    text = pipe.encoding.text_features("rain on a roof", 12.0)
    wave = tone(9.0)
    out = pipe.generate(text, steps=1, seed=0, edit=EditOptions(wave, 16000))
    assert len(pipe.plan(text).windows) > 1
    assert out.shape == (1, 1, pipe.variant.seq_lengths(12.0).audio_samples)
    assert torch.equal(out[..., :wave.shape[-1]], wave)
