"""Tiny full Synchformer networks (the released geometry, small widths) for the evaluation tests."""
from __future__ import annotations

from pathlib import Path

import torch

from comfyui_selva.selva.models.synchformer import (AudioExtractorConfig, MotionFormerConfig, Synchformer,
                                                    SyncTransformerConfig)

# 224 px frames, 16-frame segments, 128 x 66 mel segments and 14-segment windows as released;
# only widths and depths are small, so the DeSync protocol runs unchanged.
TINY_VIDEO = MotionFormerConfig(img_size=224, patch_size=56, embed_dim=32, depth=1, num_heads=2)
TINY_AUDIO = AudioExtractorConfig(embed_dim=32, depth=1, num_heads=2)
TINY_SYNC = SyncTransformerConfig(embed_dim=32, depth=1, num_heads=2)
TINY_CONFIG = (TINY_VIDEO, TINY_AUDIO, TINY_SYNC)


def tiny_synchformer(seed: int = 0) -> Synchformer:
    torch.manual_seed(seed)
    model = Synchformer(*TINY_CONFIG)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2 if p.dim() < 2 else p.shape[-1] ** -0.5, generator=g)
    return model.eval()


def write_tiny_synchformer(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_synchformer(seed).state_dict(), path)
    return path
