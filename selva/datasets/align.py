"""A training clip's audio covers exactly its features' time span.

The features of a clip start ``start`` seconds into the video and last ``duration`` seconds.
Its audio can come already cut to that span, or as the whole soundtrack of the video (Load Video
-> Get Video Components): the span is cut out of the soundtrack. Anything else cannot be
aligned and is refused, since a clip whose audio is shifted trains the model to be out of sync.
"""
from __future__ import annotations

import torch

from ..errors import SelvaError

# How far an "already cut" audio may differ from the features' duration: one video frame at the
# 25 fps of the sync features (containers round durations to frames or codec blocks).
LENGTH_TOLERANCE_S = 0.04


def clip_span(wave: torch.Tensor, rate: int, start: float, duration: float) -> torch.Tensor:
    """``wave`` (..., T) cut to the features' span ``[start, start + duration)``.

    * audio about ``duration`` long: already cut, kept as it is;
    * audio at least ``start + duration`` long: a soundtrack, the span is cut out;
    * otherwise a :class:`SelvaError` saying what was expected.
    """
    if duration <= 0:
        raise SelvaError(f"The features last {duration} s; nothing to align audio to.")
    seconds = wave.shape[-1] / rate
    if abs(seconds - duration) <= LENGTH_TOLERANCE_S:
        return wave
    if seconds + LENGTH_TOLERANCE_S >= start + duration:
        a = int(round(start * rate))
        b = min(a + int(round(duration * rate)), wave.shape[-1])
        return wave[..., a:b].contiguous()
    raise SelvaError(
        f"The clip's audio is {seconds:.3f} s long, but the features cover {duration:.3f} s from "
        f"{start:.3f} s into the video. Connect either the video's whole soundtrack (at least "
        f"{start + duration:.3f} s, the span is cut out of it) or audio already cut to "
        f"{duration:.3f} s.")
