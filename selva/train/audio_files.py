"""Reading audio of any common format (and the audio track of a video) with PyAV."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import audio as audio_ops
from ..errors import SelvaError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3", ".m4a", ".opus")


def read_audio(path: Path) -> tuple[torch.Tensor, int]:
    """(C, T) float32 at the file's own rate, from an audio file or a video's first audio track."""
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise SelvaError(f"{path} has no audio stream.")
            stream = container.streams.audio[0]
            rate = int(stream.rate or stream.codec_context.sample_rate)
            resampler = av.AudioResampler(format="fltp")  # planar float, same layout and rate
            chunks = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except av.FFmpegError as e:
        raise SelvaError(f"Could not read the audio of {path}: {e}") from e
    if not chunks:
        raise SelvaError(f"{path} holds no audio samples.")
    data = np.concatenate(chunks, axis=-1).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(data)), rate


def fit_audio(wave: torch.Tensor, rate: int, target_rate: int, samples: int) -> torch.Tensor:
    """Mono mix, resampled to ``target_rate``, trimmed or zero-padded to ``samples``: (1, samples)."""
    if wave.dim() == 1:
        wave = wave[None]
    mono = wave.float().mean(dim=0, keepdim=True)
    mono = audio_ops.resample(mono[None], rate, target_rate)[0]
    if mono.shape[-1] >= samples:
        return mono[:, :samples].contiguous()
    return torch.nn.functional.pad(mono, (0, samples - mono.shape[-1]))
