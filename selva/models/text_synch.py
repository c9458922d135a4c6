"""SelVA's text-conditioned Synchformer ("TextSynch"): the video encoder of the sync stream.

The MotionFormer backbone turns each 16-frame segment (25 fps, 224 x 224, values in [-1, 1]) into
8 x 14 x 14 patch tokens. Before the backbone's spatial pooling, cross-attention blocks let every
patch token look at the prompt (T5 features, with a few learned "supplementary" tokens in front)
so that the pooled sync features keep what the text asks for. Output: 8 vectors per segment.

Segments are 16 frames with a hop of 8, so a clip of T frames gives ``(T - 16) // 8 + 1`` segments
(trailing frames that do not fill a segment are ignored, as in the official code).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from ..errors import SelvaError
from .layers import MLP, MMCrossAttentionBlock
from .state_dicts import load_strict
from .synchformer import MOTIONFORMER_224, MotionFormer, MotionFormerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextSynchConfig:
    backbone: MotionFormerConfig = MOTIONFORMER_224
    text_dim: int = 768  # flan-t5-base hidden size
    num_sup_text_tokens: int = 5
    xattn_depth: int = 1
    segment_size: int = 16
    step_size: int = 8

    def __post_init__(self) -> None:
        if self.segment_size != self.backbone.frames_per_segment:
            raise ValueError(f"segment_size {self.segment_size} must equal the backbone's "
                             f"frames_per_segment {self.backbone.frames_per_segment}")
        if not 0 < self.step_size < self.segment_size:
            raise ValueError(f"step_size {self.step_size} must be in (0, segment_size)")

    def num_segments(self, num_frames: int) -> int:
        """Segments the official partition makes of ``num_frames`` frames (0 if too short)."""
        if num_frames < self.segment_size:
            return 0
        return (num_frames - self.segment_size) // self.step_size + 1


TEXT_SYNCH_DEPTH1 = TextSynchConfig()

BatchCallback = Callable[[int, int], None]

# Segments per backbone call by default, on an accelerator. The official code runs one clip's
# segments one batch item at a time; stacking several gives a GPU's matrix kernels bigger,
# faster products. 8 segments (an 8 s clip has 23) keep the activations of one call around a few
# hundred MB in fp32.
DEFAULT_SEGMENTS_PER_CALL = 8
# On the CPU the opposite holds: one segment's activations (~1569 x 3072 floats per MLP) stay in
# the caches, and 8 stacked segments measured 25 % slower per segment (one thread, AVX-512 Xeon;
# benchmarks/sync_encoder_side_by_side.py), so segments go one at a time there.
CPU_SEGMENTS_PER_CALL = 1


def default_segments_per_call(device: torch.device) -> int:
    """Segments per backbone call when the caller does not say (see the constants above)."""
    return CPU_SEGMENTS_PER_CALL if torch.device(device).type == "cpu" else DEFAULT_SEGMENTS_PER_CALL


class TextSynchformer(nn.Module):
    """Text-conditioned Synchformer; attribute names follow ``video_enc_sup_5.pth``."""

    def __init__(self, cfg: TextSynchConfig = TEXT_SYNCH_DEPTH1):
        super().__init__()
        self.cfg = cfg
        bb = cfg.backbone
        dim = bb.embed_dim
        self.vfeat_extractor = MotionFormer(bb)
        self.text_proj = nn.Sequential(
            nn.Linear(cfg.text_dim, dim),
            nn.SiLU(),
            MLP(dim, dim * 4),
        )
        self.synch_text_cross_blocks = nn.ModuleList(
            MMCrossAttentionBlock(dim, bb.num_heads, mlp_ratio=bb.mlp_ratio)
            for _ in range(cfg.xattn_depth))
        if cfg.num_sup_text_tokens > 0:
            self.sup_text_feat = nn.Parameter(torch.zeros(cfg.num_sup_text_tokens, cfg.text_dim))
        # stored in the release but never used by the sync path; kept for strict loading (it is a
        # fixed tensor, not trained)
        self.empty_string_feat = nn.Parameter(torch.zeros(1, cfg.text_dim), requires_grad=False)

    # -- text side -------------------------------------------------------------------------------

    def prepend_sup_tokens(self, text_f: torch.Tensor,
                           text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Put the learned supplementary tokens (always attended) in front of the T5 sequence.

        text_f (B, L, text_dim), text_mask (B, L) -> (B, n_sup + L, text_dim), (B, n_sup + L).
        """
        if self.cfg.num_sup_text_tokens <= 0:
            return text_f, text_mask
        b = text_f.shape[0]
        sup = self.sup_text_feat.to(text_f.dtype).unsqueeze(0).expand(b, -1, -1)
        sup_mask = torch.ones(b, sup.shape[1], dtype=text_mask.dtype, device=text_mask.device)
        return torch.cat([sup, text_f], dim=1), torch.cat([sup_mask, text_mask], dim=1)

    # -- video side ------------------------------------------------------------------------------

    def _segment(self, frames: torch.Tensor, batch: int, index: int) -> torch.Tensor:
        """Segment ``index`` of clip ``batch`` as (C, frames, H, W)."""
        start = index * self.cfg.step_size
        return frames[batch, start:start + self.cfg.segment_size].transpose(0, 1)

    def _check_frames(self, sync_frames: torch.Tensor) -> None:
        bb = self.cfg.backbone
        if sync_frames.dim() != 5 or tuple(sync_frames.shape[2:]) != (bb.in_chans, bb.img_size, bb.img_size):
            raise SelvaError(f"sync frames must be (B, T, {bb.in_chans}, {bb.img_size}, {bb.img_size}), "
                             f"got {tuple(sync_frames.shape)}")
        if sync_frames.shape[1] < self.cfg.segment_size:
            raise SelvaError(f"the video is too short for the sync encoder: {sync_frames.shape[1]} frames, "
                             f"at least {self.cfg.segment_size} are needed "
                             f"({self.cfg.segment_size / 25:.2f} s at 25 fps)")

    def _check_text(self, batch: int, text_f: torch.Tensor, text_mask: torch.Tensor) -> None:
        if text_f.dim() != 3 or text_f.shape[0] != batch or text_f.shape[2] != self.cfg.text_dim:
            raise SelvaError(f"text features must be ({batch}, L, {self.cfg.text_dim}), got {tuple(text_f.shape)}")
        if tuple(text_mask.shape) != tuple(text_f.shape[:2]):
            raise SelvaError(f"text mask {tuple(text_mask.shape)} does not match text features "
                             f"{tuple(text_f.shape)}")

    def backbone_tokens(self,
                        sync_frames: torch.Tensor,
                        *,
                        segments_per_batch: Optional[int] = None,
                        on_batch: Optional[BatchCallback] = None) -> torch.Tensor:
        """The text-independent part of :meth:`encode`: the backbone's patch tokens of every
        segment, ``(B * S, slots * patches, D)`` in clip-major order.

        The prompt only enters after the backbone, so these can be kept and reused for another
        prompt on the same frames (:meth:`encode_tokens`). ``segments_per_batch`` bounds how many
        segments run through the backbone at once (default :func:`default_segments_per_call`);
        ``on_batch(done, total)`` is called after each batch of segments. The result does not
        depend on the batching beyond float rounding: segments never interact.
        """
        self._check_frames(sync_frames)
        b, t = sync_frames.shape[:2]
        per_clip = self.cfg.num_segments(t)
        total = b * per_clip
        step = segments_per_batch if segments_per_batch is not None else default_segments_per_call(self.device)
        if step < 1:
            raise SelvaError(f"segments_per_batch must be at least 1, got {step}")
        sync_frames = sync_frames.to(self.device)
        order = [(i, s) for i in range(b) for s in range(per_clip)]  # the output sequence's order
        outputs = []
        for start in range(0, total, step):
            chunk = order[start:start + step]
            segments = torch.stack([self._segment(sync_frames, i, s) for i, s in chunk])
            outputs.append(self.vfeat_extractor.patch_tokens(segments))
            if on_batch is not None:
                on_batch(min(start + step, total), total)
        return torch.cat(outputs, dim=0)

    def encode_tokens(self, tokens: torch.Tensor, text_f: torch.Tensor,
                      text_mask: torch.Tensor) -> torch.Tensor:
        """Backbone tokens of B clips (from :meth:`backbone_tokens`) + their prompts -> the sync
        features (B, S * 8, D): the text cross-attention and the spatial pooling."""
        b = text_f.shape[0]
        self._check_text(b, text_f, text_mask)
        if tokens.dim() != 3 or tokens.shape[0] % b:
            raise SelvaError(f"backbone tokens {tuple(tokens.shape)} do not belong to {b} clips")
        per_clip = tokens.shape[0] // b
        param = self.text_proj[0].weight
        # Projecting per clip instead of per segment: same numbers (row-wise ops), less work.
        text = self.text_proj(text_f.to(param.device, param.dtype))
        mask = text_mask.to(param.device) != 0
        rows = torch.arange(b, device=param.device).repeat_interleave(per_clip)
        outputs = []
        step = default_segments_per_call(param.device)  # bounds the feed-forward's working memory
        for start in range(0, tokens.shape[0], step):
            x = tokens[start:start + step].to(param.device)
            r = rows[start:start + step]
            for block in self.synch_text_cross_blocks:
                x = block(x, text[r], mask[r])
            outputs.append(self.vfeat_extractor.aggregate(x))  # (n, slots, D)
        features = torch.cat(outputs, dim=0)
        return features.reshape(b, per_clip * features.shape[1], features.shape[2])

    def encode(self,
               sync_frames: torch.Tensor,
               text_f: torch.Tensor,
               text_mask: torch.Tensor,
               *,
               segments_per_batch: Optional[int] = None,
               on_batch: Optional[BatchCallback] = None) -> torch.Tensor:
        """Text-conditioned sync features.

        sync_frames: (B, T, 3, 224, 224) in [-1, 1] at 25 fps. text_f/text_mask: T5 features and
        mask (True/1 = real token) with the supplementary tokens already prepended
        (``prepend_sup_tokens``). Returns (B, S * 8, 768) with S = ``cfg.num_segments(T)``.
        ``segments_per_batch`` / ``on_batch``: see :meth:`backbone_tokens`.
        """
        self._check_frames(sync_frames)
        self._check_text(sync_frames.shape[0], text_f, text_mask)
        tokens = self.backbone_tokens(sync_frames, segments_per_batch=segments_per_batch,
                                      on_batch=on_batch)
        return self.encode_tokens(tokens, text_f, text_mask)

    @property
    def dtype(self) -> torch.dtype:
        return self.text_proj[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.text_proj[0].weight.device


# ---------------------------------------------------------------------------------------------
# Loading

def load_text_synch_weights(model: TextSynchformer, state_dict: Mapping[str, torch.Tensor], *,
                            source: str) -> None:
    """Strictly load a released TextSynch file (``weights/video_enc_sup_5.pth``).

    The official loader keeps only its known prefixes, and the released file holds exactly
    those; so here every key must belong to the network: anything else is an error, not dropped.
    """
    load_strict(model, state_dict, source=source, what="TextSynch video encoder")

