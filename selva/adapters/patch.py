"""A loaded LoRA adapter as a generator patch (see selva/patches.py) at a strength."""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
from torch import nn

from ..errors import SelvaError
from .format import LoraAdapter, load_adapter
from .lora import LoraSet, check_adapter


class LoraPatch:
    """Adds ``strength`` x the adapter's delta to the generator while it runs.

    The frozen weights are built once (on first use, checked against the real generator) and
    follow the generator to whatever device it is on; nothing is written to the generator, and
    strength 0 attaches nothing.
    """

    def __init__(self, adapter: LoraAdapter, strength: float = 1.0) -> None:
        strength = float(strength)
        if not math.isfinite(strength):
            raise SelvaError(f"LoRA strength must be a finite number, got {strength}.")
        self.adapter = adapter
        self.strength = strength
        self._frozen: Optional[LoraSet] = None

    def __repr__(self) -> str:
        return f"LoraPatch({self.adapter.name}, strength={self.strength})"

    @contextlib.contextmanager
    def attach(self, generator: nn.Module) -> Iterator[None]:
        if self.strength == 0:
            yield
            return
        if self._frozen is None:
            self._frozen = LoraSet.from_adapter(self.adapter, generator)
        with self._frozen.attach(generator, self.strength):
            yield


def resolve_adapter(adapter: Optional[LoraAdapter], path: Union[str, Path, None],
                    base_dir: Optional[Path] = None) -> LoraAdapter:
    """The adapter given directly, else the file at ``path`` (relative to ``base_dir``)."""
    if adapter is not None:
        if not isinstance(adapter, LoraAdapter):
            raise SelvaError(f"adapter must be a SELVA_LORA (from the LoRA trainer), got "
                             f"{type(adapter).__name__}.")
        return adapter
    text = str(path or "").strip().strip('"').strip("'").strip()  # quotes as a copied path has them
    if not text:
        raise SelvaError("No adapter: set adapter_path to an adapter file (relative paths start in "
                         "ComfyUI's output folder) or connect a trainer's adapter output.")
    p = Path(text).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return load_adapter(p)


def check_adapter_for(adapter: LoraAdapter, variant: str, generator_config) -> None:
    """Check variant, module names and shapes against a generator built on the meta device
    (no memory, no weights), so a wrong adapter fails at the loader, not mid-sampling."""
    from ..models.generator import SelvaGenerator

    adapter.check_variant(variant)
    with torch.device("meta"):
        skeleton = SelvaGenerator(generator_config)
    check_adapter(adapter, skeleton)
