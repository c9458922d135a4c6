"""One clip's generator inputs, built the way the Sampler builds them (batch 1)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import SelvaError
from ..features import Features

if TYPE_CHECKING:
    from ..pipeline import SelvaPipeline


def clip_condition_inputs(pipe: "SelvaPipeline", gen, features: Features, seq) -> tuple[torch.Tensor, ...]:
    """(clip, sync, text) raw condition features on the device in the generator's dtype.

    ``gen`` must already have ``seq``'s lengths; no CLIP frame features = the learned empty sequence.
    """
    dtype = pipe.stage_dtype("generator")
    sync = features.sync_features[:, :seq.sync]
    if sync.shape[1] != seq.sync:
        raise SelvaError(f"The features hold {features.sync_features.shape[1]} sync tokens but "
                         f"{seq.duration:.2f} s needs {seq.sync}: extract the features again.")
    if features.clip_features is None:
        clip = gen.empty_clip_sequence(1)
    else:
        clip = features.clip_features[:, :seq.clip].to(pipe.device, dtype)
    return clip, sync.to(pipe.device, dtype), features.text_clip.to(pipe.device, dtype)
