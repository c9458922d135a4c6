"""The earlier pack's ``.pt`` files for textual inversion, fine-tuned BigVGAN and steering.

Each is read with ``torch.load(weights_only=True)``: only tensors and plain containers, never a
pickle that runs code. What they hold (as that pack wrote them):

* textual inversion (final and ``step_NNNNN.pt``): ``{"embeddings": (n_tokens, 1024),
  "n_tokens", "inject_mode": "suffix" | "prefix", "step", "init_text", "lr", "steps",
  "loss_history"}``; no variant (CLIP text features are 1024 wide for every variant).
* BigVGAN (final and step files): ``{"generator": <the vocoder's state dict>, "has_gafilter",
  "gafilter_kernel_size"}``, the whole generator under the released names (with GAFilters, each
  filtered activation wrapped: see :func:`_gafilter_names_to_ours`).
* steering: ``{"steering_vectors": [per block (latent positions, hidden)], "n_blocks", "n_joint",
  "n_fused", "latent_seq_len", "n_samples", "seed", "mode", "variant"}`` (its ``mode`` is the
  model's sample rate, e.g. "16k"); they become our per-position steering vectors.

The readers return plain values; our file classes are built by their own loaders, which fall back
to these. Values that pack never wrote are refused in :mod:`.unsupported`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from .. import artifacts
from ..errors import SelvaError
from . import unsupported

PT_SUFFIXES = (".pt", ".pth", ".ckpt")
# conv_pre's input channels (mel bands) -> (our vocoder name, sample rate): the two released
# vocoders SelVA uses, v1 for 16 kHz and v2 for 44.1 kHz.
VOCODER_BY_MELS = {80: ("bigvgan_v1", 16000), 128: ("bigvgan_v2", 44100)}


def is_pt(path: Path) -> bool:
    return Path(path).suffix.lower() in PT_SUFFIXES


def read_pt(path: Path, what: str) -> Any:
    """The file's object, loaded weights-only; a clear error for anything else."""
    return artifacts.read_pt(path, what, fix="re-save it from the earlier pack's code as plain tensors")


def kind_of(obj: Any) -> str:
    """Which earlier file this object is: ti | vocoder | steering | lora | unknown."""
    if not isinstance(obj, dict):
        return "unknown"
    if "embeddings" in obj and "inject_mode" in obj:
        return "ti"
    if "generator" in obj and isinstance(obj["generator"], dict):
        return "vocoder"
    if "steering_vectors" in obj:
        return "steering"
    if "state_dict" in obj or any(".lora_A" in str(k) for k in obj):
        return "lora"
    return "unknown"


def _expect(obj: Any, kind: str, path: Path, what: str) -> dict:
    if kind_of(obj) != kind:
        raise SelvaError(f"{path} is not an earlier-pack {what} file (it holds "
                         f"{sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__}).")
    return obj


def _info(obj: dict, keys: tuple[str, ...], types: tuple[type, ...]) -> dict[str, Any]:
    """The file's notes on how it was made (the ``keys`` holding ``types``), marked as converted."""
    return {"converted_from": "earlier SelVA pack", **{k: obj[k] for k in keys if isinstance(obj.get(k), types)}}


def read_textual_inversion(path: Path) -> tuple[torch.Tensor, str, str, dict[str, Any]]:
    """(embeddings float32, our path kind, inject_mode, info) of an earlier TI file: its tokens go
    where it trained them (suffix or prefix), as our ``inject_mode`` of the same name."""
    obj = _expect(read_pt(path, "textual inversion"), "ti", Path(path), "textual-inversion")
    emb = obj["embeddings"]
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2:
        raise SelvaError(f"{path}: 'embeddings' is not an (n_tokens, dim) tensor; the file is damaged.")
    inject_mode = str(obj.get("inject_mode", "suffix"))
    kind = unsupported.check_ti(str(path), inject_mode)
    info = _info(obj, ("init_text", "step", "steps", "lr"), (str, int, float))
    return emb.detach().float(), kind, inject_mode, info


# The earlier pack wrapped each residual-block activation in a module holding the activation as
# ``activation`` and its filter as ``gafilter.conv`` (an nn.Conv1d); ours keeps the activation in
# place and attaches the filter as ``gafilter`` with a plain ``weight`` (selva/vocoder_tuning/gafilter.py).
# Both are the same depthwise convolution (odd length, "same" padding, no bias) after the activation.
_EARLIER_GAFILTER = re.compile(r"^(resblocks\.\d+\.activations\.\d+)\.gafilter\.conv\.weight$")
_EARLIER_WRAPPED = re.compile(r"^(resblocks\.\d+\.activations\.\d+)\.activation\.(.+)$")


def _gafilter_names_to_ours(state: dict[str, torch.Tensor], path: Path, kernel: Any) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    filters = 0
    for key, value in state.items():
        m = _EARLIER_GAFILTER.match(key)
        if m:
            if value.dim() != 3 or value.shape[1] != 1 or value.shape[-1] % 2 == 0:
                raise SelvaError(f"{path}: {key} has shape {tuple(value.shape)}, not a depthwise filter "
                                 f"of odd length; the file is damaged.")
            if isinstance(kernel, int) and value.shape[-1] != kernel:
                raise SelvaError(f"{path}: {key} has {value.shape[-1]} taps but the file says "
                                 f"gafilter_kernel_size {kernel}; the file is damaged.")
            new = f"{m.group(1)}.gafilter.weight"
            filters += 1
        else:
            w = _EARLIER_WRAPPED.match(key)
            new = f"{w.group(1)}.{w.group(2)}" if w else key
        if new in out:
            raise SelvaError(f"{path}: {new} is stored twice (wrapped and unwrapped); the file is damaged.")
        out[new] = value
    if not filters:
        raise SelvaError(f"{path} says has_gafilter but holds no GAFilter weights "
                         f"(resblocks.<i>.activations.<j>.gafilter.conv.weight); the file is damaged.")
    return out


def read_vocoder(path: Path) -> tuple[dict[str, torch.Tensor], str, int, int]:
    """(state dict with weight norm folded, vocoder name, sample rate, mel bands); GAFilter layers
    under our names (see :func:`_gafilter_names_to_ours`)."""
    try:
        from ...bigvgan.loading import fold_weight_norm
    except ImportError:  # selva imported as a top-level package (python -m selva)
        from bigvgan.loading import fold_weight_norm

    obj = _expect(read_pt(path, "fine-tuned vocoder"), "vocoder", Path(path), "BigVGAN")
    state = obj["generator"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SelvaError(f"{path}: the 'generator' entry is not a state dict of tensors.")
    if obj.get("has_gafilter"):  # GAFilter layers: their names onto ours (attached when applied)
        state = _gafilter_names_to_ours(state, Path(path), obj.get("gafilter_kernel_size"))
    tensors = fold_weight_norm(state, source=str(path))
    conv_pre = tensors.get("conv_pre.weight")
    if conv_pre is None or conv_pre.dim() != 3 or int(conv_pre.shape[1]) not in VOCODER_BY_MELS:
        raise SelvaError(f"{path} does not hold a BigVGAN generator of SelVA's vocoders (no "
                         f"conv_pre.weight taking 80 or 128 mel bands).")
    mels = int(conv_pre.shape[1])
    name, rate = VOCODER_BY_MELS[mels]
    tensors = {k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in tensors.items()}
    return tensors, name, rate, mels


def read_steering(path: Path) -> tuple[torch.Tensor, list[str], str, dict[str, Any]]:
    """(vectors (n_blocks, positions, hidden) float32, block names, variant, info) of an earlier
    steering file: per-position vectors, which our steering applies as there (conditional branch
    only, resampled to the generation's length)."""
    obj = _expect(read_pt(path, "steering vectors"), "steering", Path(path), "steering")
    vecs = obj["steering_vectors"]
    if (not isinstance(vecs, (list, tuple)) or not vecs
            or not all(isinstance(v, torch.Tensor) and v.dim() == 2 for v in vecs)
            or len({tuple(v.shape) for v in vecs}) != 1):
        raise SelvaError(f"{path}: 'steering_vectors' is not a list of equally shaped (positions, "
                         f"hidden) tensors, one per block; the file is damaged. Extract the vectors "
                         f"again with SelVA Activation Steering Extractor.")
    n_joint = obj.get("n_joint")
    n_fused = obj.get("n_fused", len(vecs) - n_joint if isinstance(n_joint, int) else None)
    if not isinstance(n_joint, int) or not isinstance(n_fused, int) or n_joint + n_fused != len(vecs):
        raise SelvaError(f"{path}: n_joint {n_joint!r} + n_fused {n_fused!r} do not add up to its "
                         f"{len(vecs)} vectors; the file is damaged.")
    vectors = torch.stack([v.detach().float() for v in vecs])
    names = [f"joint_{i}" for i in range(n_joint)] + [f"fused_{i}" for i in range(n_fused)]
    info = _info(obj, ("n_samples", "seed", "latent_seq_len"), (int, float))
    return vectors, names, str(obj.get("variant") or ""), info
