"""Measuring a clip: BS.1770 loudness, peak, clipping, silence; a features file's header."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..audio import loudness
from ..errors import SelvaError

CLIPPED_LEVEL = 0.999  # a sample at or above this magnitude counts as clipped (16-bit full scale)
SILENT_FRAME_DBFS = -60.0  # a 50 ms frame quieter than this (RMS) is silent
FRAME_SECONDS = 0.05


def features_header(path: Path) -> dict:
    """The JSON header of a features ``.npz`` alone (np.load reads arrays lazily)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(bytes(data["header"]).decode("utf-8"))
    except Exception as e:
        raise SelvaError(f"{path} is not a readable SelVA features file ({e}).") from e


def audio_stats(wave: torch.Tensor, rate: int) -> dict[str, Any]:
    """Loudness, peak, clipped samples and silent fraction of a (C, T) float clip."""
    peak = float(wave.abs().max()) if wave.numel() else 0.0
    loud = loudness(wave, rate) if wave.numel() else -math.inf
    frame = max(int(FRAME_SECONDS * rate), 1)
    mono = wave.float().pow(2).mean(dim=0)
    n = mono.shape[-1] // frame
    if n:
        rms = mono[:n * frame].reshape(n, frame).mean(dim=1).sqrt()
        silent = float((20 * torch.log10(rms.clamp_min(1e-10)) < SILENT_FRAME_DBFS).float().mean())
    else:
        silent = 1.0
    return {"duration": wave.shape[-1] / rate,
            "loudness_lufs": round(loud, 2) if math.isfinite(loud) else None,
            "peak_dbfs": round(20 * math.log10(peak), 2) if peak > 0 else None,
            "clipped_samples": int((wave.abs() >= CLIPPED_LEVEL).sum()),
            "silent_fraction": round(silent, 4)}
