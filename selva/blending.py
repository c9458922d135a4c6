"""Weights that join overlapping pieces of one sequence (windows, decoder tiles) without seams."""
from __future__ import annotations

import math
from typing import Sequence

import torch

Span = tuple[int, int]  # [start, stop) along the sequence


def _rise(n: int) -> torch.Tensor:
    """``n`` weights rising from near 0 to near 1 (never exactly 0: every frame keeps a voice)."""
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.sin(0.5 * math.pi * p) ** 2


def overlap_weights(spans: Sequence[Span], total: int) -> list[torch.Tensor]:
    """Per span, float32 weights over its frames that sum to 1 at every frame of ``total``.

    Spans are sorted by start, cover ``[0, total)`` and each overlaps the next. A span fades in
    over its overlap with the previous one and out over its overlap with the next (a raised
    cosine: two neighbours' weights are complementary and smooth); where only one span is
    present its weight is 1.
    """
    raw = []
    for i, (a, b) in enumerate(spans):
        weight = torch.ones(b - a, dtype=torch.float64)
        if i > 0:
            fade = spans[i - 1][1] - a
            if fade > 0:
                weight[:fade] *= _rise(fade)
        if i + 1 < len(spans):
            fade = b - spans[i + 1][0]
            if fade > 0:
                weight[b - a - fade:] *= _rise(fade).flip(0)
        raw.append(weight)
    norm = torch.zeros(total, dtype=torch.float64)
    for (a, b), weight in zip(spans, raw):
        norm[a:b] += weight
    if bool((norm == 0).any()):
        raise ValueError(f"spans {list(spans)} do not cover [0, {total})")
    return [(weight / norm[a:b]).float() for (a, b), weight in zip(spans, raw)]


def even_spans(total: int, tile: int, overlap: int) -> list[Span]:
    """Tiles of ``tile`` frames over ``total``, spread evenly so each join overlaps >= ``overlap``."""
    if total <= tile:
        return [(0, total)]
    if not 0 < overlap < tile:
        raise ValueError(f"need 0 < overlap < tile, got {overlap} / {tile}")
    count = math.ceil((total - tile) / (tile - overlap)) + 1
    starts = [round(i * (total - tile) / (count - 1)) for i in range(count)]
    return [(s, s + tile) for s in starts]


def scale_spans(spans: Sequence[Span], factor: int) -> list[Span]:
    return [(a * factor, b * factor) for a, b in spans]
