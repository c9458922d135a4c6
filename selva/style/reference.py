"""A reference set of audio clips and the mel statistics DITTO's style loss compares against.

The statistics are taken on the model's own log-mel (the representation the VAE decodes to), at
the model's sample rate, frame-weighted over every clip: the mean spectrum (one value per mel
band) and the band covariance (the Gram matrix of the mean-removed mel bands). They are
computed once per reference set and model and kept in memory, keyed by the files' paths, sizes
and modification times (and the bytes of any AUDIO input), so changing a file recomputes them.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..errors import SelvaError
from ..features import content_hash
from ..hooks import Hooks, NO_HOOKS
from ..memo import LruCache

if TYPE_CHECKING:
    from ..pipeline import SelvaPipeline

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
_CACHE_SIZE = 8


@dataclass(frozen=True)
class MelStats:
    """Frame-weighted log-mel statistics: ``mean`` (n_mels,), ``gram`` (n_mels, n_mels)."""

    mean: torch.Tensor
    gram: torch.Tensor
    frames: int
    clips: int


@dataclass(frozen=True)
class ReferenceAudio:
    """One reference clip in memory: (channels, samples) float32 and its rate."""

    name: str
    waveform: torch.Tensor
    sample_rate: int


def find_audio_files(directory: Path) -> list[Path]:
    """Every audio file under ``directory`` (recursively), sorted so the order is stable.

    Hidden files and folders are skipped, as the dataset readers skip them: a Mac's ``._a.wav``
    resource forks are not audio, a trash folder's clips are not meant.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise SelvaError(f"Reference folder {directory} does not exist or is not a folder.")
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def load_audio_file(path: Path) -> ReferenceAudio:
    """Decode a whole audio file: (channels, samples) float32 at the file's rate."""
    from ..train.audio_files import read_audio

    try:
        wave, rate = read_audio(Path(path))
    except SelvaError as e:
        raise SelvaError(f"{e} Convert it to .wav or remove it from the reference folder.") from e
    if wave.shape[-1] == 0:
        raise SelvaError(f"The audio file {path} holds no samples; remove it from the reference folder.")
    return ReferenceAudio(str(path), wave, rate)


def differentiable_stats(mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item mean (B, n_mels) and band covariance (B, n_mels, n_mels) of (B, n_mels, F) log-mels."""
    mean = mel.mean(dim=-1)
    centred = mel - mean[..., None]
    gram = centred @ centred.transpose(1, 2) / mel.shape[-1]
    return mean, gram


class ReferenceStatsCache:
    """Statistics per (model variant, reference set), most recent few kept."""

    def __init__(self, size: int = _CACHE_SIZE):
        self._entries = LruCache(max_items=size)
        self.computed = 0  # how often statistics were computed (tests check the cache works)

    def get_or_compute(self, pipe: "SelvaPipeline", files: Sequence[Path],
                       extra: Sequence[ReferenceAudio] = (), hooks: Hooks = NO_HOOKS) -> MelStats:
        key = reference_key(pipe, files, extra)
        stats = self._entries.get(key)
        if stats is None:
            stats = compute_reference_stats(pipe, files, extra, hooks)
            self.computed += 1
            self._entries.put(key, stats)
        return stats


REFERENCE_CACHE = ReferenceStatsCache()


def reference_key(pipe: "SelvaPipeline", files: Sequence[Path], extra: Sequence[ReferenceAudio]) -> str:
    parts: list = ["reference-stats", 1, pipe.variant.name, pipe.sample_rate]
    for path in files:
        st = Path(path).stat()
        parts.append([str(Path(path).resolve()), st.st_size, st.st_mtime_ns])
    for ref in extra:
        parts += [ref.sample_rate, ref.waveform]
    return content_hash(parts)


def compute_reference_stats(pipe: "SelvaPipeline", files: Sequence[Path],
                            extra: Sequence[ReferenceAudio] = (), hooks: Hooks = NO_HOOKS) -> MelStats:
    """Decode every clip, take its model-rate log-mel (channels mixed to mono), accumulate."""
    n_fft = pipe.variant.mel.n_fft
    total = outer = frames = 0
    items = len(files) + len(extra)
    if items == 0:
        raise SelvaError("No reference audio: put .wav/.flac/.mp3/.ogg clips in reference_dir or "
                         "connect reference_audio.")
    # files are decoded one at a time, as they come up
    for i, ref in enumerate(itertools.chain(map(load_audio_file, files), extra), 1):
        mono = ref.waveform.mean(dim=0, keepdim=True)[None]  # (1, 1, T)
        needed = int(np.ceil(n_fft * ref.sample_rate / pipe.sample_rate))
        if mono.shape[-1] < needed:
            raise SelvaError(f"Reference clip {ref.name} is too short ({mono.shape[-1]} samples at "
                             f"{ref.sample_rate} Hz); use clips of at least a quarter second.")
        mel = pipe.decoding.log_mel(mono, ref.sample_rate)[0].double()  # (n_mels, frames)
        total += mel.sum(dim=-1)
        outer += mel @ mel.T  # the sum of the frames' outer products
        frames += mel.shape[-1]
        hooks.step("reference audio", i, items)
    log.info("Reference set: %d clips, %d mel frames", items, frames)
    mean = total / frames
    # covariance = E[x x^T] - mu mu^T: the Gram matrix of the mean-removed bands
    gram = outer / frames - torch.outer(mean, mean)
    return MelStats(mean.float(), gram.float(), frames, items)
