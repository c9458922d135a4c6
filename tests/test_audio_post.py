"""Post-processing: harmonic exciter, output normaliser, Spectral Matcher's mode and gain cap."""
from __future__ import annotations

import math

import pytest
import torch

from comfyui_selva.selva.audio import harmonic_exciter, measure_lufs, output_normalize, true_peak
from comfyui_selva.selva.errors import SelvaError
from node_helpers import run_node

RATE = 44100


def tone(freq, seconds=1.0, amp=0.3, rate=RATE, channels=1):
    t = torch.arange(int(seconds * rate)) / rate
    return (amp * torch.sin(2 * math.pi * freq * t)).expand(1, channels, -1).clone()


def band_energy(wave, lo, hi, rate=RATE):
    spec = torch.fft.rfft(wave[0, 0].double()).abs() ** 2
    f = torch.fft.rfftfreq(wave.shape[-1], 1 / rate)
    return float(spec[(f >= lo) & (f < hi)].sum() / spec.sum())


def test_exciter_adds_harmonics_above_the_cutoff_only_from_the_high_band():
    high = tone(5000)
    out = harmonic_exciter(high, RATE, 3000.0, drive=5.0, mix=0.5)
    before, after = band_energy(high, 14000, 16000), band_energy(out, 14000, 16000)
    assert before < 1e-6 and after > 1e-3, (before, after)  # the 3rd harmonic (15 kHz) appears
    assert torch.equal(harmonic_exciter(high, RATE, 3000.0, 2.0, 0.0), high)
    low = tone(200)
    low_out = harmonic_exciter(low, RATE, 3000.0, drive=5.0, mix=0.5)
    assert torch.allclose(low_out, torch.tanh(low), atol=2e-3)  # nothing above the cutoff to excite
    assert float(out.abs().max()) < 1.0
    with pytest.raises(SelvaError, match=r"^cutoff_hz must be between 0 and 8000 Hz \(Nyquist\), got 9000.0\.$"):
        harmonic_exciter(tone(200, rate=16000), 16000, 9000.0)


def test_normalizer_reaches_the_target_and_respects_the_true_peak():
    quiet = tone(440, 2.0, amp=0.01, channels=2)
    out = output_normalize(quiet, RATE, -20.0, -1.0)
    assert measure_lufs(out[0], RATE) == pytest.approx(-20.0, abs=0.05)
    loud_target = output_normalize(quiet, RATE, -1.0, -3.0)  # a sine at -1 LUFS would peak near 0 dBTP
    assert true_peak(loud_target[0]) == pytest.approx(10 ** (-3 / 20), rel=1e-4)
    assert measure_lufs(loud_target[0], RATE) < -1.0
    silence = torch.zeros(1, 1, RATE)
    assert torch.equal(output_normalize(silence, RATE), silence)
    short = tone(440, 0.2)
    assert torch.equal(output_normalize(short, RATE), short)


def test_true_peak_sees_peaks_between_samples():
    # a quarter-rate sine sampled at 45 degrees: every sample is 0.707 of the true peak
    n = torch.arange(4000)
    x = torch.sin(math.pi / 2 * n + math.pi / 4)[None]
    assert float(x.abs().max()) == pytest.approx(0.7071, abs=1e-3)
    assert true_peak(x) == pytest.approx(1.0, abs=0.02)


def test_exciter_and_normalizer_nodes():
    audio = {"waveform": tone(5000, channels=2), "sample_rate": RATE}
    (excited,) = run_node("SelvaHarmonicExciter", audio=audio, cutoff_hz=3000.0, drive=2.0, mix=0.15)
    assert excited["waveform"].shape == (1, 2, RATE) and excited["sample_rate"] == RATE
    (normal,) = run_node("SelvaOutputNormalizer", audio=excited, target_lufs=-14.0, true_peak_dbtp=-1.0)
    assert measure_lufs(normal["waveform"][0], RATE) == pytest.approx(-14.0, abs=0.1)


def test_spectral_matcher_mode_must_match_the_model_and_max_gain_caps_the_gains(model):
    audio = {"waveform": tone(440, 1.0, rate=16000) + 0.01 * torch.randn(1, 1, 16000), "sample_rate": 16000}
    (auto,) = run_node("SelvaSpectralMatcher", model=model, audio=audio, strength=1.0)
    (same,) = run_node("SelvaSpectralMatcher", model=model, audio=audio, strength=1.0, mode="16k", max_gain_db=12.0)
    assert torch.equal(auto["waveform"], same["waveform"])
    (capped,) = run_node("SelvaSpectralMatcher", model=model, audio=audio, strength=1.0, max_gain_db=1.0)
    assert not torch.allclose(capped["waveform"], auto["waveform"])
    assert float((capped["waveform"] - audio["waveform"]).abs().max()) < float(
        (auto["waveform"] - audio["waveform"]).abs().max())
    with pytest.raises(SelvaError, match=r"^Spectral Matcher mode 44k asks for the 44100 Hz model's profile, "
                                         r"but the connected model runs at 16000 Hz"):
        run_node("SelvaSpectralMatcher", model=model, audio=audio, strength=1.0, mode="44k")
