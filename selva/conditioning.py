"""The generator's conditions, built here for every path that samples or trains.

The Sampler, long-video windows, DITTO, steering extraction, textual inversion, training eval
samples and the training objective all build the generator's inputs through these functions, so
a change to how a condition is made (a new empty sequence, a dtype rule) reaches them all at
once. The raw sequences (:class:`ConditionInputs`) are batch 1 and shared by every batch item;
``None`` for CLIP or sync stands for the generator's learned empty sequence (no CLIP frames, or
no video at all: text to audio, as MMAudio does it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .errors import SelvaError
from .features import Features
from .models.generator import Conditions, SelvaGenerator
from .variants import SeqLengths


@dataclass
class ConditionInputs:
    """One clip's raw condition sequences, batch 1, on the generator's device and dtype."""

    clip: Optional[torch.Tensor]  # (1, Tc, clip_dim); None = the learned empty CLIP sequence
    sync: Optional[torch.Tensor]  # (1, S, sync_dim); None = the learned empty sync sequence
    text: torch.Tensor  # (1, 77, text_dim) CLIP text features of the prompt

    def window(self, clip: tuple[int, int], sync: tuple[int, int]) -> "ConditionInputs":
        """The slices of one long-video window ([start, stop) in CLIP frames and sync tokens)."""
        return ConditionInputs(None if self.clip is None else self.clip[:, clip[0]:clip[1]],
                               None if self.sync is None else self.sync[:, sync[0]:sync[1]], self.text)

    def cloned(self) -> "ConditionInputs":
        """Ordinary copies (e.g. of inference-mode tensors, for a graph that needs gradients)."""
        return ConditionInputs(None if self.clip is None else self.clip.clone(),
                               None if self.sync is None else self.sync.clone(), self.text.clone())


def condition_inputs(features: Features, seq: SeqLengths, device: torch.device,
                     dtype: torch.dtype) -> ConditionInputs:
    """``features``' sequences cut to ``seq`` (a duration up to the features'), on ``device``;
    text-only features (no video) give the learned empty video sequences."""
    if not features.has_video:  # text to audio: the prompt's CLIP text alone
        return ConditionInputs(None, None, features.text_clip.to(device, dtype))
    sync = features.sync_features[:, :seq.sync]
    if sync.shape[1] != seq.sync:
        raise SelvaError(f"The features hold {features.sync_features.shape[1]} sync tokens but "
                         f"{seq.duration:.2f} s needs {seq.sync}: extract the features again.")
    clip = None if features.clip_features is None else features.clip_features[:, :seq.clip].to(device, dtype)
    return ConditionInputs(clip, sync.to(device, dtype), features.text_clip.to(device, dtype))


def project(gen: SelvaGenerator, inputs: ConditionInputs) -> Conditions:
    """The conditional branch, projected once; ``gen`` must have the clip's sequence lengths."""
    clip = gen.empty_clip_sequence(1) if inputs.clip is None else inputs.clip
    sync = gen.empty_sync_sequence(1) if inputs.sync is None else inputs.sync
    return gen.preprocess_conditions(clip, sync, inputs.text)


def unconditional(gen: SelvaGenerator, negative_text_clip: Optional[torch.Tensor], device: torch.device,
                  dtype: torch.dtype) -> Conditions:
    """The unconditional branch: learned empty video sequences, and the negative prompt's CLIP
    text (None = the learned empty string, what training drops in for "no text")."""
    negative = None if negative_text_clip is None else negative_text_clip.to(device, dtype)
    return gen.empty_conditions(1, negative_text_clip_f=negative)


def guided(gen: SelvaGenerator, inputs: ConditionInputs, negative_text_clip: Optional[torch.Tensor],
           device: torch.device, dtype: torch.dtype) -> tuple[Conditions, Conditions]:
    """(conditional, unconditional) branches for classifier-free guidance at the generator's
    current sequence lengths."""
    return project(gen, inputs), unconditional(gen, negative_text_clip, device, dtype)


def clip_conditions(gen: SelvaGenerator, features: Features, seq: SeqLengths,
                    negative_text_clip: Optional[torch.Tensor], device: torch.device,
                    dtype: torch.dtype) -> tuple[Conditions, Conditions]:
    """Guided conditions for one clip of ``seq`` (a single window); sets ``gen``'s lengths."""
    gen.set_seq_lengths(seq.latent, seq.clip, seq.sync)
    return guided(gen, condition_inputs(features, seq, device, dtype), negative_text_clip, device, dtype)


def window_conditions(gen: SelvaGenerator, windows: Sequence, inputs: ConditionInputs,
                      negative_text_clip: Optional[torch.Tensor], device: torch.device,
                      dtype: torch.dtype) -> list[tuple[Conditions, Conditions]]:
    """Per long-video window (``long_video.Window``), its guided conditions: its own slice of the
    CLIP and sync sequences, the text and the negative shared (one unconditional branch per
    distinct window length). Leaves ``gen`` at the last window's lengths."""
    out, unconds = [], {}
    for w in windows:
        gen.set_seq_lengths(*w.lengths)
        cond = project(gen, inputs.window(w.clip, w.sync))
        if w.lengths not in unconds:
            unconds[w.lengths] = unconditional(gen, negative_text_clip, device, dtype)
        out.append((cond, unconds[w.lengths]))
    return out


def training_inputs(gen: SelvaGenerator, clips: Sequence[Optional[torch.Tensor]],
                    syncs: Sequence[torch.Tensor], texts: Sequence[torch.Tensor],
                    null_video: Sequence[bool], null_text: Sequence[bool], device: torch.device,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stacked raw (clip, sync, text) of a training batch (per item unbatched sequences), with the
    learned empty sequences dropped in where the objective's condition dropout drew them."""
    empty_clip = gen.empty_clip_sequence(1)[0]
    empty_sync = gen.empty_sync_sequence(1)[0]
    empty_text = gen.empty_string_sequence(1)[0]
    out_clip, out_sync, out_text = [], [], []
    for clip, sync, text, no_video, no_text in zip(clips, syncs, texts, null_video, null_text):
        clip = empty_clip if clip is None else clip.to(device, dtype)
        out_clip.append(empty_clip if no_video else clip)
        out_sync.append(empty_sync if no_video else sync.to(device, dtype))
        out_text.append(empty_text if no_text else text.to(device, dtype))
    return torch.stack(out_clip), torch.stack(out_sync), torch.stack(out_text)
