"""Load BigVGAN's released discriminators strictly from ``bigvgan_discriminator_optimizer.pt``.

The file is read with ``weights_only=True``. Besides the two discriminators it holds both
optimizers' state (and step / epoch counters): those are not needed to use the discriminators as
frozen feature extractors and are dropped. Each discriminator's entry must match the network
exactly: every key and shape, and weight-norm factors on precisely the convolutions the
reference wraps in weight norm (which are then folded into plain weights).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from .checkpoints import load_strict, preview, read_checkpoint
from .discriminators import (DiscriminatorConfig, MultiPeriodDiscriminator,
                             PretrainedDiscriminators, build_second, weight_normed_prefixes)
from .errors import BigVGANError
from .loading import _weight_norm_part, fold_weight_norm

PathLike = Union[str, os.PathLike]

DISCRIMINATOR_FILE = "bigvgan_discriminator_optimizer.pt"
RELEASE_HINT = ("nvidia/bigvgan_v2_44khz_128band_512x publishes bigvgan_discriminator_optimizer.pt "
                "beside bigvgan_generator.pt; the 16 kHz vocoder (best_netG.pt) was released without "
                "discriminators.")


def discriminator_config(config_json: Optional[PathLike], default: DiscriminatorConfig) -> DiscriminatorConfig:
    """The discriminator settings of a BigVGAN config.json, or ``default`` when the file is
    absent or has none (a hub snapshot's config.json may list only the generator's)."""
    path = Path(config_json) if config_json else None
    if path is None or not path.is_file():
        return default
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BigVGANError(f"{path} is not valid JSON: {exc}") from exc
    if "mpd_reshapes" not in data:
        return default
    try:
        return DiscriminatorConfig.from_json({**data, "sampling_rate": data.get("sampling_rate",
                                                                                default.sampling_rate)})
    except (ValueError, TypeError) as exc:
        raise BigVGANError(f"{path}: unusable discriminator settings ({exc}).") from exc


def _check_weight_norm_layout(net: nn.Module, state: Mapping[str, Any], *, source: str, what: str) -> None:
    """The file's weight-normed convs must be exactly the ones the reference weight-norms."""
    found = {part[0] for key in state if (part := _weight_norm_part(key)) is not None}
    expected = weight_normed_prefixes(net)
    if found != expected:
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        detail = "; ".join(s for s in (
            f"plain where weight norm was expected: {preview(missing)}" if missing else "",
            f"weight norm where plain weights were expected: {preview(unexpected)}" if unexpected else "") if s)
        raise BigVGANError(f"{source}: the {what} entry is not in BigVGAN's layout ({detail}). {RELEASE_HINT}")


def load_discriminator_entry(net: nn.Module, state: Any, *, source: str, what: str) -> nn.Module:
    """Strictly load one discriminator's state dict (with weight-norm factors) into ``net``."""
    if not isinstance(state, Mapping):
        raise BigVGANError(f"{source}: the {what} entry is not a state dict. {RELEASE_HINT}")
    _check_weight_norm_layout(net, state, source=source, what=what)
    plain = fold_weight_norm(state, source=source)
    load_strict(net, plain, source=source, what=what, hint=RELEASE_HINT)
    return net.eval().requires_grad_(False)


def _second_kind_of(state: Mapping[str, Any]) -> Optional[str]:
    keys = list(state)
    if any(".cqt_transform." in k for k in keys):
        return "cqtd"
    if any(".band_convs." in k for k in keys):
        return "mbd"
    if keys:
        return "mrd"
    return None


def load_discriminators(path: PathLike, cfg: DiscriminatorConfig) -> PretrainedDiscriminators:
    """MPD and the second discriminator from a BigVGAN ``do_*`` / discriminator-optimizer file."""
    source = str(path)
    obj = read_checkpoint(Path(path))
    if not isinstance(obj, Mapping) or "mpd" not in obj or "mrd" not in obj:
        keys = ", ".join(sorted(map(str, obj))[:6]) if isinstance(obj, Mapping) else type(obj).__name__
        raise BigVGANError(f"{source} is not a BigVGAN discriminator file: it should hold 'mpd' and 'mrd' "
                         f"entries, it holds {keys}. {RELEASE_HINT}")
    kind = _second_kind_of(obj["mrd"]) if isinstance(obj["mrd"], Mapping) else None
    if kind is not None and kind != cfg.second:
        names = {"cqtd": "the multi-scale sub-band CQT discriminator", "mrd": "the multi-resolution "
                 "discriminator", "mbd": "the multi-band discriminator"}
        raise BigVGANError(f"{source} holds {names[kind]}, but this vocoder's config expects "
                         f"{names[cfg.second]}: use the discriminator file released with this vocoder.")
    # built on meta: the file's tensors are assigned, no random initialisation is computed
    with torch.device("meta"):
        mpd = MultiPeriodDiscriminator(cfg)
    second = _build_second_on_meta(cfg)
    mpd = load_discriminator_entry(mpd, obj["mpd"], source=source, what="MPD (multi-period discriminator)")
    second = load_discriminator_entry(second, obj["mrd"], source=source,
                                      what=f"{cfg.second.upper()} (second discriminator)")
    extra = {k: obj[k] for k in ("steps", "epoch") if k in obj}
    return PretrainedDiscriminators(mpd=mpd, second=second, config=cfg, source=source, extra=extra)


def _build_second_on_meta(cfg: DiscriminatorConfig) -> nn.Module:
    # nnAudio and torchaudio compute their kernels with numpy on construction; build on the CPU
    # then move the convs to meta so that only the file's values are ever used
    net = build_second(cfg)
    return net.to("meta")
