"""A LoRA adapter file for the tiny_16k generator, written where a test needs one."""
from __future__ import annotations

from pathlib import Path

import torch

from comfy_pack import pack_module

import tiny


def write_tiny_adapter(path: Path, targets=("attn.qkv", "ffn.w1", "linear1"), seed: int = 11) -> Path:
    """Random (clearly audible) pairs on both layer kinds of the tiny generator; replaces ``path``."""
    adapters = pack_module("selva.adapters")
    generator = pack_module("selva.models.generator")
    gen = generator.SelvaGenerator(tiny.tiny_generator(8))
    lora = adapters.LoraSet.create(gen, adapters.LoraConfig(rank=2, alpha=2.0, targets=targets))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    path = Path(path)
    path.unlink(missing_ok=True)
    return adapters.save_adapter(lora.to_adapter(variant="tiny_16k"), path)
