"""SelVA's stages under ComfyUI's own model management.

Inside ComfyUI every built stage (T5, CLIP, TextSynchformer, generator, VAE, vocoder, mel, and
any stage registered later such as a tuned ``vocoder:<key>``) is wrapped in a ComfyUI
``ModelPatcher`` carrying the stage's real size, and is loaded through
``comfy.model_management.load_models_gpu`` right before it runs. So ComfyUI sees our stages in
its loaded-model list: "Unload Models" / ``POST /free`` evict them, a later model in the same
graph can push them out when it needs the VRAM, and ``--lowvram`` / ``--novram`` /
``--highvram`` / ``--gpu-only`` apply to them.

A stage is always moved whole: SelVA's layers are plain PyTorch layers, without the per-layer
weight casting ComfyUI's partial loading relies on. Between uses the weights wait in a CPU master
copy (pinned on CUDA, see selva/residency.py); unloading points them back at it, so nothing is
copied back from the GPU. The patcher carries no weight patches (LoRA, steering and tuned
vocoders live on pipeline views and attach at each use), so ComfyUI never rewrites or recasts a
weight: the numbers are exactly those outside ComfyUI.

``offload_strategy`` of the loader maps onto this as follows:

* ``auto``: follow ComfyUI. A stage stays loaded after it ran until ComfyUI needs the room (or is
  told to unload); under ``--lowvram`` / ``--novram`` it is unloaded right after it ran.
* ``keep_in_vram``: a stage stays loaded after it ran until ComfyUI needs the room.
* ``offload_to_cpu``: a stage is unloaded right after it ran (peak VRAM about one stage).

With ``--gpu-only`` (and for the generator with ``--highvram``) ComfyUI's offload device is the
GPU itself, so those stages never leave it; on ``--cpu`` ComfyUI still lists them as loaded.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ..selva.offload import check_strategy
from ..selva.residency import HostCopy, module_bytes
from . import comfy_compat

_EVERYTHING = 1e30  # bytes: more than any device holds, so free_memory unloads all it may


@functools.cache
def stage_patcher_class(base: type) -> type:
    """A ``ModelPatcher`` subclass (of ``base``, made once per base) that loads and unloads one
    whole SelVA stage."""
    class SelvaStagePatcher(base):  # type: ignore[misc, valid-type]
        def __init__(self, stage: str, module: nn.Module, load_device: torch.device,
                     offload_device: torch.device, size: int):
            super().__init__(module, load_device=load_device, offload_device=offload_device, size=size)
            self.stage = stage
            if load_device == offload_device:  # --cpu, --gpu-only: the stage simply lives there
                module.to(load_device)
                self.host: Optional[HostCopy] = None
            else:
                self.host = HostCopy(module, pin=load_device.type == "cuda")

        def is_loaded(self) -> bool:
            return self.host is None or self.host.on_device is not None

        def model_size(self) -> int:
            return self.size

        def loaded_size(self) -> int:
            return self.size if self.is_loaded() else 0

        def current_loaded_device(self) -> torch.device:
            return self.load_device if self.is_loaded() else self.offload_device

        def partially_load(self, device_to: Any, extra_memory: float = 0,
                           force_patch_weights: bool = False) -> int:
            # Whole stages only (see the module docstring): the budget is not split.
            if self.is_loaded():
                return 0
            self.host.upload(torch.device(device_to))
            return self.size

        def partially_unload(self, device_to: Any, memory_to_free: float = 0) -> int:
            return 0  # nothing can go partly: ComfyUI then unloads the stage whole (detach)

        def detach(self, unpatch_all: bool = True) -> nn.Module:
            # ComfyUI calls detach(unpatch_all=False) when it re-lists a loaded model: keep it.
            if unpatch_all and self.host is not None:
                self.host.drop()
            return self.model

    SelvaStagePatcher.__qualname__ = SelvaStagePatcher.__name__
    return SelvaStagePatcher


def _normalised(device: Any) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # ComfyUI compares devices with an index
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class ComfyResidency:
    """SelVA's residency backend (selva/residency.py) inside ComfyUI: see the module docstring."""

    def __init__(self, strategy: str, model_management: Any, patcher_base: type,
                 device: Optional[Any] = None):
        check_strategy(strategy)
        self.strategy = strategy
        self.mm = model_management
        self.device = _normalised(device if device is not None else model_management.get_torch_device())
        self.patcher_class = stage_patcher_class(patcher_base)
        self.patchers: dict[str, Any] = {}
        self._in_use: list[Any] = []

    # -------------------------------------------------------------------------------- policy
    def _offload_device(self, name: str) -> torch.device:
        """Where ComfyUI keeps models of this kind when they are not loaded."""
        kind = name.split(":", 1)[0]
        if kind == "generator":
            return _normalised(self.mm.unet_offload_device())
        if kind in ("vae", "vocoder", "mel"):
            return _normalised(self.mm.vae_offload_device())
        return _normalised(self.mm.text_encoder_offload_device())

    def unloads_after_use(self) -> bool:
        if self.strategy == "offload_to_cpu":
            return True
        if self.strategy == "keep_in_vram":
            return False
        state = getattr(self.mm, "vram_state", None)
        return getattr(state, "name", None) in ("LOW_VRAM", "NO_VRAM")

    # ------------------------------------------------------------------------------ protocol
    def adopt(self, name: str, module: nn.Module) -> None:
        self.forget(name)
        offload_device, size = self._offload_device(name), module_bytes(module)
        if offload_device == self.device and self.device.type != "cpu":
            self.mm.free_memory(size, self.device)  # it goes straight to the GPU and stays there
        self.patchers[name] = self.patcher_class(name, module, self.device, offload_device, size)

    @contextlib.contextmanager
    def use(self, name: str, module: nn.Module) -> Iterator[None]:
        patcher = self.patchers.get(name)
        if patcher is None or patcher.model is not module:
            self.adopt(name, module)
            patcher = self.patchers[name]
        nested = patcher in self._in_use
        self._in_use.append(patcher)
        patcher.size = module_bytes(module)  # buffers follow the clip (the generator's rotary tables)
        try:
            # Stages already running (an outer use) are listed too, so that making room for this
            # one cannot leave them off the device.
            self.mm.load_models_gpu(list(dict.fromkeys(self._in_use)), force_full_load=True)
            yield
        finally:
            self._in_use.pop()
            patcher.size = module_bytes(module)
            if not nested and self.unloads_after_use():
                self._unload(patcher)

    def forget(self, name: str) -> None:
        patcher = self.patchers.pop(name, None)
        if patcher is not None:
            self._unload(patcher)

    def release(self) -> None:
        for patcher in self.patchers.values():
            self._unload(patcher)
        self.mm.soft_empty_cache()

    def _unload(self, patcher: Any) -> None:
        """Take one stage out of ComfyUI's loaded-model list (and off the GPU).

        Through ComfyUI's public calls only: ``free_memory`` asked for more than any device has,
        keeping every other loaded model, unloads exactly this one (and never touches another
        device); a stage ComfyUI does not list is simply detached.
        """
        listed = self.mm.loaded_models()
        if not any(m is patcher for m in listed):
            patcher.detach()
            return
        keep = [self.mm.LoadedModel(m) for m in listed if m is not patcher]
        self.mm.free_memory(_EVERYTHING, patcher.load_device, keep_loaded=keep)


def comfy_residency(strategy: str) -> Optional[ComfyResidency]:
    """The ComfyUI backend when running inside ComfyUI, else None (the core's own policy)."""
    mm = comfy_compat.model_management
    base = comfy_compat.ModelPatcher
    if mm is None or base is None or not hasattr(mm, "load_models_gpu"):
        return None
    return ComfyResidency(strategy, mm, base)
