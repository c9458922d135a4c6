"""Deterministic random values for the CLAP parity weights (imports torch only).

Shared by both halves of ``tools/clap_parity.py`` and by ``tests/test_clap_parity_golden.py``:
each tensor depends on its key and shape alone (``parity_weights.parity_tensor``), so CI rebuilds
the same file without the reference environment. Batch-norm statistics get dB-scale values (the
log-mel input is in dB) so that the embeddings are well spread rather than saturated.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity_weights import parity_tensor  # noqa: E402

# not learned: the reference keeps the values laion_clap builds (our side ignores or recomputes them)
CONSTANT_MARKERS = ("relative_position_index", "attn_mask", "num_batches_tracked", "position_ids",
                    "spectrogram_extractor.", "logmel_extractor.")


def parity_value(key: str, shape: tuple) -> Optional[torch.Tensor]:
    """The random value of checkpoint tensor ``key`` (None: a constant the network builds itself)."""
    if any(m in key for m in CONSTANT_MARKERS):
        return None
    noise = parity_tensor(key, shape)
    if key.endswith("LayerNorm.weight"):  # RoBERTa's spelling: parity_tensor only knows "norm"
        return 1.0 + 5.0 * noise
    if key.endswith("running_mean"):
        return -30.0 + 200.0 * noise  # parity_tensor gives 1-D tensors a 0.02 scale
    if key.endswith("running_var"):
        return 100.0 * (1.0 + 50.0 * noise.abs())
    return noise
