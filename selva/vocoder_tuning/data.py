"""Training audio for vocoder tuning: every audio file under a folder, at the vocoder's rate.

Files are decoded once (PyAV, through the training package's reader), mixed to mono and
resampled. The
training loop picks the clips (each file equally often, shuffled per epoch); each pick is a random
fixed-length excerpt whose offset comes from the loop's per-item generator, so a resumed run sees
exactly the segments an uninterrupted one would.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch

from .. import audio as audio_ops
from ..errors import SelvaError
from ..train.audio_files import AUDIO_EXTENSIONS
from ..train.audio_files import read_audio as read_audio_file

log = logging.getLogger(__name__)

_MIN_SECONDS = 0.05


def find_audio_files(data_dir: Union[str, Path]) -> list[Path]:
    """Every audio file under ``data_dir`` (recursively), sorted; hidden ones (a name or folder
    starting with ".", e.g. macOS's ``._name.wav`` companions, which are not audio) are left out."""
    root = Path(data_dir)
    if not root.is_dir():
        raise SelvaError(f"data_dir {root} is not a folder. Point it at a folder of audio files "
                         f"({', '.join(AUDIO_EXTENSIONS)}; sub-folders are searched too).")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise SelvaError(f"No audio files found under {root}. Put the recordings whose sound the vocoder "
                         f"should learn there ({', '.join(AUDIO_EXTENSIONS)}).")
    return files


def read_audio(path: Union[str, Path], sample_rate: int) -> torch.Tensor:
    """A file's audio as mono float32 [T] at ``sample_rate``."""
    path = Path(path)
    try:
        wave, rate = read_audio_file(path)
    except SelvaError:
        raise
    except Exception as exc:  # a damaged container may fail before PyAV's own error types apply
        raise SelvaError(f"Could not read the audio of {path}: {exc}") from exc
    mono = wave.float().mean(dim=0)
    if mono.numel() < _MIN_SECONDS * rate:
        raise SelvaError(f"{path} holds almost no audio ({mono.numel()} samples at {rate} Hz).")
    mono = audio_ops.resample(mono[None, None], rate, int(sample_rate))[0, 0]
    return mono.clamp(-1.0, 1.0).contiguous()


def segment_samples(segment_seconds: float, sample_rate: int, hop: int) -> int:
    """Samples per training segment: ``segment_seconds`` rounded to whole mel frames (at least 2)."""
    return max(2, int(round(segment_seconds * sample_rate / hop))) * hop


@dataclass
class AudioSegments:
    """Decoded clips and how to draw training batches of fixed-length segments from them."""

    clips: list[torch.Tensor]
    files: list[Path]
    sample_rate: int
    length: int  # samples per segment

    @classmethod
    def from_folder(cls, data_dir: Union[str, Path], sample_rate: int, length: int,
                    on_file=None) -> "AudioSegments":
        files = find_audio_files(data_dir)
        clips = []
        for i, f in enumerate(files, 1):
            clips.append(read_audio(f, sample_rate))
            if on_file is not None:
                on_file(i, len(files))
        log.info("Vocoder tuning data: %d files, %.1f s at %d Hz", len(files),
                 sum(c.numel() for c in clips) / sample_rate, sample_rate)
        return cls(clips, files, sample_rate, length)

    def __len__(self) -> int:
        return len(self.clips)

    def segment(self, index: int, generator: torch.Generator) -> torch.Tensor:
        """A random ``length``-sample excerpt [length] of clip ``index`` (offset from ``generator``)."""
        clip = self.clips[index]
        if clip.numel() <= self.length:  # short clips are zero-padded, as BigVGAN's loader does
            return torch.nn.functional.pad(clip, (0, self.length - clip.numel()))
        start = int(torch.randint(0, clip.numel() - self.length + 1, (1,), generator=generator))
        return clip[start:start + self.length]

    def eval_segment(self) -> torch.Tensor:
        """A fixed excerpt [1, 1, length] (start of the first file) for listening checks."""
        clip = self.clips[0][:self.length]
        return torch.nn.functional.pad(clip, (0, self.length - clip.numel()))[None, None]
