"""LoRA adapters of the earlier pack: metadata names, and PiSSA files turned into plain deltas.

Earlier ``.pt`` adapters are ``{"state_dict": {"<module>.lora_A", "<module>.lora_B", ...},
"meta": {...}}``. Its metadata says ``use_rslora`` (scale ``alpha / sqrt(rank)``), ``init_mode``
(``standard`` | ``pissa``) and ``target``. A PiSSA adapter also holds each adapted layer's
RESIDUAL base weight ``<module>.linear.weight`` (``W - scale * B0 @ A0``, B0/A0 the initial
singular-vector pair) and its bias: there the layer computed ``W_res x + scale * B A x``.

We apply adapters to the ORIGINAL base weights, so a PiSSA adapter becomes, against the loaded
generator's own weight ``W``, the change ``(W_res - W) + scale * B A``: the trained pair plus the
rank-``rank`` pair that factors ``W_res - W`` (its exact rank; computed in float64), a rank-2r
adapter. At strength 1 this is exactly what the earlier pack ran; at strength s it is s times that
change, so strength 0 is the plain base model (the earlier pack kept the residual at strength 0).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import SelvaError

log = logging.getLogger(__name__)

# earlier metadata name -> ours
META_NAMES = {"use_rslora": "rslora", "init_mode": "init", "target": "targets"}
INIT_NAMES = {"standard": "default", "pissa": "pissa"}
# Relative size of the part of W_res - W beyond its top-`rank` singular values above which the
# file's residual was not made from this generator's weights. A residual stored in bf16 leaves
# about 1% (its rounding); another checkpoint's weights leave far more.
_FOREIGN_BASE = 0.1


def translate_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Earlier metadata keys renamed to ours (ours win where a file has both)."""
    out = dict(meta)
    for old, new in META_NAMES.items():
        if old in out:
            out.setdefault(new, out.pop(old))
    if out.get("init") is not None:
        out["init"] = INIT_NAMES.get(str(out["init"]), str(out["init"]))
    return out


def split_residuals(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the LoRA tensors, {"<module>": residual weight}) from an earlier state dict.

    The stored bias is the unchanged base bias (PiSSA never touches it), so it is dropped.
    """
    lora = {k: v for k, v in state.items() if not k.endswith((".linear.weight", ".linear.bias"))}
    residuals = {k[:-len(".linear.weight")]: v for k, v in state.items() if k.endswith(".linear.weight")}
    return lora, residuals


def _top_singular(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-``rank`` singular triplets (u (m, r), s (r,), vh (r, n)). A randomized SVD with a
    few extra directions is exact for a matrix of that rank and far cheaper than a full one on
    the large layers; it draws from its own fixed seed, never from the global random state."""
    m, n = matrix.shape
    if min(m, n) <= rank + 16:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(matrix, q=rank + 16, niter=4)
    return u[:, :rank], s[:rank], v[:, :rank].T


def pissa_against_base(adapter, generator: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """``{module: (down, up, alpha)}``: ``adapter``'s pairs (it holds ``base_residuals``) as plain
    rank-2r ones against ``generator``'s weights; see the module docstring."""
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for name, w in adapter.modules.items():
        residual = adapter.base_residuals.get(name)
        if w.is_conv:
            raise SelvaError(f"{adapter.name}: {name} is a sequence convolution here; the earlier "
                             f"pack's PiSSA only adapted linear layers, so the file does not fit.")
        if residual is None:
            raise SelvaError(f"{adapter.name}: PiSSA adapter without the residual weight of {name} "
                             f"({name}.linear.weight); the file is incomplete. Train it again.")
        try:
            base = generator.get_submodule(name).weight
        except AttributeError:
            raise SelvaError(f"{adapter.name}: module {name} is not in this generator; the adapter "
                             f"was made for a different model.") from None
        if base.is_meta:
            raise SelvaError("A PiSSA adapter needs the generator's real weights to be converted.")
        if tuple(residual.shape) != tuple(base.shape):
            raise SelvaError(f"{adapter.name}: the stored base weight of {name} has shape "
                             f"{tuple(residual.shape)}, this generator's is {tuple(base.shape)}: the "
                             f"adapter was made for a different model.")
        diff = residual.double().cpu() - base.detach().double().cpu()
        rank = w.rank
        u, s, vh = _top_singular(diff, rank)
        total = float(diff.norm())
        rest = float((diff - (u * s) @ vh).norm())
        if total > 0 and rest > _FOREIGN_BASE * total:
            raise SelvaError(f"{adapter.name}: its stored base weight of {name} is not this "
                             f"generator's weight minus a rank-{rank} part (left over: "
                             f"{rest / total:.1%}), so it was trained on different base weights "
                             f"(another variant or checkpoint). Load the model it was trained on.")
        root = s.sqrt()
        down2 = (root[:, None] * vh).to(torch.float32)
        up2 = (u * root / w.scale).to(torch.float32)
        down = torch.cat([w.down.float(), down2], dim=0)
        up = torch.cat([w.up.float(), up2], dim=1)
        modules[name] = (down, up, w.scale * down.shape[0])
    log.info("%s: PiSSA adapter converted against the loaded base weights (%d modules).",
             adapter.name, len(modules))
    return modules


def earlier_adapter_list(items: Any) -> Any:
    """The earlier pack's evaluator lists in the form our LoRA Evaluator reads; others unchanged.

    * ``{"adapters": [{"id", "path", "description"}, ...]}`` (its eval files; an entry without a
      path is the baseline): ``id`` becomes the label.
    * its sweep summary ``experiment_summary.json`` (``{"experiments": [{"id", "adapter_path",
      ...}]}``): every experiment that saved an adapter, labelled by its id.
    """
    if not isinstance(items, dict):
        return items
    if isinstance(items.get("adapters"), list):
        return {**items, "adapters": [
            {**{k: v for k, v in a.items() if k != "id"}, "name": a.get("name", a["id"])}
            if isinstance(a, dict) and "id" in a else a for a in items["adapters"]]}
    if isinstance(items.get("experiments"), list) and "runs" not in items:
        return [{"path": e["adapter_path"], "name": str(e.get("id", ""))} for e in items["experiments"]
                if isinstance(e, dict) and isinstance(e.get("adapter_path"), str) and e["adapter_path"]]
    return items
