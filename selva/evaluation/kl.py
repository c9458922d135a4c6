"""KL divergence of paired class distributions (av-benchmark's ``KL-PASST-softmax``).

For each held-out clip, the real audio's and the generated audio's class logits become softmax
distributions P (real) and Q (generated); the clip's value is ``KL(P || Q) = sum P (log P - log Q)``
and the set's is the mean over clips. Lower means the generated audio is heard as the same kind of
sound as the real one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SelvaError


def kl_per_pair(generated_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """(N, C) and (N, C) logits -> (N,) KL(softmax(real) || softmax(generated))."""
    if generated_logits.shape != real_logits.shape or generated_logits.dim() != 2:
        raise SelvaError(f"KL needs paired logits of equal shape (N, classes), got "
                         f"{tuple(generated_logits.shape)} and {tuple(real_logits.shape)}")
    log_q = F.log_softmax(generated_logits.float(), dim=1)
    log_p = F.log_softmax(real_logits.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)
