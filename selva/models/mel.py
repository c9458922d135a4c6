"""Waveform -> log-mel spectrogram, as SelVA's audio VAE and vocoders expect it.

The 16 kHz path uses log10 and the 44.1 kHz path the natural log (the released VAEs were trained
that way). STFT framing: reflect-pad by (n_fft - hop) / 2 on each side, no centring, periodic Hann
window, magnitude with a 1e-9 floor inside the square root, Slaney mel filterbank (librosa's
default: slaney mel scale and slaney area normalisation), clamp at 1e-5 before the log.
A waveform of T samples gives T // hop_size frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# magnitude floor inside the sqrt (keeps its gradient finite) and the clamp before the log
_MAG_EPS = 1e-9
_LOG_FLOOR = 1e-5


@dataclass(frozen=True)
class MelConfig:
    sampling_rate: int
    n_fft: int
    num_mels: int
    hop_size: int
    win_size: int
    fmin: float
    fmax: float
    log: str  # "log10" or "ln"

    def __post_init__(self) -> None:
        if self.log not in ("log10", "ln"):
            raise ValueError(f"log must be 'log10' or 'ln', got {self.log!r}")
        if (self.n_fft - self.hop_size) % 2:
            raise ValueError("n_fft - hop_size must be even (symmetric padding)")


MEL_16K = MelConfig(sampling_rate=16_000, n_fft=1024, num_mels=80, hop_size=256, win_size=1024,
                    fmin=0.0, fmax=8_000.0, log="log10")
MEL_44K = MelConfig(sampling_rate=44_100, n_fft=2048, num_mels=128, hop_size=512, win_size=2048,
                    fmin=0.0, fmax=44_100 / 2, log="ln")

# Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
_LINEAR_HZ_PER_MEL = 200.0 / 3
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _LINEAR_HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    if hz >= _BREAK_HZ:
        return _BREAK_MEL + float(np.log(hz / _BREAK_HZ)) / _LOG_STEP
    return hz / _LINEAR_HZ_PER_MEL


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    hz = mel * _LINEAR_HZ_PER_MEL
    high = mel >= _BREAK_MEL
    hz[high] = _BREAK_HZ * np.exp(_LOG_STEP * (mel[high] - _BREAK_MEL))
    return hz


def slaney_mel_filterbank(sampling_rate: float, n_fft: int, num_mels: int, fmin: float,
                          fmax: float) -> torch.Tensor:
    """Triangular mel filters [num_mels, n_fft // 2 + 1], float32, each scaled to unit area.

    Computed in float64 and rounded to float32 in the same places as librosa.filters.mel
    (its defaults), which the reference uses.
    """
    bin_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sampling_rate)
    edges_mel = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), num_mels + 2)
    edges_hz = _mel_to_hz(edges_mel)
    widths = np.diff(edges_hz)
    dist = edges_hz[:, None] - bin_hz[None, :]
    bank = np.zeros((num_mels, bin_hz.size), dtype=np.float32)
    for m in range(num_mels):
        rising = -dist[m] / widths[m]
        falling = dist[m + 2] / widths[m + 1]
        bank[m] = np.maximum(0, np.minimum(rising, falling))
    bank *= (2.0 / (edges_hz[2:num_mels + 2] - edges_hz[:num_mels]))[:, None]
    return torch.from_numpy(bank)


class MelConverter(nn.Module):
    """Waveform [B, T] in [-1, 1] -> log-mel [B, num_mels, T // hop_size] (float32)."""

    def __init__(self, cfg: MelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        bank = slaney_mel_filterbank(cfg.sampling_rate, cfg.n_fft, cfg.num_mels, cfg.fmin,
                                     cfg.fmax)
        # derived constants, never part of a checkpoint
        self.register_buffer("mel_basis", bank, persistent=False)
        self.register_buffer("hann_window", torch.hann_window(cfg.win_size), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.ndim != 2:
            raise ValueError(f"expected a waveform [B, T], got shape {tuple(waveform.shape)}")
        cfg = self.cfg
        # the STFT runs in float32 whatever the caller's dtype (no half STFT on CPU)
        x = waveform.to(device=self.mel_basis.device, dtype=torch.float32).clamp(-1.0, 1.0)
        side = (cfg.n_fft - cfg.hop_size) // 2
        x = F.pad(x.unsqueeze(1), (side, side), mode="reflect").squeeze(1)
        spec = torch.stft(x, cfg.n_fft, hop_length=cfg.hop_size, win_length=cfg.win_size,
                          window=self.hann_window, center=False, normalized=False,
                          onesided=True, return_complex=True)
        spec = torch.view_as_real(spec)
        magnitude = torch.sqrt(spec.pow(2).sum(-1) + _MAG_EPS)
        mel = torch.matmul(self.mel_basis, magnitude).clamp(min=_LOG_FLOOR)
        return torch.log10(mel) if cfg.log == "log10" else torch.log(mel)
