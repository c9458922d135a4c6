"""Loudness, resampling and spectral post-processing."""
from __future__ import annotations

import math

import pytest
import torch

from comfyui_selva.selva import audio as A
from comfyui_selva.selva.errors import SelvaError

SR = 16000


def sine(freq, seconds=2.0, amp=0.1, sr=SR, channels=1):
    t = torch.arange(int(seconds * sr)) / sr
    return (amp * torch.sin(2 * math.pi * freq * t)).expand(1, channels, -1).clone()


def test_loudness_normalize_reaches_target():
    out = A.loudness_normalize(sine(440), SR, target_lufs=-27.0)
    assert abs(A.measure_lufs(out[0], SR) - (-27.0)) < 0.05


def test_loudness_normalize_never_clips():
    # a sparse click train is loud at its peaks but quiet on average: reaching -10 LUFS would clip
    x = torch.zeros(1, 1, SR * 2)
    x[..., ::800] = 0.5
    out = A.loudness_normalize(x, SR, target_lufs=-10.0)
    assert out.abs().max() <= 1.0
    assert out.abs().max() > 0.9  # it did go as loud as it safely could


def test_loudness_normalize_leaves_unmeasurable_clips_alone():
    assert torch.equal(A.loudness_normalize(torch.zeros(1, 1, SR), SR), torch.zeros(1, 1, SR))
    short = sine(440, seconds=0.1)
    assert torch.equal(A.loudness_normalize(short, SR), short)
    hiss = torch.randn(1, 1, 2 * SR) * 1e-5  # under the -70 LUFS gate: must not become loud noise
    assert torch.equal(A.loudness_normalize(hiss, SR), hiss)


def test_resample_changes_length_and_keeps_tone():
    x = sine(440, seconds=1.0, sr=44100)
    y = A.resample(x, 44100, 16000)
    assert y.shape == (1, 1, 16000)
    spectrum = torch.fft.rfft(y[0, 0]).abs()
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 Hz bins for a 1 s clip
    assert torch.equal(A.resample(x, 44100, 44100), x)


def _band_energy(x, lo, hi, sr=SR):
    spec = torch.fft.rfft(x[0, 0]).abs() ** 2
    freqs = torch.fft.rfftfreq(x.shape[-1], 1 / sr)
    return float(spec[(freqs >= lo) & (freqs < hi)].sum())


def test_hf_smoother_cuts_highs_keeps_lows():
    x = sine(300) + sine(7000)
    y = A.hf_smoother(x, SR, cutoff_hz=4000, blend=1.0, transition_hz=500)
    assert _band_energy(y, 6500, 7500) < 1e-3 * _band_energy(x, 6500, 7500)
    assert abs(_band_energy(y, 200, 400) / _band_energy(x, 200, 400) - 1) < 1e-3
    half = A.hf_smoother(x, SR, cutoff_hz=4000, blend=0.5, transition_hz=500)
    assert abs(_band_energy(half, 6500, 7500) / _band_energy(x, 6500, 7500) - 0.25) < 0.01
    assert torch.equal(A.hf_smoother(x, SR, blend=0.0), x)
    with pytest.raises(SelvaError, match="cutoff"):
        A.hf_smoother(x, SR, cutoff_hz=9000)


def test_spectral_match_moves_profile_toward_target():
    n_mels, n_freq = 4, 1025
    fb = torch.zeros(n_mels, n_freq)
    for i in range(n_mels):  # four disjoint bands over 0..8 kHz
        fb[i, i * 256:(i + 1) * 256] = 1.0
    x = sine(1000) + sine(5000)  # energy in bands 0 and 2
    log_mel = torch.tensor([[0.0], [0.0], [0.0], [0.0]])
    target = torch.tensor([0.0, 0.0, -1.0, 0.0])  # band 2 should drop 1 log10 unit = 20 dB
    y = A.spectral_match(x, log_mel, target, fb, n_fft=2048, strength=1.0, log_to_db=20.0,
                         max_gain_db=40.0)
    drop_2 = 10 * math.log10(_band_energy(y, 4900, 5100) / _band_energy(x, 4900, 5100))
    drop_0 = 10 * math.log10(_band_energy(y, 900, 1100) / _band_energy(x, 900, 1100))
    assert drop_2 - drop_0 == pytest.approx(-20.0, abs=0.5)
    assert torch.equal(A.spectral_match(x, log_mel, target, fb, 2048, strength=0.0), x)


def test_assert_finite_names_precision():
    A.assert_finite(torch.zeros(1, 1, 4), "bf16")
    with pytest.raises(SelvaError) as e:
        A.assert_finite(torch.tensor([[[float("nan")]]]), "fp16")
    assert str(e.value) == ("The generated audio contains NaN or infinite values (fp16): fp16 can "
                            "overflow on this model: switch the loader's precision to bf16 or fp32.")
    with pytest.raises(SelvaError) as e:
        A.assert_finite(torch.tensor([[[0.0, float("inf")]]]), "bf16")
    assert str(e.value) == ("The generated audio contains NaN or infinite values (bf16): try precision "
                            "fp32 in the loader; if it persists, the weights may be corrupt.")


def test_bad_waveform_shape():
    with pytest.raises(SelvaError, match="batch, channels, samples"):
        A.loudness_normalize(torch.zeros(10), SR)
