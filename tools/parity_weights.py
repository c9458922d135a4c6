"""Deterministic random weights for the metrics parity check (imports torch only).

Every tensor depends on its key and shape alone (a generator seeded with the key's CRC-32), so a
test can rebuild just the tensors it needs, and the two sides of ``tools/metrics_parity.py``
read the same values from the same files.
"""
from __future__ import annotations

import math
import zlib

import torch


def parity_tensor(key: str, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    shape = tuple(int(s) for s in shape)
    noise = torch.randn(shape, generator=g)
    leaf = key.rsplit(".", 1)[-1]
    if len(shape) >= 2:
        return noise * (1.0 / math.sqrt(max(1, math.prod(shape[1:]))))
    if leaf == "weight" and any(n in key for n in ("norm", "ln", "layernorm")):
        return 1.0 + 0.1 * noise  # normalisation gains near one
    return 0.02 * noise  # biases


def parity_state(shapes: dict) -> dict:
    """``{key: shape}`` -> ``{key: tensor}`` (float32)."""
    return {k: parity_tensor(k, s) for k, s in shapes.items()}
