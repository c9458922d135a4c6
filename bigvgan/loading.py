"""Load the released BigVGAN generators strictly, folding weight norm into plain weights.

Both released files store every conv as weight-norm factors, under the old spelling
``<m>.weight_g`` / ``<m>.weight_v`` (``torch.nn.utils.weight_norm``) or the new one
``<m>.parametrizations.weight.original0`` / ``original1`` (``torch.nn.utils.parametrizations``).
The reference loads them into weight-normed layers and then calls ``remove_weight_norm()``; here
the pair is folded into ``<m>.weight`` first (``torch._weight_norm``, the very function both torch
spellings evaluate, so the numbers are identical) and the result is loaded with ``strict=True``.
A file that already holds plain ``<m>.weight`` (weight norm removed before saving) loads as is.

Networks are built on the meta device and the file's tensors are assigned, so loading never holds
a randomly initialised copy next to the real weights. Errors are :class:`BigVGANError`; a caller
that reads the file itself can pass ``done`` to let each weight-norm factor's memory go once folded.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import nn

from .checkpoints import load_strict, read_checkpoint
from .errors import BigVGANError
from .v1 import BIGVGAN_V1_16K, BigVGANv1, BigVGANv1Config
from .v2 import BigVGANv2, BigVGANv2Config

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

V2_CONFIG_NAME = "config.json"
V2_WEIGHTS_NAME = "bigvgan_generator.pt"

# (gain name, direction name) of each weight-norm spelling, as the last parts of a key
_WEIGHT_NORM_SPELLINGS = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)


def _weight_norm_part(key: str) -> tuple[str, int] | None:
    """(module prefix incl. its trailing dot, 0 for gain / 1 for direction) or None."""
    for spelling in _WEIGHT_NORM_SPELLINGS:
        for slot, name in enumerate(spelling):
            if key == name or key.endswith("." + name):
                return key[: -len(name)], slot
    return None


def fold_weight_norm(state: Mapping[str, torch.Tensor], *, source: str,
                     done: Optional[Callable[[torch.Tensor], None]] = None) -> dict[str, torch.Tensor]:
    """Replace every weight-norm (gain, direction) pair by the plain ``<m>.weight`` it encodes;
    ``done(t)`` is called for each factor once its weight is folded (it is not needed after)."""
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        part = _weight_norm_part(key)
        if part is None:
            out[key] = value
            continue
        prefix, slot = part
        factors = pairs.setdefault(prefix, {})
        if slot in factors:
            raise BigVGANError(f"{source}: {prefix}weight holds weight-norm factors twice "
                             "(both old and new spellings)")
        factors[slot] = value
    for prefix, factors in pairs.items():
        name = f"{prefix}weight"
        if len(factors) != 2:
            raise BigVGANError(f"{source}: {name} has only half of its weight-norm pair; "
                             "the file is damaged or not a BigVGAN generator")
        if name in out:
            raise BigVGANError(f"{source}: {name} is stored both plain and as weight-norm factors")
        gain, direction = factors[0], factors[1]
        if direction.is_meta:
            # shape-only tensors (strict-load checks): the arithmetic would be wasted time
            out[name] = torch.empty_like(direction)
            continue
        # dim=0: the norm is taken over all but the first axis, as both torch APIs default to
        out[name] = torch._weight_norm(direction.float(), gain.float(), 0).to(direction.dtype)
        if done is not None:
            done(gain)
            done(direction)
    return out


def _generator_state(obj: Any, *, source: str) -> Mapping[str, torch.Tensor]:
    """The generator's state dict from the file's ``{'generator': state_dict}`` structure.

    A bare state dict (already unwrapped by the caller) is accepted as well.
    """
    if isinstance(obj, Mapping) and "generator" in obj:
        obj = obj["generator"]
    if not isinstance(obj, Mapping):
        raise BigVGANError(f"{source} does not hold a BigVGAN generator state dict")
    return obj


def _finish(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def load_generator(model: nn.Module, obj: Any, *, source: str, what: str,
                   done: Optional[Callable[[torch.Tensor], None]] = None) -> nn.Module:
    """Fold weight norm, then load strictly into an already built (meta or real) generator
    (``done``: see :func:`fold_weight_norm`)."""
    state = fold_weight_norm(_generator_state(obj, source=source), source=source, done=done)
    load_strict(model, state, source=source, what=f"{what} network",
                hint="SelVA's 16 kHz models use ext_weights/best_netG.pt (v1), the 44.1 kHz "
                     "ones nvidia/bigvgan_v2_44khz_128band_512x (v2).")
    return _finish(model)


def _build_and_load(build: Callable[[], nn.Module], obj: Any, *, source: str, what: str,
                    done: Optional[Callable[[torch.Tensor], None]] = None) -> nn.Module:
    # built on meta: the file's tensors are assigned, never copied over a random initialisation
    with torch.device("meta"):
        model = build()
    log.debug("loading %s from %s", what, source)
    return load_generator(model, obj, source=source, what=what, done=done)


def load_bigvgan_v1(path_or_state: PathLike | Mapping[str, Any],
                    cfg: BigVGANv1Config = BIGVGAN_V1_16K, *, source: str | None = None,
                    done: Optional[Callable[[torch.Tensor], None]] = None) -> BigVGANv1:
    """BigVGAN v1 from ``best_netG.pt`` (a path, or what ``torch.load`` returned for it;
    ``done``: see :func:`fold_weight_norm`)."""
    if isinstance(path_or_state, (str, os.PathLike)):
        source = source or str(path_or_state)
        path_or_state = read_checkpoint(path_or_state)
    return _build_and_load(lambda: BigVGANv1(cfg), path_or_state, source=source or "BigVGAN v1 state dict",
                           what="BigVGAN v1 (16 kHz)", done=done)


def read_bigvgan_v2_config(snapshot_dir: PathLike) -> BigVGANv2Config:
    path = Path(snapshot_dir) / V2_CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return BigVGANv2Config.from_json(data)
    except FileNotFoundError as exc:
        raise BigVGANError(f"BigVGAN v2 config not found: {path}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise BigVGANError(f"BigVGAN v2 config {path} is unusable: {exc}") from exc


def load_bigvgan_v2_state(obj: Any, cfg: BigVGANv2Config, *, source: str = "BigVGAN v2 state dict",
                          done: Optional[Callable[[torch.Tensor], None]] = None) -> BigVGANv2:
    """BigVGAN v2 from an already read ``{'generator': state_dict}`` object and its config."""
    return _build_and_load(lambda: BigVGANv2(cfg), obj, source=source, what="BigVGAN v2 (44.1 kHz)",
                           done=done)


def load_bigvgan_v2(snapshot_dir: PathLike) -> BigVGANv2:
    """BigVGAN v2 from a hub snapshot folder holding config.json and bigvgan_generator.pt."""
    cfg = read_bigvgan_v2_config(snapshot_dir)
    weights = Path(snapshot_dir) / V2_WEIGHTS_NAME
    return load_bigvgan_v2_state(read_checkpoint(weights), cfg, source=str(weights))
