"""Decoding a long latent in overlapping tiles, so memory is bounded by one tile.

The VAE decoder (it has attention over the whole sequence) and the vocoder (its activations run
at the audio rate, the largest tensors of the whole pipeline) each see one tile at a time; the
tiles' outputs are crossfaded over their overlaps with the weights of selva/blending.py. Tiles
of the length the generator worked on (one sampling window) keep every network on inputs of the
length it was trained for. A latent that fits one tile is decoded in one piece, as before.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .blending import Span, overlap_weights, scale_spans

Decoder = Callable[[torch.Tensor], torch.Tensor]  # (B, C, n) -> (B, C', n * factor)


def decode_tiles(decode: Decoder, x: torch.Tensor, spans: Sequence[Span], factor: int, *,
                 out_device: Optional[torch.device] = None,
                 on_tile: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """``decode`` applied to ``x`` (B, C, N) tile by tile along the last axis, crossfaded.

    ``spans`` are tiles in ``x``'s frames (covering [0, N), sorted, overlapping); ``decode``
    turns n frames into exactly ``n * factor``. The joined result is gathered on ``out_device``
    (default: ``x``'s device) in float32; a single tile covering ``x`` is returned as ``decode``
    gives it. ``on_tile(done, total)`` runs after each tile.
    """
    n = x.shape[-1]
    if len(spans) == 1 and tuple(spans[0]) == (0, n):
        out = decode(x)
        if on_tile is not None:
            on_tile(1, 1)
        return out
    out_spans = scale_spans(spans, factor)
    weights = overlap_weights(out_spans, n * factor)
    out = None
    for i, ((a, b), (c, d), weight) in enumerate(zip(spans, out_spans, weights)):
        piece = decode(x[..., a:b])
        if piece.shape[-1] != d - c:
            raise ValueError(f"a tile of {b - a} frames decoded to {piece.shape[-1]}, expected {d - c}")
        if out is None:
            out = torch.zeros(*piece.shape[:-1], n * factor, dtype=torch.float32,
                              device=out_device if out_device is not None else x.device)
        out[..., c:d] += piece.to(out.device, torch.float32) * weight.to(out.device)
        del piece
        if on_tile is not None:
            on_tile(i + 1, len(spans))
    return out
