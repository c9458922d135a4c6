"""The video encoders run over a long clip a piece at a time.

Frames are kept as small uint8 stacks (what the feature cache and a prompt change need); here
they are turned into float, masked and moved to the device one chunk at a time, so memory for a
long video grows only with those uint8 frames and the features, not with float copies of them.
The result equals encoding everything at once: Synchformer segments never interact, and CLIP
encodes frame by frame.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from . import video as video_ops
from .variants import SYNC_SEGMENT, SYNC_STEP

SYNC_SEGMENTS_PER_CHUNK = 24  # one 8 s window of segments converted to float at a time
CLIP_FRAMES_PER_BATCH = 40  # as the official demo batches the CLIP image tower

OnBatch = Callable[[int, int], None]


def _mask_rows(mask: Optional[torch.Tensor], a: int, b: int) -> Optional[torch.Tensor]:
    """Rows [a, b) of a per-frame mask; a static (1-frame) mask as it is."""
    if mask is None or mask.shape[0] == 1:
        return mask
    return mask[a:b]


def sync_segments(n_frames: int) -> int:
    """How many Synchformer segments ``n_frames`` frames at 25 fps hold (0: too short)."""
    return 0 if n_frames < SYNC_SEGMENT else (n_frames - SYNC_SEGMENT) // SYNC_STEP + 1


def fits_one_chunk(n_frames: int) -> bool:
    """Whether :func:`encode_sync` would encode these frames in one piece (up to ~8 s)."""
    return sync_segments(n_frames) <= SYNC_SEGMENTS_PER_CHUNK


def encode_sync(net, frames_u8: torch.Tensor, mask: Optional[torch.Tensor], strength: float,
                text_f: torch.Tensor, text_mask: torch.Tensor, *,
                segments_per_chunk: int = SYNC_SEGMENTS_PER_CHUNK,
                on_batch: Optional[OnBatch] = None) -> torch.Tensor:
    """Text-conditioned sync features (1, S * 8, D) of 25 fps uint8 frames (T, 3, 224, 224).

    ``net`` is the TextSynchformer; ``text_f`` / ``text_mask`` already carry its supplementary
    tokens. ``on_batch(done, total)`` counts segments.
    """
    return _by_chunks(lambda x: net.encode(x, text_f, text_mask), net, frames_u8, mask, strength,
                      segments_per_chunk, dim=1, on_batch=on_batch)


def sync_backbone_tokens(net, frames_u8: torch.Tensor, mask: Optional[torch.Tensor], strength: float, *,
                         segments_per_chunk: int = SYNC_SEGMENTS_PER_CHUNK) -> torch.Tensor:
    """The text-independent backbone tokens (S, slots * patches, D) of one clip's 25 fps uint8
    frames (T, 3, 224, 224), masked as for :func:`encode_sync`; ``net.encode_tokens`` turns them
    into sync features for any prompt. Converted to float a chunk at a time (segments never
    interact, so the result equals one call over all frames)."""
    return _by_chunks(net.backbone_tokens, net, frames_u8, mask, strength, segments_per_chunk, dim=0)


def _by_chunks(run: Callable[[torch.Tensor], torch.Tensor], net, frames_u8: torch.Tensor,
               mask: Optional[torch.Tensor], strength: float, segments_per_chunk: int, *, dim: int,
               on_batch: Optional[OnBatch] = None) -> torch.Tensor:
    """``run`` on the network input of a chunk of whole segments at a time (they overlap by
    ``SYNC_SEGMENT - SYNC_STEP`` frames), its outputs joined along ``dim``."""
    total = sync_segments(frames_u8.shape[0])
    if total == 0:  # let the network say what is wrong
        return run(sync_input(net, frames_u8, mask, strength))
    outputs = []
    for first in range(0, total, segments_per_chunk):
        count = min(segments_per_chunk, total - first)
        a = first * SYNC_STEP
        b = a + (count - 1) * SYNC_STEP + SYNC_SEGMENT
        # the float input of one chunk lives only while ``run`` uses it
        outputs.append(run(sync_input(net, frames_u8[a:b], _mask_rows(mask, a, b), strength)))
        if on_batch is not None:
            on_batch(first + count, total)
    return torch.cat(outputs, dim=dim)


def sync_input(net, frames_u8: torch.Tensor, mask: Optional[torch.Tensor], strength: float) -> torch.Tensor:
    """uint8 frames (T, 3, 224, 224) -> masked, normalised (1, T, 3, 224, 224) on ``net``'s device."""
    frames01 = video_ops.to_float01(frames_u8)
    if mask is not None:
        frames01 = video_ops.apply_mask(frames01, mask, strength)
    return video_ops.normalize_sync(frames01)[None].to(net.device, net.dtype)


def encode_clip(clip, frames_u8: torch.Tensor, mask: Optional[torch.Tensor], strength: float,
                dtype: torch.dtype, *, batch_size: int = CLIP_FRAMES_PER_BATCH,
                on_batch: Optional[OnBatch] = None) -> torch.Tensor:
    """CLIP image features (1, T, D) of 8 fps uint8 frames (T, 3, 384, 384), ``batch_size``
    frames at a time; ``mask`` holds one frame per clip frame (or 1, static)."""
    total = frames_u8.shape[0]
    outputs = []
    for a in range(0, total, batch_size):
        b = min(a + batch_size, total)
        frames01 = video_ops.to_float01(frames_u8[a:b])
        m = _mask_rows(mask, a, b)
        if m is not None:
            frames01 = video_ops.apply_mask(frames01, m, strength)
        outputs.append(clip.encode_frames(frames01[None].to(clip.device, dtype), batch_size=batch_size))
        if on_batch is not None:
            on_batch(b, total)
    return torch.cat(outputs, dim=1)
