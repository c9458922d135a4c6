"""Mel converter: framing, filterbank values (librosa's, recorded), log bases, clamping."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from comfyui_selva.selva.models.mel import (MEL_16K, MEL_44K, MelConfig, MelConverter,
                                            slaney_mel_filterbank)


def test_released_settings():
    def fields(c):
        return (c.sampling_rate, c.n_fft, c.num_mels, c.hop_size, c.win_size, c.fmin, c.fmax, c.log)

    assert fields(MEL_16K) == (16000, 1024, 80, 256, 1024, 0, 8000, "log10")
    assert fields(MEL_44K) == (44100, 2048, 128, 512, 2048, 0, 22050, "ln")
    with pytest.raises(dataclasses.FrozenInstanceError):
        MEL_16K.hop_size = 1  # type: ignore[misc]


@pytest.mark.parametrize("cfg", [MEL_16K, MEL_44K])
@pytest.mark.parametrize("extra", [0, 1, 255])
def test_frame_count_is_samples_over_hop(cfg, extra):
    conv = MelConverter(cfg)
    n = 7 * cfg.hop_size + extra
    mel = conv(torch.rand(2, n) * 2 - 1)
    assert mel.shape == (2, cfg.num_mels, n // cfg.hop_size)
    assert mel.dtype == torch.float32 and torch.isfinite(mel).all()


# librosa.filters.mel(sr, n_fft, n_mels, fmin=0, fmax) values, recorded from librosa 0.11
@pytest.mark.parametrize("cfg, row_sums, peaks", [
    (MEL_16K, {0: 0.062344544, 10: 0.06422511, 40: 0.06395814, 79: 0.0639746},
     {0: (2, 0.022534560412168503), 40: (110, 0.014444176107645035),
      79: (493, 0.0033306332770735025)}),
    (MEL_44K, {0: 0.0421066, 10: 0.048329707, 64: 0.04635296, 127: 0.046437662},
     {0: (1, 0.02240149676799774), 64: (132, 0.010152685455977917),
      127: (992, 0.001454105251468718)}),
])
def test_filterbank_matches_librosa(cfg, row_sums, peaks):
    bank = slaney_mel_filterbank(cfg.sampling_rate, cfg.n_fft, cfg.num_mels, cfg.fmin, cfg.fmax)
    assert bank.shape == (cfg.num_mels, cfg.n_fft // 2 + 1) and bank.dtype == torch.float32
    assert (bank >= 0).all()
    for row, total in row_sums.items():
        assert bank[row].sum().item() == pytest.approx(total, rel=1e-6)
    for row, (col, value) in peaks.items():
        assert bank[row].argmax().item() == col
        assert bank[row, col].item() == pytest.approx(value, rel=1e-6)


def test_sine_lands_in_the_right_band():
    cfg = MEL_16K
    t = torch.arange(cfg.sampling_rate) / cfg.sampling_rate
    wave = 0.5 * torch.sin(2 * math.pi * 1000.0 * t)[None]
    mel = MelConverter(cfg)(wave).mean(-1)[0]
    bank = slaney_mel_filterbank(cfg.sampling_rate, cfg.n_fft, cfg.num_mels, 0.0, cfg.fmax)
    bin_1k = round(1000.0 * cfg.n_fft / cfg.sampling_rate)
    assert mel.argmax().item() == bank[:, bin_1k].argmax().item()


def test_log_base_and_clamp():
    wave = torch.rand(1, 4096) * 3 - 1.5  # beyond [-1, 1]: the converter clamps first
    ln_cfg = dataclasses.replace(MEL_16K, log="ln")
    m10 = MelConverter(MEL_16K)(wave)
    mln = MelConverter(ln_cfg)(wave)
    torch.testing.assert_close(mln, m10 * math.log(10.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m10, MelConverter(MEL_16K)(wave.clamp(-1, 1)), rtol=0, atol=0)
    # silence sits on the floor: log10 of the 1e-5 clamp
    silent = MelConverter(MEL_16K)(torch.zeros(1, 4096))
    assert silent.min().item() >= math.log10(1e-5) - 1e-6


def test_deterministic_and_dtype_independent():
    conv = MelConverter(MEL_44K)
    wave = torch.rand(1, 8192) * 2 - 1
    a, b = conv(wave), conv(wave.clone())
    assert torch.equal(a, b)
    half = conv(wave.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, conv(wave.half().float()), rtol=0, atol=0)


def test_rejects_bad_input_and_config():
    with pytest.raises(ValueError):
        MelConverter(MEL_16K)(torch.zeros(2, 1, 1024))
    with pytest.raises(ValueError):
        MelConfig(16000, 1024, 80, 256, 1024, 0.0, 8000.0, log="log2")
    with pytest.raises(ValueError):
        MelConfig(16000, 1024, 80, 255, 1024, 0.0, 8000.0, log="log10")


def test_buffers_are_not_checkpoint_state():
    conv = MelConverter(MEL_16K)
    assert conv.state_dict() == {}
    assert conv.mel_basis.shape == (80, 513) and conv.hann_window.shape == (1024,)
