"""Gradient checkpointing per transformer block: activations of a block are recomputed in the
backward pass instead of kept, trading about one more forward pass per step (~50% more time
measured, LORA_TRAINING.md "Speed and memory") for far less activation memory."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def checkpointed_blocks(generator: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, every joint/fused block of ``generator`` runs under
    ``torch.utils.checkpoint`` (non-reentrant: forward hooks such as LoRA's run again in the
    recomputation); the original forwards are restored on exit."""
    if not enabled:
        yield
        return
    blocks = list(generator.joint_blocks) + list(generator.fused_blocks)
    for block in blocks:
        original = block.forward

        def run(*args, _original=original, **kwargs):
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        block.forward = run  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)
