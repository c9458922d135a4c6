"""The audio clean-up chain of the dataset nodes (``SelvaDataset*``): clips in memory, each step
a function from clips to clips.

A clip is an :class:`AudioClip` (name, (C, T) float32 waveform, rate, and the name of the clip it
was made from, so an augmented copy finds its features). The chain starts at a folder of audio
(:func:`load_folder`) and ends by writing the cleaned audio beside the features it belongs to
(:func:`save_clips`), which gives a dataset folder the one reader reads like any other: a dataset
cleaned here trains exactly like one made by Dataset From Folder.
"""
from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..errors import SelvaError
from ..hooks import Hooks, or_default
from ..train.audio_files import AUDIO_EXTENSIONS, read_audio
from .measure import SILENT_FRAME_DBFS
from .reader import PROMPTS_FILE, read_prompts_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioClip:
    name: str
    waveform: torch.Tensor  # (C, T) float32, CPU
    sample_rate: int
    origin: str = ""  # the clip this one was made from ("" = itself)

    @property
    def origin_name(self) -> str:
        return self.origin or self.name


def _each(clips: Sequence[AudioClip], fn: Callable[[AudioClip], AudioClip], stage: str,
          hooks: Optional[Hooks]) -> list[AudioClip]:
    hooks = or_default(hooks)
    out = []
    for i, clip in enumerate(clips, 1):
        out.append(fn(clip))
        hooks.step(stage, i, len(clips))
    return out


def check_not_empty(clips: Sequence[AudioClip]) -> None:
    if not clips:
        raise SelvaError("The audio dataset is empty: every clip was rejected or the folder held "
                         "none. Loosen the Inspector's limits or check the Loader's folder.")


# ------------------------------------------------------------------------------------ loader
def load_folder(folder: Path, hooks: Optional[Hooks] = None) -> list[AudioClip]:
    """Every audio file under ``folder`` (sub-folders too, hidden ones skipped), sorted by path."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SelvaError(f"The audio folder {folder} does not exist.")
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise SelvaError(f"No audio files in {folder} (looked for {', '.join(AUDIO_EXTENSIONS)}).")
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise SelvaError(f"Two audio files are both named {p.stem!r} ({seen[p.stem]} and {p}): a "
                             f"clip's name must be unique, since it pairs the audio with its features.")
        seen[p.stem] = p
    hooks = or_default(hooks)
    clips = []
    for i, p in enumerate(files, 1):
        try:
            wave, rate = read_audio(p)
        except SelvaError as e:
            log.warning("Skipping %s: %s", p, e)
            continue
        clips.append(AudioClip(p.stem, wave, rate))
        hooks.step("load", i, len(files))
    check_not_empty(clips)
    log.info("Loaded %d audio clips from %s", len(clips), folder)
    return clips


# ---------------------------------------------------------------------------------- resample
def resample(clips: Sequence[AudioClip], rate: int, hooks: Optional[Hooks] = None) -> list[AudioClip]:
    """Every clip at ``rate`` (band-limited polyphase; clips already there are left alone)."""
    from ..audio import resample as resample_wave

    if rate <= 0:
        raise SelvaError(f"target_sr must be positive, got {rate}.")

    def one(c: AudioClip) -> AudioClip:
        if c.sample_rate == rate:
            return c
        return replace(c, waveform=resample_wave(c.waveform[None], c.sample_rate, rate)[0], sample_rate=rate)

    return _each(clips, one, "resample", hooks)


# ------------------------------------------------------------------------------ loudness
def normalize_loudness(clips: Sequence[AudioClip], target_lufs: float, true_peak_dbtp: float = -1.0,
                       hooks: Optional[Hooks] = None) -> list[AudioClip]:
    """Each clip scaled to ``target_lufs`` (BS.1770, the Sampler's meter), then turned down
    where its true peak would pass ``true_peak_dbtp``: the Output Normalizer's rule
    (:func:`..audio.normalize_clip`). Silent or too short clips stay as they are."""
    from ..audio import normalize_clip

    def one(c: AudioClip) -> AudioClip:
        return replace(c, waveform=normalize_clip(c.waveform, c.sample_rate, target_lufs, true_peak_dbtp, c.name))

    return _each(clips, one, "loudness", hooks)


# -------------------------------------------------------------------------------- compressor
def compress(clips: Sequence[AudioClip], threshold_db: float, ratio: float, attack_ms: float,
             release_ms: float, mix: float, hooks: Optional[Hooks] = None) -> list[AudioClip]:
    """Parallel (dry/wet) downward compression: above ``threshold_db`` the level rises only
    1/``ratio`` as fast. The level is followed per 1 ms block (RMS over channels) with separate
    attack and release times; ``mix`` 0 = dry, 1 = fully compressed."""
    if ratio < 1.0:
        raise SelvaError(f"ratio must be at least 1, got {ratio}.")
    if not 0.0 <= mix <= 1.0:
        raise SelvaError(f"mix must be within [0, 1], got {mix}.")

    def one(c: AudioClip) -> AudioClip:
        if mix == 0.0 or ratio == 1.0:
            return c
        gain = _compressor_gain(c.waveform, c.sample_rate, threshold_db, ratio, attack_ms, release_ms)
        wet = c.waveform * gain
        return replace(c, waveform=(1.0 - mix) * c.waveform + mix * wet)

    return _each(clips, one, "compress", hooks)


def _compressor_gain(wave: torch.Tensor, rate: int, threshold_db: float, ratio: float,
                     attack_ms: float, release_ms: float) -> torch.Tensor:
    """(T,) linear gain of the compressor for ``wave`` (C, T)."""
    block = max(int(rate / 1000), 1)
    t = wave.shape[-1]
    n = math.ceil(t / block)
    power = torch.nn.functional.pad(wave.float().pow(2).mean(dim=0), (0, n * block - t)).reshape(n, block).mean(dim=1)
    level_db = 10.0 * torch.log10(power.clamp_min(1e-12))
    over = (level_db - threshold_db).clamp_min(0.0)
    target = -over * (1.0 - 1.0 / ratio)  # gain reduction in dB wanted per block (<= 0)
    a_att = math.exp(-1.0 / max(attack_ms, 1e-3))  # one block = 1 ms
    a_rel = math.exp(-1.0 / max(release_ms, 1e-3))
    smoothed = torch.empty_like(target)
    state = 0.0
    for i, want in enumerate(target.tolist()):  # a few thousand blocks per clip: cheap
        coeff = a_att if want < state else a_rel  # more reduction = attack
        state = coeff * state + (1.0 - coeff) * want
        smoothed[i] = state
    gain = 10.0 ** (smoothed / 20.0)
    return gain.repeat_interleave(block)[:t]


# --------------------------------------------------------------------------------- inspector
@dataclass(frozen=True)
class InspectOptions:
    min_snr_db: float = 15.0
    check_codec_artifacts: bool = True
    max_silence_fraction: float = 0.5  # 0 = no silence check
    clip_level: float = 0.99


_FRAME, _HOP = 2048, 512


def _frame_rms(wave: torch.Tensor) -> Optional[torch.Tensor]:
    mono = wave.float().mean(dim=0)
    if mono.shape[-1] < _FRAME:
        return None
    return mono.unfold(0, _FRAME, _HOP).pow(2).mean(dim=-1).sqrt()


def estimate_snr_db(wave: torch.Tensor) -> float:
    """Loud frames against quiet frames: 20 log10 of the 95th / 5th percentile frame RMS.
    A clip shorter than one frame counts as clean."""
    rms = _frame_rms(wave)
    if rms is None:
        return 60.0
    hi = float(torch.quantile(rms, 0.95))
    lo = max(float(torch.quantile(rms, 0.05)), 1e-8)
    return 20.0 * math.log10(hi / lo + 1e-8)


def has_codec_shelf(wave: torch.Tensor, rate: int) -> bool:
    """A lossy codec's signature: next to no energy above 15 kHz against 1-5 kHz (> 40 dB less).
    Only decidable for rates of at least 32 kHz."""
    if rate < 32000 or wave.shape[-1] < _FRAME:
        return False
    mono = wave.float().mean(dim=0)
    spec = torch.stft(mono, _FRAME, _HOP, window=torch.hann_window(_FRAME), return_complex=True)
    power = spec.abs().pow(2).mean(dim=-1)
    freqs = torch.linspace(0, rate / 2, power.shape[0])
    lo = power[(freqs >= 1000) & (freqs < 5000)]
    hi = power[(freqs >= 15000) & (freqs < 20000)]
    if hi.numel() == 0 or lo.numel() == 0:
        return False
    return 10.0 * math.log10(float(lo.mean().clamp_min(1e-12)) / float(hi.mean().clamp_min(1e-12))) > 40.0


def clip_issues(clip: AudioClip, opts: InspectOptions) -> list[str]:
    issues = []
    peak = float(clip.waveform.abs().max()) if clip.waveform.numel() else 0.0
    if peak > opts.clip_level:
        issues.append(f"clipping (peak {peak:.3f})")
    snr = estimate_snr_db(clip.waveform)
    if snr < opts.min_snr_db:
        issues.append(f"low SNR ({snr:.1f} dB < {opts.min_snr_db:g} dB)")
    if opts.check_codec_artifacts and has_codec_shelf(clip.waveform, clip.sample_rate):
        issues.append("codec artefacts (no energy above 15 kHz)")
    if opts.max_silence_fraction > 0:
        rms = _frame_rms(clip.waveform)
        if rms is not None:
            silent = float((20 * torch.log10(rms.clamp_min(1e-10)) < SILENT_FRAME_DBFS).float().mean())
            if silent > opts.max_silence_fraction:
                issues.append(f"mostly silent ({silent:.0%} of frames under {SILENT_FRAME_DBFS:g} dBFS)")
    return issues


def inspect(clips: Sequence[AudioClip], opts: InspectOptions, skip_rejected: bool = True,
            hooks: Optional[Hooks] = None) -> tuple[list[AudioClip], str]:
    """The clips that pass (all of them when ``skip_rejected`` is off) and a text report."""
    hooks = or_default(hooks)
    kept, lines, flagged = [], ["SelVA Dataset Inspector", "=" * 40], 0
    for i, clip in enumerate(clips, 1):
        issues = clip_issues(clip, opts)
        if issues:
            flagged += 1
            lines.append(f"  REJECTED {clip.name}: {'; '.join(issues)}" if skip_rejected
                         else f"  FLAGGED  {clip.name}: {'; '.join(issues)}")
        else:
            lines.append(f"  OK       {clip.name}")
        if not issues or not skip_rejected:
            kept.append(clip)
        hooks.step("inspect", i, len(clips))
    lines += ["=" * 40, f"{len(clips)} clip(s): {len(clips) - flagged} clean, {flagged} flagged"
              + (" (removed)" if skip_rejected and flagged else " (kept)" if flagged else "")]
    return kept, "\n".join(lines)


# ----------------------------------------------------------------------------- hf smoother
def hf_smooth(clips: Sequence[AudioClip], cutoff_hz: float, blend: float,
              hooks: Optional[Hooks] = None) -> list[AudioClip]:
    """The HF Smoother on every clip; a clip whose Nyquist frequency is under the cutoff has
    nothing above it and stays as it is."""
    from ..audio import hf_smoother

    def one(c: AudioClip) -> AudioClip:
        if cutoff_hz >= c.sample_rate / 2:
            return c
        return replace(c, waveform=hf_smoother(c.waveform[None], c.sample_rate, cutoff_hz, blend)[0])

    return _each(clips, one, "hf smooth", hooks)


# ---------------------------------------------------------------------------- spectral match
def spectral_match(clips: Sequence[AudioClip], match: Callable[[torch.Tensor, int], torch.Tensor],
                   rate: int, hooks: Optional[Hooks] = None) -> list[AudioClip]:
    """``match(waveform (1, C, T), rate) -> (1, C, T') at rate`` on every clip (the Spectral
    Matcher's per-band EQ toward the VAE's profile; the result is at the model's ``rate``)."""
    return _each(clips, lambda c: replace(c, waveform=match(c.waveform[None], c.sample_rate)[0],
                                          sample_rate=rate), "spectral match", hooks)


# ------------------------------------------------------------------------------- augmenter
@dataclass(frozen=True)
class AugmentOptions:
    variants_per_clip: int = 2
    gain_range_db: float = 3.0
    seed: int = 42
    pitch_range_semitones: float = 0.0
    time_stretch_range: float = 0.0  # 0.1 = 90 % .. 110 % speed
    keep_originals: bool = True


def _phase_vocoder(wave: torch.Tensor, speed: float) -> torch.Tensor:
    """Phase-vocoder time stretch: ``speed`` > 1 plays faster (shorter), pitch unchanged."""
    import torchaudio

    n_fft, hop = 1024, 256
    window = torch.hann_window(n_fft)
    spec = torch.stft(wave, n_fft, hop, window=window, return_complex=True)
    phase_advance = torch.linspace(0, math.pi * hop, spec.shape[-2])[..., None]
    stretched = torchaudio.functional.phase_vocoder(spec, speed, phase_advance)
    return torch.istft(stretched, n_fft, hop, window=window)


def _fit_length(wave: torch.Tensor, t: int) -> torch.Tensor:
    """Cut or zero-pad to ``t`` samples, so the clip still matches its features."""
    return torch.nn.functional.pad(wave, (0, max(t - wave.shape[-1], 0)))[..., :t]


def _pitch_shift(wave: torch.Tensor, semitones: float) -> torch.Tensor:
    """Shift pitch, keep duration: stretch by the pitch ratio, then resample back (the ratio as a
    small fraction, so the polyphase filter stays short)."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    ratio = Fraction(2.0 ** (semitones / 12.0)).limit_denominator(64)
    if ratio == 1:
        return wave
    longer = _phase_vocoder(wave, 1.0 / float(ratio))
    out = resample_poly(longer.numpy(), ratio.denominator, ratio.numerator, axis=-1)
    return _fit_length(torch.from_numpy(out.astype("float32")), wave.shape[-1])


def augment(clips: Sequence[AudioClip], opts: AugmentOptions, hooks: Optional[Hooks] = None) -> list[AudioClip]:
    """``variants_per_clip`` copies of every clip with a random gain (+-``gain_range_db``), and
    when asked a random pitch shift and time stretch (length kept); peaks stay under full scale.
    The same seed gives the same copies."""
    if opts.variants_per_clip < 1:
        raise SelvaError(f"variants_per_clip must be at least 1, got {opts.variants_per_clip}.")
    hooks = or_default(hooks)
    gen = torch.Generator().manual_seed(int(opts.seed))

    def uniform(span: float) -> float:
        return (float(torch.rand((), generator=gen)) * 2.0 - 1.0) * span

    out = list(clips) if opts.keep_originals else []
    for i, clip in enumerate(clips, 1):
        for v in range(opts.variants_per_clip):
            wave = clip.waveform * 10.0 ** (uniform(opts.gain_range_db) / 20.0)
            if opts.pitch_range_semitones > 0:
                wave = _pitch_shift(wave, uniform(opts.pitch_range_semitones))
            if opts.time_stretch_range > 0:
                wave = _fit_length(_phase_vocoder(wave, 1.0 + uniform(opts.time_stretch_range)), wave.shape[-1])
            peak = float(wave.abs().max()) if wave.numel() else 0.0
            if peak > 0.999:
                wave = wave * (0.999 / peak)
            out.append(AudioClip(f"{clip.name}_aug{v:02d}", wave.contiguous(), clip.sample_rate,
                                 clip.origin_name))
        hooks.step("augment", i, len(clips))
    return out


# ------------------------------------------------------------------------------------- saver
def write_flac(path: Path, wave: torch.Tensor, rate: int) -> None:
    """24-bit FLAC of a (C, T) float waveform (written beside, then moved into place)."""
    import av
    import numpy as np

    from ..train.files import atomic_write

    # 24-bit steps in 32-bit samples: FLAC stores what it is given, so keep 24 bits of it
    pcm = (wave.clamp(-1.0, 1.0).double().numpy() * 8388607.0).round().astype(np.int32) << 8
    layout = "mono" if pcm.shape[0] == 1 else "stereo"
    if pcm.shape[0] > 2:
        raise SelvaError(f"{path.name}: {pcm.shape[0]} channels; mix it down to mono or stereo first.")

    def write(tmp: Path) -> None:
        with av.open(str(tmp), "w", format="flac") as out:
            stream = out.add_stream("flac", rate=int(rate), layout=layout)
            stream.codec_context.format = "s32"
            step = 4096
            for a in range(0, pcm.shape[1], step):
                chunk = np.ascontiguousarray(pcm[:, a:a + step].T.reshape(1, -1))
                frame = av.AudioFrame.from_ndarray(chunk, format="s32", layout=layout)
                frame.sample_rate = int(rate)
                frame.pts = a
                for pkt in stream.encode(frame):
                    out.mux(pkt)
            for pkt in stream.encode(None):
                out.mux(pkt)

    atomic_write(path, write)


def save_clips(clips: Sequence[AudioClip], out_dir: Path, features_dir: Optional[Path] = None,
               hooks: Optional[Hooks] = None) -> str:
    """Write every clip as ``<name>.flac`` into ``out_dir``; with ``features_dir``, its features
    (``<origin>.npz``) and caption go beside it as ``<name>.npz`` / ``<name>.txt``, so
    ``out_dir`` is a dataset folder. Never overwrites: a clip whose files exist is an error
    naming them (choose another folder or remove them). Returns a text report."""
    check_not_empty(clips)
    hooks = or_default(hooks)
    out_dir = Path(out_dir).expanduser()
    features_dir = Path(features_dir).expanduser() if features_dir else None
    if features_dir is not None and not features_dir.is_dir():
        raise SelvaError(f"The features folder {features_dir} does not exist.")
    if features_dir is not None and features_dir.resolve() == out_dir.resolve():
        raise SelvaError(f"output_dir and npz_source_dir are the same folder ({out_dir}): the cleaned "
                         f"audio would sit beside the original audio of the same clip. Save into a "
                         f"new folder; it becomes a dataset with the features copied beside the audio.")
    taken = [p.name for c in clips for p in (out_dir / f"{c.name}.flac", out_dir / f"{c.name}.npz")
             if p.exists()]
    if taken:
        raise SelvaError(f"{out_dir} already holds {', '.join(taken[:5])}{' ...' if len(taken) > 5 else ''}: "
                         f"nothing is overwritten. Choose a new output_dir or remove those files.")
    prompts = {}
    if features_dir is not None and (features_dir / PROMPTS_FILE).is_file():
        prompts = read_prompts_file(features_dir / PROMPTS_FILE)
    out_dir.mkdir(parents=True, exist_ok=True)
    copied, missing = 0, []
    for i, clip in enumerate(clips, 1):
        write_flac(out_dir / f"{clip.name}.flac", clip.waveform, clip.sample_rate)
        if features_dir is not None:
            npz = features_dir / f"{clip.origin_name}.npz"
            if npz.is_file():
                shutil.copy2(npz, out_dir / f"{clip.name}.npz")
                copied += 1
                caption = features_dir / f"{clip.origin_name}.txt"
                if clip.origin_name in prompts:
                    (out_dir / f"{clip.name}.txt").write_text(prompts[clip.origin_name] + "\n", encoding="utf-8")
                elif caption.is_file():
                    shutil.copy2(caption, out_dir / f"{clip.name}.txt")
            else:
                missing.append(clip.name)
        hooks.step("save", i, len(clips))
    lines = [f"Saved {len(clips)} clip(s) to {out_dir}"]
    if features_dir is not None:
        lines.append(f"features copied: {copied}, missing: {len(missing)}")
        lines += [f"  no features for {name} (looked for {features_dir}/<origin>.npz)" for name in missing]
    log.info("%s", "; ".join(lines[:2]))
    return "\n".join(lines)
