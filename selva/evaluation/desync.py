"""DeSync: how far off, in seconds, Synchformer thinks a clip's audio is from its video.

The protocol is av-benchmark's (``extract_video.py``, ``av_bench/extract.py``, ``evaluate.py``):

* video: the first ``int(25 * duration)`` frames at 25 fps, 224 x 224, scaled to [-1, 1], cut into
  16-frame segments every 8 frames, through the video branch (8 vectors per segment);
* audio: mono, resampled to 16 kHz, the first ``int(16000 * duration)`` samples, cut into 10240-
  sample (0.64 s) segments every 5120 samples; each segment's power mel spectrogram (128 bins,
  400-sample window, hop 160, 1024-point FFT), ``log(x + 1e-6)``, padded to 66 frames, normalised
  by ``(x + 4.2677393) / (2 * 4.5689974)``; through the audio branch (6 vectors per segment);
* the offset transformer sees the first 14 segments of both (the first 4.8 s), then the last 14
  (the last 4.8 s); each prediction is one of 21 offsets evenly spaced from -2 to +2 s; a clip's
  DeSync is the mean absolute predicted offset, and the set's is the mean over every prediction.

av-benchmark raises on a clip shorter than the duration asked (its loader then quietly reads the
next file) and cannot score fewer than 14 segments (4.8 s): here such a clip is returned as
*unscored* with the reason, and reports list it instead of leaving it out unseen.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import SelvaError
from ..models.synchformer import (AST_SYNCHFORMER, MOTIONFORMER_224, SYNC_TRANSFORMER, Synchformer,
                                  load_synchformer)

VIDEO_FPS = 25.0
FRAME_SIZE = 224
VIDEO_SEGMENT = 16
VIDEO_STEP = 8
AUDIO_RATE = 16000
AUDIO_SEGMENT = 10240
AUDIO_STEP = AUDIO_SEGMENT // 2
MEL_FRAMES = 66
MEL_MEAN = -4.2677393
MEL_STD = 4.5689974
WINDOW_SEGMENTS = 14
OFFSET_RANGE_S = 2.0
NUM_OFFSETS = 21
# the released network's configuration (video, audio, offset transformer); tests swap in tiny ones
SYNCHFORMER_CONFIG = (MOTIONFORMER_224, AST_SYNCHFORMER, SYNC_TRANSFORMER)


def offset_grid() -> torch.Tensor:
    """The 21 offsets (seconds) the classifier chooses from, in the official float32 values."""
    import numpy as np

    return torch.from_numpy(np.linspace(-OFFSET_RANGE_S, OFFSET_RANGE_S, NUM_OFFSETS)).float()


def decode_offsets(logits: torch.Tensor) -> torch.Tensor:
    """(B, 21) logits -> (B,) predicted offsets in seconds (the arg-max class's grid value)."""
    if logits.shape[-1] != NUM_OFFSETS:
        raise SelvaError(f"DeSync expects {NUM_OFFSETS} offset logits per prediction, got {logits.shape[-1]}")
    return offset_grid()[logits.argmax(dim=-1).cpu()]


def min_scorable_duration() -> float:
    """4.8 s: the 14 segments the offset transformer needs."""
    return (AUDIO_SEGMENT + (WINDOW_SEGMENTS - 1) * AUDIO_STEP) / AUDIO_RATE


@dataclass
class ClipDesync:
    """One clip's result: ``offsets`` (first window, last window) or ``reason`` it was not scored."""

    offsets: Optional[tuple[float, float]] = None
    reason: Optional[str] = None

    @property
    def scored(self) -> bool:
        return self.offsets is not None

    @property
    def value(self) -> Optional[float]:
        return None if self.offsets is None else sum(abs(o) for o in self.offsets) / len(self.offsets)


def _segments(x: torch.Tensor, size: int, step: int) -> torch.Tensor:
    """Windows of ``size`` every ``step`` along dim 0, as av-benchmark cuts them: (S, size, ...)."""
    count = (x.shape[0] - size) // step + 1
    return torch.stack([x[i * step:i * step + size] for i in range(count)])


class DesyncScorer:
    """A loaded Synchformer and the DeSync protocol around it (fp32; CPU or CUDA)."""

    def __init__(self, model: Synchformer, device: Union[str, torch.device] = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device, torch.float32).eval()
        self._mel = None

    @classmethod
    def from_file(cls, path: Path, device: Union[str, torch.device] = "cpu") -> "DesyncScorer":
        from ..weights import load_checkpoint

        with torch.device("meta"):
            model = Synchformer(*SYNCHFORMER_CONFIG)
        model = model.to_empty(device="cpu")
        load_synchformer(model, load_checkpoint(path), source=str(path))
        return cls(model, device)

    # ------------------------------------------------------------------------------- inputs
    def _mel_transform(self):
        if self._mel is None:
            import torchaudio

            self._mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=AUDIO_RATE, win_length=400, hop_length=160, n_fft=1024, n_mels=128
            ).to(self.device)
        return self._mel

    def video_features(self, frames_thwc_u8: torch.Tensor, duration: float) -> Union[torch.Tensor, str]:
        """(T, 224, 224, 3) uint8 frames at 25 fps -> (S, 8, D) features, or why it can't be scored."""
        if frames_thwc_u8.dim() != 4 or tuple(frames_thwc_u8.shape[1:]) != (FRAME_SIZE, FRAME_SIZE, 3):
            raise SelvaError(f"DeSync needs 25 fps frames of shape (T, {FRAME_SIZE}, {FRAME_SIZE}, 3), "
                             f"got {tuple(frames_thwc_u8.shape)}")
        need = int(VIDEO_FPS * duration)
        if frames_thwc_u8.shape[0] < need:
            return (f"the video has {frames_thwc_u8.shape[0]} frames at 25 fps, {duration:.2f} s "
                    f"needs {need}")
        frames = frames_thwc_u8[:need].to(self.device)
        frames = (frames.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5  # (T, C, H, W) in [-1, 1]
        if frames.shape[0] < VIDEO_SEGMENT + (WINDOW_SEGMENTS - 1) * VIDEO_STEP:
            return f"{duration:.2f} s is shorter than the {min_scorable_duration():.1f} s DeSync needs"
        segments = _segments(frames, VIDEO_SEGMENT, VIDEO_STEP)  # (S, 16, C, H, W)
        with torch.inference_mode():
            return self.model.video_features(segments[None])[0]

    def audio_mels(self, wave: torch.Tensor, rate: int, duration: float) -> Union[torch.Tensor, str]:
        """Mono or (C, N) audio -> normalised log-mel segments (S, 128, 66), or why not."""
        wave = wave.float()
        if wave.dim() == 2:
            wave = wave.mean(dim=0)
        if wave.dim() != 1:
            raise SelvaError(f"DeSync expects audio of shape (samples,) or (channels, samples), "
                             f"got {tuple(wave.shape)}")
        if rate != AUDIO_RATE:
            import torchaudio

            # the Resample module av-benchmark's loaders use (its kernel differs from
            # functional.resample's in the last digits for rates like 22.05 kHz)
            wave = torchaudio.transforms.Resample(rate, AUDIO_RATE)(wave)
        need = int(AUDIO_RATE * duration)
        if wave.shape[0] < need:
            return f"the audio has {wave.shape[0] / AUDIO_RATE:.3f} s at 16 kHz, {duration:.2f} s needed"
        wave = wave[:need].to(self.device)
        if wave.shape[0] < AUDIO_SEGMENT + (WINDOW_SEGMENTS - 1) * AUDIO_STEP:
            return f"{duration:.2f} s is shorter than the {min_scorable_duration():.1f} s DeSync needs"
        mel = self._mel_transform()(_segments(wave, AUDIO_SEGMENT, AUDIO_STEP))  # (S, 128, 65)
        mel = torch.log(mel + 1e-6)
        mel = torch.nn.functional.pad(mel, (0, MEL_FRAMES - mel.shape[-1]))
        return (mel - MEL_MEAN) / (2 * MEL_STD)

    def audio_features(self, wave: torch.Tensor, rate: int, duration: float) -> Union[torch.Tensor, str]:
        mels = self.audio_mels(wave, rate, duration)
        if isinstance(mels, str):
            return mels
        with torch.inference_mode():
            return self.model.audio_features(mels[None])[0]

    # ------------------------------------------------------------------------------- scoring
    def offsets(self, video_feats: torch.Tensor, audio_feats: torch.Tensor) -> tuple[float, float]:
        """Predicted offsets (s) of the first and the last 14 segments."""
        n = WINDOW_SEGMENTS
        with torch.inference_mode():
            first = self.model.offset_logits(video_feats[None, :n], audio_feats[None, :n])
            last = self.model.offset_logits(video_feats[None, -n:], audio_feats[None, -n:])
        return float(decode_offsets(first)[0]), float(decode_offsets(last)[0])

    def score(self, video_feats: Union[torch.Tensor, str], wave: torch.Tensor, rate: int,
              duration: float) -> ClipDesync:
        """One clip; ``video_feats`` from :meth:`video_features` (computed once per clip)."""
        if isinstance(video_feats, str):
            return ClipDesync(reason=video_feats)
        audio_feats = self.audio_features(wave, rate, duration)
        if isinstance(audio_feats, str):
            return ClipDesync(reason=audio_feats)
        return ClipDesync(offsets=self.offsets(video_feats, audio_feats))


def set_desync(results: dict[str, ClipDesync]) -> Optional[float]:
    """The set's DeSync: the mean over every scored prediction (None when nothing was scored)."""
    values = [abs(o) for r in results.values() if r.scored for o in r.offsets]
    return sum(values) / len(values) if values else None
