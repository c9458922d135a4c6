"""Spectral statistics (the LoRA Evaluator's one-clip metrics) over a held-out set.

The held-out metric is the log-spectral distance (dB) of each generated clip to its real audio,
lower is closer; centroid and flatness are kept alongside for the report.
"""
from __future__ import annotations

import torch

from ..adapters.compare import log_spectral_distance, spectral_metrics


def clip_spectral(generated: torch.Tensor, real: torch.Tensor, rate: int) -> dict[str, float]:
    """Mono (T,) generated and real audio at the same rate -> LSD to the real clip and statistics."""
    n = min(generated.shape[-1], real.shape[-1])
    m = spectral_metrics(generated, rate)
    return {"lsd_db": log_spectral_distance(generated[:n], real[:n], rate),
            "centroid_hz": float(m.centroid_hz), "flatness": float(m.flatness)}
