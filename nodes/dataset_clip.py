"""Saving a training clip from the Feature Extractor (its ``name`` input)."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[\w\-. ]+$")


def check_clip_name(name: str) -> None:
    from ..selva.errors import SelvaError

    if not _NAME.match(name) or name.startswith("."):
        raise SelvaError(f"Clip name {name!r} must be a plain file name (letters, digits, _ - . and "
                         f"spaces; no folders).")


def save_named_clip(folder: Path, name: str, features: Any, audio: Optional[dict],
                    start: float = 0.0) -> Path:
    """``<folder>/<name>_NNN.npz`` (+ ``.wav``) with the next number free for both files; the
    audio cut to the features' span (``start`` seconds into the video, their duration long)."""
    from ..selva.datasets.align import clip_span
    from ..selva.artifacts import next_numbered_path
    from ..selva.train.files import write_wav
    from .common import audio_input

    folder.mkdir(parents=True, exist_ok=True)
    path = next_numbered_path(folder, name, ".npz", also=(".wav",))  # free for both files
    wave = None
    if audio is not None:
        wave, rate = audio_input(audio, "audio")
        wave = clip_span(wave, rate, start, float(features.duration))  # checked before writing
    features.save(path)
    if wave is not None:
        write_wav(path.with_suffix(".wav"), wave[0], rate)
    log.info("Saved dataset clip %s%s", path, " (+ .wav)" if wave is not None else "")
    return path
