"""Reading BigVGAN files safely and loading state dicts strictly, for this package alone.

Files are read with ``torch.load(weights_only=True)``: a pickle that would run code is refused.
A state dict must match its network in every key and shape before anything is written, so a
wrong file never leaves a half-loaded network behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from .errors import BigVGANError

PathLike = Union[str, os.PathLike]
SHOWN = 5  # keys listed per kind of problem


def preview(items: Iterable[str], limit: int = SHOWN) -> str:
    """The first ``limit`` items, sorted, and how many more there are."""
    items = sorted(items)
    return ", ".join(items[:limit]) + (f", +{len(items) - limit} more" if len(items) > limit else "")


def read_checkpoint(path: PathLike) -> Any:
    """What a ``.pt`` file holds, read with ``weights_only=True`` onto the CPU (memory-mapped
    where the file allows it)."""
    path = Path(path)
    if not path.is_file():
        raise BigVGANError(f"Checkpoint not found: {path}. Download it again or check the path.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as first:  # mmap fails on legacy (non-zip) files and some file systems
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise BigVGANError(f"Cannot read {path}: {e}. The file is probably truncated or "
                               f"corrupt, or not a plain weights file.") from first


def _problems(module: nn.Module, state: Mapping[str, Any]) -> Optional[str]:
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    kinds = {
        "missing key": sorted(want.keys() - got.keys()),
        "unexpected key": sorted(got.keys() - want.keys()),
        "wrong shape": [f"{k} (file {got[k]}, network {want[k]})"
                        for k in sorted(want.keys() & got.keys()) if got[k] != want[k]],
    }
    parts = [f"{len(keys)} {kind}{'' if len(keys) == 1 else 's'}: {preview(keys)}"
             for kind, keys in kinds.items() if keys]
    return "; ".join(parts) or None


def load_strict(module: nn.Module, state: Any, *, source: str, what: str,
                hint: Optional[str] = None) -> None:
    """Load ``state`` into ``module`` with ``strict=True`` once every key and shape is checked.

    A module on the meta device takes the tensors as they are (``assign=True``).
    """
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BigVGANError(f"{source} is not a state dict of tensors, so it cannot be the {what}.")
    report = _problems(module, state)
    if report:
        raise BigVGANError(f"{source} does not fit the {what}: {report}. {hint + ' ' if hint else ''}"
                           f"Check that it is the file this model needs, and complete.")
    on_meta = any(t.is_meta for t in module.state_dict().values())
    if not on_meta and any(v.is_meta for v in state.values()):
        raise BigVGANError(f"{source}: the state dict holds no data (meta tensors), so it cannot "
                           f"fill a real {what} network.")
    module.load_state_dict(state, strict=True, assign=on_meta)
