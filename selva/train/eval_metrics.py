"""How close a training run's eval sample is to the recording it should sound like.

Three numbers per eval sample, on the overlapping length of both (mono, the sample's rate):

* ``log_spectral_distance_db``: RMS over STFT bins and frames of the dB difference (lower =
  closer; 0 for the same signal);
* ``mel_cepstral_distortion``: the usual 10/ln(10) * sqrt(2 * sum of squared log-mel
  differences) averaged over frames, on an 80-band log-mel spectrum (lower = closer);
* ``per_band_correlation``: the mean over mel bands of the Pearson correlation of the two
  log-mel envelopes over time (1 = the same movement in every band).

The eval sample is a generation, not a reconstruction, so these follow the trend across a run
(is the adapter moving toward the data?) rather than grade one sample.
"""
from __future__ import annotations

import math

import torch

N_FFT = 2048
HOP = 512
N_MELS = 80
_FLOOR = 1e-8


def _mono(wave: torch.Tensor) -> torch.Tensor:
    wave = wave.detach().float().cpu()
    while wave.dim() > 1:
        wave = wave.mean(dim=0)
    return wave


def _magnitudes(wave: torch.Tensor, n_fft: int) -> torch.Tensor:
    return torch.stft(wave, n_fft, HOP, window=torch.hann_window(n_fft), return_complex=True).abs()


def reference_metrics(sample: torch.Tensor, rate: int, reference: torch.Tensor,
                      reference_rate: int) -> dict[str, float]:
    """Metrics of ``sample`` (C, T) against ``reference`` (C, T'), see the module docstring."""
    import torchaudio

    from ..audio import resample

    gen = _mono(sample)
    ref = _mono(reference)
    if reference_rate != rate:
        ref = resample(ref[None, None], reference_rate, rate)[0, 0]
    length = min(gen.shape[-1], ref.shape[-1])
    n_fft = N_FFT if length >= N_FFT else 1 << max(int(math.log2(max(length, 16))), 4)
    gen_mag, ref_mag = _magnitudes(gen[:length], n_fft), _magnitudes(ref[:length], n_fft)
    lsd = (20 * (gen_mag.clamp_min(_FLOOR).log10() - ref_mag.clamp_min(_FLOOR).log10())).pow(2).mean().sqrt()
    fb = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, rate / 2, N_MELS, rate)  # (F, M)
    gen_mel = (fb.T @ gen_mag).clamp_min(_FLOOR).log()
    ref_mel = (fb.T @ ref_mag).clamp_min(_FLOOR).log()
    diff = gen_mel - ref_mel
    mcd = (10.0 / math.log(10.0)) * (2 * diff.pow(2).sum(dim=0)).sqrt().mean()
    g = gen_mel - gen_mel.mean(dim=1, keepdim=True)
    r = ref_mel - ref_mel.mean(dim=1, keepdim=True)
    denom = g.norm(dim=1) * r.norm(dim=1)
    valid = denom > 1e-6  # a band that does not move has no correlation
    corr = ((g * r).sum(dim=1)[valid] / denom[valid]).mean() if bool(valid.any()) else torch.tensor(0.0)
    return {"log_spectral_distance_db": round(float(lsd), 4), "mel_cepstral_distortion": round(float(mcd), 4),
            "per_band_correlation": round(float(corr), 4)}
