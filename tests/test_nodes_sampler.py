"""SelVA Sampler and the audio nodes through NODE_CLASS_MAPPINGS; progress and interrupt."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from comfy_pack import pack_module
from node_helpers import dog_features, run_node

SelvaError = pack_module("selva.errors").SelvaError
Interrupted = pack_module("selva.hooks").Interrupted
compat = pack_module("nodes.comfy_compat")


@pytest.fixture(scope="module")
def features(model, tmp_path_factory):
    return dog_features(model, tmp_path_factory.mktemp("cache"))


def sample(model, features, **kw):
    args = dict(model=model, features=features, prompt="", negative_prompt="", duration=0.0, steps=2,
                cfg_strength=4.5, seed=0, normalize=False, batch_size=1)
    args.update(kw)
    (audio,) = run_node("SelvaSampler", **args)
    return audio


def test_sampler_returns_comfyui_audio_at_the_model_rate(model, features):
    audio = sample(model, features)
    wave = audio["waveform"]
    assert set(audio) == {"waveform", "sample_rate"} and audio["sample_rate"] == 16000
    assert wave.dtype == torch.float32 and wave.device.type == "cpu" and wave.dim() == 3
    assert wave.shape[:2] == (1, 1)
    assert wave.shape[-1] == model.variant.seq_lengths(1.0).audio_samples
    assert torch.isfinite(wave).all()


def test_duration_input_shortens_the_audio(model, features):
    wave = sample(model, features, duration=0.8)["waveform"]
    assert wave.shape[-1] == model.variant.seq_lengths(0.8).audio_samples


def test_batch_variation_i_equals_a_single_run_with_seed_plus_i(model, features):
    batch = sample(model, features, seed=11, batch_size=3)["waveform"]
    assert batch.shape[0] == 3
    single = sample(model, features, seed=12)["waveform"]
    torch.testing.assert_close(batch[1:2], single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch[0], batch[1])


def test_same_seed_same_audio(model, features):
    a = sample(model, features, seed=5)["waveform"]
    b = sample(model, features, seed=5)["waveform"]
    assert torch.equal(a, b)


def test_empty_prompt_uses_the_features_prompt(model, features):
    a = sample(model, features, seed=3)["waveform"]
    b = sample(model, features, seed=3, prompt=features.prompt)["waveform"]
    c = sample(model, features, seed=3, prompt="rain on a roof")["waveform"]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_negative_prompt_changes_the_audio(model, features):
    a = sample(model, features, seed=3)["waveform"]
    b = sample(model, features, seed=3, negative_prompt="music")["waveform"]
    assert not torch.allclose(a, b)


def test_normalize_reaches_the_target_without_clipping(model, features):
    import pyloudnorm

    raw = sample(model, features, seed=4)["waveform"]
    norm = sample(model, features, seed=4, normalize=True, target_lufs=-27.0)["waveform"]
    assert norm.abs().max() <= 1.0
    meter = pyloudnorm.Meter(16000)
    loud = meter.integrated_loudness(norm[0, 0].double().numpy())
    peak_limited = math.isclose(float(norm.abs().max()), 0.999, rel_tol=1e-3)
    assert peak_limited or abs(loud - (-27.0)) < 0.5
    assert not torch.equal(raw, norm)


def test_nan_audio_is_an_error_that_names_the_precision(model, features, monkeypatch):
    monkeypatch.setattr(model, "decode", lambda latent, hooks=None, **kw: torch.full((1, 1, 100), float("nan")))
    with pytest.raises(SelvaError) as e:
        sample(model, features)
    assert str(e.value) == ("The generated audio contains NaN or infinite values (fp32): try precision "
                            "fp32 in the loader; if it persists, the weights may be corrupt.")


# ------------------------------------------------------------------------ progress, interrupt
class _Bar:
    def __init__(self, total, log):
        self.total, self.log = total, log

    def update_absolute(self, value, total=None, preview=None):
        self.log.append((value, total if total is not None else self.total))


def test_progress_bar_follows_the_sampling_steps(model, features, monkeypatch):
    updates = []
    monkeypatch.setattr(compat, "ProgressBar", lambda total: _Bar(total, updates))
    sample(model, features, steps=4)
    assert (4, 4) in updates, updates
    assert (1, 4) in updates


def test_interrupt_stops_sampling_promptly(model, features, monkeypatch):
    steps_seen = []
    monkeypatch.setattr(compat, "ProgressBar", lambda total: _Bar(total, steps_seen))
    monkeypatch.setattr(compat, "processing_interrupted", lambda: len(steps_seen) >= 2)
    with pytest.raises(Interrupted):
        sample(model, features, steps=50)
    assert len(steps_seen) < 5


def test_interrupt_surfaces_as_comfyuis_own_exception(model, features, monkeypatch):
    class InterruptProcessingException(Exception):
        pass

    fake_mm = SimpleNamespace(processing_interrupted=lambda: True,
                              InterruptProcessingException=InterruptProcessingException,
                              soft_empty_cache=lambda *a, **k: None)
    monkeypatch.setattr(compat, "model_management", fake_mm)
    with pytest.raises(InterruptProcessingException):
        sample(model, features, steps=5)


# ------------------------------------------------------------------------------ audio nodes
def _tone(rate=22050, seconds=1.0, channels=2, freq=440.0):
    t = torch.arange(int(rate * seconds)) / rate
    wave = torch.stack([0.3 * torch.sin(2 * math.pi * freq * (c + 1) * t) for c in range(channels)])
    return {"waveform": wave[None].float(), "sample_rate": rate}


def test_vae_roundtrip_takes_any_rate_and_channels(model):
    audio = _tone(rate=22050, seconds=1.0, channels=2)
    (out,) = run_node("SelvaVaeRoundtrip", model=model, audio=audio)
    assert out["sample_rate"] == 16000
    wave = out["waveform"]
    assert wave.shape[:2] == (1, 2) and wave.dtype == torch.float32
    assert abs(wave.shape[-1] - 16000) <= 2 * 512  # within a latent frame of 1 s
    assert torch.isfinite(wave).all()


def test_vae_roundtrip_rejects_empty_audio(model):
    with pytest.raises(SelvaError):
        run_node("SelvaVaeRoundtrip", model=model, audio={"waveform": torch.zeros(1, 1, 0),
                                                          "sample_rate": 16000})


def test_hf_smoother_keeps_shape_and_blend_zero_is_identity():
    audio = _tone(rate=16000, channels=1, freq=7000.0)
    (same,) = run_node("SelvaHfSmoother", audio=audio, cutoff_hz=4000.0, blend=0.0)
    torch.testing.assert_close(same["waveform"], audio["waveform"])
    (smooth,) = run_node("SelvaHfSmoother", audio=audio, cutoff_hz=4000.0, blend=1.0)
    assert smooth["waveform"].shape == audio["waveform"].shape and smooth["sample_rate"] == 16000
    assert smooth["waveform"].abs().max() < 0.5 * audio["waveform"].abs().max()  # 7 kHz tone damped


def test_hf_smoother_refuses_a_cutoff_above_nyquist():
    with pytest.raises(SelvaError, match="(?i)nyquist"):
        run_node("SelvaHfSmoother", audio=_tone(rate=16000), cutoff_hz=9000.0, blend=0.5)


def test_spectral_matcher_returns_audio_at_the_model_rate(model):
    audio = _tone(rate=16000, channels=1)
    (out,) = run_node("SelvaSpectralMatcher", model=model, audio=audio, strength=0.0)
    torch.testing.assert_close(out["waveform"], audio["waveform"])
    (eq,) = run_node("SelvaSpectralMatcher", model=model, audio=_tone(rate=44100), strength=1.0)
    assert eq["sample_rate"] == 16000 and eq["waveform"].shape[:2] == (1, 2)
    assert torch.isfinite(eq["waveform"]).all()


def test_audio_input_of_two_dims_is_accepted():
    audio = {"waveform": _tone(rate=16000, channels=1)["waveform"][0], "sample_rate": 16000}
    (out,) = run_node("SelvaHfSmoother", audio=audio, cutoff_hz=4000.0, blend=0.5)
    assert out["waveform"].dim() == 3


def test_audio_input_of_wrong_shape_says_what_is_wrong():
    # a 4-D waveform has samples: it once got "audio holds no samples"
    tone = _tone(rate=16000, channels=1)["waveform"]
    with pytest.raises(SelvaError, match=r"audio must be shaped \(batch, channels, samples\), got waveform "
                                         r"shape \(1, 1, 1, \d+\)"):
        run_node("SelvaHfSmoother", audio={"waveform": tone[None], "sample_rate": 16000}, cutoff_hz=4000.0,
                 blend=0.5)
    with pytest.raises(SelvaError, match=r"audio holds no samples \(waveform shape \(1, 1, 0\)\)"):
        run_node("SelvaHfSmoother", audio={"waveform": tone[..., :0], "sample_rate": 16000}, cutoff_hz=4000.0,
                 blend=0.5)


def _init_audio(seconds, rate=16000):
    t = torch.arange(int(seconds * rate)) / rate
    return {"waveform": (0.3 * torch.sin(2 * math.pi * 440 * t))[None, None].repeat(1, 2, 1), "sample_rate": rate}


def test_sampler_edit_inputs_default_to_the_plain_output(model, features):
    plain = sample(model, features, seed=3)["waveform"]
    same = sample(model, features, seed=3, init_audio=_init_audio(1.0), denoise=1.0, regenerate_start=0.0,
                  regenerate_end=0.0)["waveform"]
    assert torch.equal(plain, same)


def test_sampler_regenerates_a_range_of_init_audio(model, features):
    init = _init_audio(1.0)
    out = sample(model, features, seed=3, init_audio=init, regenerate_start=0.25, regenerate_end=0.6)["waveform"]
    mono = init["waveform"].mean(dim=1, keepdim=True)
    assert torch.equal(out[..., :4000], mono[..., :4000])
    assert torch.equal(out[..., 9600:16000], mono[..., 9600:16000])
    assert not torch.allclose(out[..., 5600:8000], mono[..., 5600:8000])


def test_sampler_range_without_init_audio_is_a_clear_error(model, features):
    with pytest.raises(SelvaError, match="regenerate_start / regenerate_end need init_audio"):
        sample(model, features, regenerate_start=0.2, regenerate_end=0.5)


def test_text_to_audio_node(model):
    (audio,) = run_node("SelvaTextToAudio", model=model, prompt="rain on a roof", negative_prompt="",
                        duration=1.2, steps=2, cfg_strength=4.5, seed=0, batch_size=2, normalize=False)
    wave = audio["waveform"]
    assert wave.shape == (2, 1, model.variant.seq_lengths(1.2).audio_samples)
    direct = model.generate(model.encoding.text_features("rain on a roof", 1.2), steps=2, seed=0, batch_size=2)
    assert torch.equal(wave, direct)
