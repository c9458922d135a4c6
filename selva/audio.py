"""Audio utilities around generation: loudness, resampling and gentle spectral post-processing.

All functions take and return waveforms shaped (B, C, T), float32, on the CPU.
"""
from __future__ import annotations

import logging
import math
from fractions import Fraction

import numpy as np
import torch

from .errors import SelvaError

log = logging.getLogger(__name__)

# BS.1770 gating needs at least one 400 ms block; shorter clips are peak-normalised instead.
_MIN_LOUDNESS_SECONDS = 0.4
_PEAK_CEILING = 0.999  # stay strictly inside [-1, 1] after any gain


def check_waveform(wave: torch.Tensor, what: str = "audio") -> torch.Tensor:
    if not isinstance(wave, torch.Tensor) or wave.dim() != 3:
        shape = tuple(wave.shape) if isinstance(wave, torch.Tensor) else type(wave).__name__
        raise SelvaError(f"{what} must be a (batch, channels, samples) tensor, got {shape}.")
    if wave.shape[-1] == 0:
        raise SelvaError(f"{what} is empty (0 samples).")
    return wave.detach().to("cpu", torch.float32)


def measure_lufs(wave_ct: torch.Tensor, sample_rate: int) -> float:
    """Integrated loudness (ITU-R BS.1770-4, K-weighted, gated) of one (C, T) clip in LUFS."""
    import pyloudnorm

    meter = pyloudnorm.Meter(sample_rate)
    data = wave_ct.numpy().astype(np.float64).T  # pyloudnorm wants (samples, channels)
    return float(meter.integrated_loudness(data))


def loudness(clip: torch.Tensor, sample_rate: int) -> float:
    """Integrated loudness of one (C, T) clip; -inf where it is undefined: silence, a clip
    shorter than one 400 ms block (or empty), or one entirely under the -70 LUFS gate."""
    if clip.shape[-1] < _MIN_LOUDNESS_SECONDS * sample_rate or float(clip.abs().max()) == 0:
        return -math.inf
    return measure_lufs(clip, sample_rate)


def _limit_gain(wave_ct: torch.Tensor, gain: float) -> float:
    """The largest gain <= ``gain`` that keeps every sample inside [-1, 1]."""
    peak = float(wave_ct.abs().max())
    if peak * gain > _PEAK_CEILING and peak > 0:
        return _PEAK_CEILING / peak
    return gain


DEFAULT_TARGET_LUFS = -27.0  # the official pipeline's loudness


def loudness_normalize(wave: torch.Tensor, sample_rate: int, target_lufs: float = DEFAULT_TARGET_LUFS) -> torch.Tensor:
    """Scale each clip to ``target_lufs`` integrated loudness, never clipping.

    When reaching the target would push a peak past full scale, the gain is capped at the peak
    instead (a warning says so): a quieter clip is better than a clipped one. Clips whose
    loudness is undefined (silence, everything under the -70 LUFS gate, or shorter than one
    400 ms block) are left as they are: SelVA legitimately returns near-silence when the
    prompted sound is absent, and boosting it would only amplify noise.
    """
    wave = check_waveform(wave)
    out = torch.empty_like(wave)
    for i, clip in enumerate(wave):
        loud = loudness(clip, sample_rate)
        if not math.isfinite(loud):
            log.info("Clip %d is too quiet or too short to measure its loudness; left unchanged.", i)
            out[i] = clip
            continue
        wanted = 10.0 ** ((target_lufs - loud) / 20.0)
        gain = _limit_gain(clip, wanted)
        if gain < wanted:
            log.warning("Loudness target %.1f LUFS would clip clip %d; limited to %.1f LUFS "
                        "to keep peaks below full scale.", target_lufs, i,
                        loud + 20.0 * math.log10(gain))
        out[i] = clip * gain
    return out


def resample(wave: torch.Tensor, src_rate: int, dst_rate: int) -> torch.Tensor:
    """Band-limited polyphase resampling (scipy's ``resample_poly``, Kaiser window)."""
    from scipy.signal import resample_poly

    wave = check_waveform(wave)
    if src_rate <= 0 or dst_rate <= 0:
        raise SelvaError(f"Sample rates must be positive, got {src_rate} -> {dst_rate}.")
    if src_rate == dst_rate:
        return wave.clone()
    ratio = Fraction(int(dst_rate), int(src_rate))
    out = resample_poly(wave.numpy(), ratio.numerator, ratio.denominator, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def _apply_frequency_gain(wave: torch.Tensor, gain_f: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Multiply every STFT frame by a real per-bin gain (zero-phase filtering), same length out."""
    b, c, t = wave.shape
    window = torch.hann_window(n_fft, dtype=torch.float32)
    spec = torch.stft(wave.reshape(b * c, t), n_fft, hop_length=n_fft // 4, window=window,
                      return_complex=True, center=True, pad_mode="reflect")
    spec = spec * gain_f.to(torch.float32)[None, :, None]
    out = torch.istft(spec, n_fft, hop_length=n_fft // 4, window=window, center=True, length=t)
    return out.reshape(b, c, t)


def _fft_size(t: int) -> int:
    # 2048, halved while reflect padding (which needs n_fft // 2 < t) could not pad ``t`` samples
    n = 2048
    while n // 2 >= t and n > 16:
        n //= 2
    return n


def _check_cutoff(cutoff_hz: float, sample_rate: int) -> None:
    nyquist = sample_rate / 2
    if not 0.0 < cutoff_hz < nyquist:
        raise SelvaError(f"cutoff_hz must be between 0 and {nyquist:g} Hz (Nyquist), got {cutoff_hz}.")


def hf_smoother(wave: torch.Tensor, sample_rate: int, cutoff_hz: float = 6000.0,
                blend: float = 0.5, transition_hz: float = 1000.0) -> torch.Tensor:
    """Tame harsh high frequencies: above ``cutoff_hz`` mix in a low-passed copy.

    ``blend`` 0 leaves the audio untouched, 1 replaces everything above the cutoff with the
    low-passed copy. The low-pass has a raised-cosine roll-off ``transition_hz`` wide so it rings
    less than a brick wall; below the cutoff the result equals the input.
    """
    wave = check_waveform(wave)
    if not 0.0 <= blend <= 1.0:
        raise SelvaError(f"blend must be within [0, 1], got {blend}.")
    _check_cutoff(cutoff_hz, sample_rate)
    if blend == 0.0:
        return wave.clone()
    n_fft = _fft_size(wave.shape[-1])
    freqs = torch.fft.rfftfreq(n_fft, 1.0 / sample_rate, dtype=torch.float64)
    ramp = ((freqs - cutoff_hz) / max(transition_hz, 1e-6)).clamp(0.0, 1.0)
    lowpass = 0.5 * (1.0 + torch.cos(math.pi * ramp))  # 1 below cutoff, 0 past the transition
    # out = (1 - blend) * x + blend * lowpass(x): one gain curve, applied once
    gain = (1.0 - blend) + blend * lowpass
    return _apply_frequency_gain(wave, gain, n_fft)


def band_gains_to_frequency_gain(band_gain_db: torch.Tensor, filterbank: torch.Tensor) -> torch.Tensor:
    """Spread per-mel-band gains (dB) onto linear-frequency bins through the mel filterbank.

    ``filterbank`` is (n_mels, n_freq); each frequency bin takes the filterbank-weighted average
    of the band gains that cover it (bins no band covers keep gain 1).
    """
    fb = filterbank.to(torch.float64)
    weight = fb.sum(dim=0)
    db = (band_gain_db.to(torch.float64)[:, None] * fb).sum(dim=0) / weight.clamp_min(1e-12)
    db = torch.where(weight > 1e-8, db, torch.zeros_like(db))
    return 10.0 ** (db / 20.0)


def spectral_match(wave: torch.Tensor, log_mel: torch.Tensor, target_log_mel: torch.Tensor,
                   filterbank: torch.Tensor, n_fft: int, strength: float = 0.5,
                   log_to_db: float = 20.0 / math.log(10.0), max_gain_db: float = 12.0) -> torch.Tensor:
    """Per-band equaliser moving the clip's average log-mel profile toward ``target_log_mel``.

    ``log_mel`` is the clip's log-mel spectrogram (n_mels, frames) or (B, n_mels, frames) and
    ``target_log_mel`` the per-band profile the VAE was trained on (its normalisation mean).
    ``log_to_db`` converts a log-magnitude difference to decibels (natural log of magnitude by
    default). Gains are clamped to +-``max_gain_db`` and scaled by ``strength`` (0 = no change).
    """
    wave = check_waveform(wave)
    if not 0.0 <= strength <= 1.0:
        raise SelvaError(f"strength must be within [0, 1], got {strength}.")
    if strength == 0.0:
        return wave.clone()
    if log_mel.dim() == 2:
        log_mel = log_mel[None]
    out = torch.empty_like(wave)
    for i in range(wave.shape[0]):
        profile = log_mel[min(i, log_mel.shape[0] - 1)].mean(dim=-1)
        diff_db = (target_log_mel.to(profile) - profile) * log_to_db
        # remove the overall level difference: this is an equaliser, loudness is handled elsewhere
        diff_db = diff_db - diff_db.mean()
        gain_db = (diff_db * strength).clamp(-max_gain_db, max_gain_db)
        gain = band_gains_to_frequency_gain(gain_db, filterbank)
        out[i:i + 1] = _apply_frequency_gain(wave[i:i + 1], gain, n_fft)
    return out


def assert_finite(wave: torch.Tensor, precision: str) -> None:
    """Refuse NaN/inf audio with the likely cause instead of returning silence or noise."""
    if not torch.isfinite(wave).all():
        hint = ("fp16 can overflow on this model: switch the loader's precision to bf16 or fp32"
                if precision == "fp16" else
                "try precision fp32 in the loader; if it persists, the weights may be corrupt")
        raise SelvaError(f"The generated audio contains NaN or infinite values ({precision}): {hint}.")


def harmonic_exciter(wave: torch.Tensor, sample_rate: int, cutoff_hz: float = 3000.0, drive: float = 2.0,
                     mix: float = 0.15) -> torch.Tensor:
    """Add harmonics above ``cutoff_hz``: the band above it (a zero-phase 4th-order Butterworth
    high-pass) is saturated with ``tanh(drive * x) / drive`` and ``mix`` of it is added back, then
    the sum is soft-clipped with ``tanh``. The saturation creates the overtones a vocoder tends to
    smear; ``mix`` 0 returns the input unchanged."""
    from scipy.signal import butter, sosfiltfilt

    wave = check_waveform(wave)
    _check_cutoff(cutoff_hz, sample_rate)
    if drive < 1.0:
        raise SelvaError(f"drive must be 1 or more, got {drive}.")
    if not 0.0 <= mix <= 1.0:
        raise SelvaError(f"mix must be within [0, 1], got {mix}.")
    if mix == 0.0:
        return wave.clone()
    sos = butter(4, cutoff_hz, btype="highpass", fs=sample_rate, output="sos")
    data = wave.numpy().astype(np.float64)
    # sosfiltfilt pads by up to 3 * (2 * sections + 1) samples; shorter clips skip the padding
    pad = min(data.shape[-1] - 1, 3 * (2 * len(sos) + 1))
    high = sosfiltfilt(sos, data, axis=-1, padlen=pad)
    excited = np.tanh(high * drive) / drive
    out = np.tanh(data + mix * excited)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def true_peak(wave_ct: torch.Tensor) -> float:
    """The clip's true peak (BS.1770-4 Annex 2: the maximum of the 4x oversampled signal), linear."""
    up = resample(wave_ct[None], 1, 4)[0]
    return float(max(up.abs().max(), wave_ct.abs().max()))


def output_normalize(wave: torch.Tensor, sample_rate: int, target_lufs: float = -14.0,
                     true_peak_dbtp: float = -1.0) -> torch.Tensor:
    """Each clip to ``target_lufs`` integrated loudness, then scaled down (never up) so its true
    peak stays at or below ``true_peak_dbtp`` (:func:`normalize_clip`)."""
    wave = check_waveform(wave)
    return torch.stack([normalize_clip(clip, sample_rate, target_lufs, true_peak_dbtp, f"Clip {i}")
                        for i, clip in enumerate(wave)])


def normalize_clip(clip: torch.Tensor, sample_rate: int, target_lufs: float, true_peak_dbtp: float,
                   label: str) -> torch.Tensor:
    """One (C, T) clip to ``target_lufs``, then turned down where its true peak would pass
    ``true_peak_dbtp``. A clip whose loudness is undefined (silence, under the -70 LUFS gate,
    shorter than one 400 ms block) is returned as it is. ``label`` names the clip in the log."""
    loud = loudness(clip, sample_rate)
    if not math.isfinite(loud):
        log.info("%s is too quiet or too short to measure its loudness; left unchanged.", label)
        return clip
    scaled = clip * 10.0 ** ((target_lufs - loud) / 20.0)
    ceiling = 10.0 ** (true_peak_dbtp / 20.0)
    peak = true_peak(scaled)
    if peak > ceiling:
        log.info("%s: the true peak %.2f dBTP is limited to %.2f dBTP (the loudness ends below the "
                 "target).", label, 20 * math.log10(peak), true_peak_dbtp)
        scaled = scaled * (ceiling / peak)
    return scaled
