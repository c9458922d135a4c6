"""Tuned-vocoder files: safetensors with metadata saying which vocoder, rate and mode they are for.

``snake_alpha_only`` files hold just the Snake/SnakeBeta alpha and beta tensors (a few hundred KB);
``all_params`` files hold the whole generator. Either is applied onto a fresh copy of the base
vocoder, which is checked first: a file for the other vocoder or sample rate is refused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Union

import torch
from torch import nn

from ..artifacts import load_safetensors, write_safetensors
from ..errors import SelvaError
from ..train.files import file_digest
from .params import TRAIN_MODES, trainable_parameters

FORMAT = "selva.bigvgan_tuned"
FORMAT_VERSION = "1"
VOCODER_NAMES = {"bigvgan_v1": "BigVGAN v1 (SelVA's 16 kHz best_netG.pt)",
                 "bigvgan_v2": "BigVGAN v2 (nvidia/bigvgan_v2_44khz_128band_512x)"}


@dataclass(frozen=True)
class VocoderIdentity:
    """What a tuned file must match: the vocoder kind, its rate and mel bands."""

    vocoder: str  # "bigvgan_v1" | "bigvgan_v2"
    sample_rate: int
    num_mels: int

    def describe(self) -> str:
        return f"{VOCODER_NAMES.get(self.vocoder, self.vocoder)} at {self.sample_rate} Hz, {self.num_mels} mel bands"


def identity_of(pipe) -> VocoderIdentity:
    spec = pipe.variant
    return VocoderIdentity(vocoder=spec.vocoder, sample_rate=int(spec.sample_rate), num_mels=int(spec.mel.num_mels))


@dataclass(frozen=True)
class TunedVocoder:
    tensors: dict[str, torch.Tensor]
    identity: VocoderIdentity
    mode: str
    steps: int
    variant: str
    source: str
    digest: str

    def check_fits(self, target: VocoderIdentity) -> None:
        if self.identity != target:
            raise SelvaError(f"{self.source} was tuned for {self.identity.describe()}, but this model's "
                             f"vocoder is {target.describe()}. Load it on a model with the same vocoder "
                             f"(variant {self.variant}), or tune one for this model.")


def metadata(identity: VocoderIdentity, *, mode: str, steps: int, variant: str) -> dict[str, str]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "vocoder": identity.vocoder,
            "sample_rate": str(identity.sample_rate), "num_mels": str(identity.num_mels), "mode": mode,
            "steps": str(int(steps)), "variant": variant}


def tuned_tensors(vocoder: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """What a file of ``mode`` stores: the trained parameters (all of the state for all_params)."""
    if mode == "all_params":
        items = vocoder.state_dict().items()
    else:
        items = trainable_parameters(vocoder, mode).items()
    return {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
            for k, v in items}


def save_tuned_vocoder(path: Union[str, Path], tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> Path:
    """Write atomically (temp file in the same folder, then rename): never a half-written file."""
    return write_safetensors(Path(path), tensors, meta)


def read_tuned_vocoder(path: Union[str, Path]) -> TunedVocoder:
    path = Path(path)
    from ..compat.pt_files import is_pt, read_vocoder  # the earlier pack's BigVGAN .pt files

    if not path.is_file():
        raise SelvaError(f"Tuned vocoder not found: {path}. Give the checkpoint_path the BigVGAN Trainer "
                         f"returned (relative paths are in ComfyUI's output folder).")
    digest = file_digest(path, hashlib.sha256())[:12]
    if is_pt(path):
        tensors, name, rate, mels = read_vocoder(path)
        return TunedVocoder(tensors, VocoderIdentity(name, rate, mels), "all_params", 0, "earlier pack",
                            str(path), digest)
    tensors, meta = load_safetensors(path, "tuned vocoder")
    if meta.get("format") != FORMAT:
        raise SelvaError(f"{path} is not a tuned SelVA vocoder (its metadata says format "
                         f"{meta.get('format')!r}); use a checkpoint written by the SelVA BigVGAN Trainer.")
    try:
        identity = VocoderIdentity(meta["vocoder"], int(meta["sample_rate"]), int(meta["num_mels"]))
        mode, steps = meta["mode"], int(meta["steps"])
    except (KeyError, ValueError) as exc:
        raise SelvaError(f"{path}: incomplete metadata ({exc}); the file is damaged.") from exc
    if mode not in TRAIN_MODES:
        raise SelvaError(f"{path}: unknown train mode {mode!r} in its metadata.")
    return TunedVocoder(tensors, identity, mode, steps, meta.get("variant", "?"), str(path), digest)


def apply_tuned(vocoder: nn.Module, tuned: TunedVocoder) -> nn.Module:
    """Overwrite ``vocoder``'s tensors with the tuned ones: names and shapes must all fit, and a
    snake_alpha_only file must hold every alpha/beta and nothing else."""
    own = vocoder.state_dict()
    expected = set(own) if tuned.mode == "all_params" else set(trainable_parameters(vocoder, tuned.mode))
    missing, unexpected = sorted(expected - set(tuned.tensors)), sorted(set(tuned.tensors) - expected)
    wrong = sorted(k for k in expected & set(tuned.tensors) if tuple(own[k].shape) != tuple(tuned.tensors[k].shape))
    if missing or unexpected or wrong:
        raise SelvaError(f"{tuned.source} does not fit this vocoder ({len(missing)} missing, {len(unexpected)} "
                         f"unexpected, {len(wrong)} wrongly shaped tensors, e.g. "
                         f"{json.dumps((missing + unexpected + wrong)[:3])}). It was tuned on a different "
                         f"vocoder network; tune one for this model.")
    with torch.no_grad():
        for k, v in tuned.tensors.items():
            own[k].copy_(v.to(own[k].dtype))
    return vocoder
