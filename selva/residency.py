"""Where a stage's weights wait between uses, and how they reach the compute device.

The :class:`~selva.offload.OffloadManager` builds stages and hands each built module to a
*residency backend* (:class:`Residency`). Two backends live here, for use outside any host
application:

* :class:`OnDevice` (``keep_in_vram``): the module moves to the compute device once and stays.
* :class:`CpuMaster` (``offload_to_cpu``): the module's tensors stay on the CPU (in pinned memory
  on CUDA, so uploads are asynchronous) as the *master copy*; each use uploads a device copy and
  drops it afterwards. Dropping costs nothing: the parameters point back at the master tensors,
  no weights are copied back and no CPU memory is allocated anew.

A host with its own memory manager plugs in its own backend (ComfyUI's lives in
``nodes/model_management.py``); :class:`HostCopy` is the shared piece that uploads and drops one
module's device copy.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator, Optional, Protocol, runtime_checkable

import torch
from torch import nn

log = logging.getLogger(__name__)

MakeRoom = Callable[[int, torch.device], None]


@runtime_checkable
class Residency(Protocol):
    """A policy for where built stages live. ``device`` is where stages run."""

    device: torch.device

    def adopt(self, name: str, module: nn.Module) -> None:
        """``module`` was just built (eval mode, no grad, in its dtype, on the CPU): put it where
        it waits between uses. Called again with a new module when a stage is rebuilt."""
        ...

    def use(self, name: str, module: nn.Module) -> ContextManager[None]:
        """``module``'s weights on :attr:`device` for the duration of the block."""
        ...

    def forget(self, name: str) -> None:
        """The stage's module is being dropped (released or replaced): let go of it."""
        ...

    def release(self) -> None:
        """Take every stage off the accelerator it can and return cached memory."""
        ...


def module_bytes(module: nn.Module, dtype: Optional[torch.dtype] = None) -> int:
    """Bytes of the module's tensors (as ``dtype`` for floating-point ones, when given)."""
    return sum(t.numel() * dtype.itemsize if dtype and t.is_floating_point() else t.nbytes
               for t in (*module.parameters(), *module.buffers()))


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _pinned(t: torch.Tensor) -> torch.Tensor:
    try:
        return t.pin_memory()
    except RuntimeError as e:  # out of pinnable memory: a plain copy still works, only slower
        log.debug("Could not pin a %s tensor (%s); keeping it pageable.", tuple(t.shape), e)
        return t


def _version(t: torch.Tensor) -> Optional[int]:
    # Inference tensors (made inside torch.inference_mode, as ComfyUI runs nodes) keep no
    # version counter; they cannot be trained in place either, so there is nothing to write back.
    if t.is_inference():
        return None
    return t._version


@dataclass
class _Slot:
    owner: nn.Module
    name: str
    is_param: bool
    master: torch.Tensor
    installed: Optional[torch.Tensor] = None  # the device copy now in the slot
    version: Optional[int] = None  # the slot's version counter right after the upload


@dataclass
class HostCopy:
    """One module's CPU master copy, with an optional device copy uploaded on demand.

    :meth:`upload` points every parameter and buffer at a device copy of its master tensor;
    :meth:`drop` points them back. A tensor changed in place while on the device (a training
    step outside inference mode) is written back to the master first; a buffer the module
    registered anew while on the device (the generator's rotary tables for a new duration)
    becomes the master from then on. Parameter objects keep their identity throughout, so
    hooks and patches attached to the module are not disturbed.
    """

    module: nn.Module
    pin: bool = False
    on_device: Optional[torch.device] = None
    _slots: list[_Slot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.module.to("cpu")
        self._slots = self._collect()

    def _collect(self) -> list[_Slot]:
        slots = []
        for owner in self.module.modules():
            for table, is_param in ((owner._parameters, True), (owner._buffers, False)):
                for name, t in table.items():
                    if t is None:
                        continue
                    master = t.data if is_param else t
                    if self.pin and not master.is_pinned():
                        master = _pinned(master)
                        self._assign(owner, name, is_param, master)
                    slots.append(_Slot(owner, name, is_param, master))
        return slots

    @staticmethod
    def _assign(owner: nn.Module, name: str, is_param: bool, t: torch.Tensor) -> None:
        if is_param:
            param = owner._parameters[name]
            if torch._has_compatible_shallow_copy_type(param, t):
                param.data = t  # the Parameter object stays: hooks and references hold
            else:  # e.g. the meta device; nn.Module.to() replaces the Parameter there too
                owner._parameters[name] = nn.Parameter(t, requires_grad=param.requires_grad)
        else:
            owner._buffers[name] = t

    @staticmethod
    def _current(slot: _Slot) -> Optional[torch.Tensor]:
        table = slot.owner._parameters if slot.is_param else slot.owner._buffers
        return table.get(slot.name)

    def nbytes(self) -> int:
        return sum(s.master.nbytes for s in self._slots)

    def upload(self, device: torch.device) -> None:
        """Make the device copy (nothing to do when it is there already). Callers skip this for
        the CPU, where the master copy itself is usable; here a CPU copy is made if asked for."""
        if self.on_device is not None:
            return
        self._slots = self._collect()  # tensors the module gained or lost while on the CPU
        for slot in self._slots:
            copy = slot.master.to(device, non_blocking=slot.master.is_pinned(), copy=True)
            self._assign(slot.owner, slot.name, slot.is_param, copy)
            slot.installed = copy
            slot.version = _version(self._current(slot))  # the slot just assigned: never empty
        self.on_device = device

    def drop(self) -> None:
        """Point every tensor back at its master copy; the device copy is freed."""
        if self.on_device is None:
            return
        for slot in self._slots:
            current = self._current(slot)
            if current is None:  # removed while on the device: forgotten at the next upload
                continue
            if self._replaced(slot, current):
                slot.master = current.detach().to("cpu")
                if self.pin:
                    slot.master = _pinned(slot.master)
            elif slot.version is not None and _version(current) != slot.version:
                slot.master.copy_(current.detach())  # changed in place: keep the change
            self._assign(slot.owner, slot.name, slot.is_param, slot.master)
            slot.installed = None
        self.on_device = None

    def _replaced(self, slot: _Slot, current: torch.Tensor) -> bool:
        if slot.is_param:
            return current.data_ptr() != slot.installed.data_ptr() or current.device != slot.installed.device
        return current is not slot.installed


class OnDevice:
    """``keep_in_vram``: every stage moves to the compute device once and stays there."""

    def __init__(self, device: torch.device, make_room: Optional[MakeRoom] = None):
        self.device = device
        self.make_room = make_room

    def adopt(self, name: str, module: nn.Module) -> None:
        if self.device.type != "cpu":
            if self.make_room is not None:  # it will stay: let the host evict its own models first
                self.make_room(module_bytes(module), self.device)
            module.to(self.device)

    @contextlib.contextmanager
    def use(self, name: str, module: nn.Module) -> Iterator[None]:
        yield

    def forget(self, name: str) -> None:
        pass

    def release(self) -> None:
        empty_cache(self.device)


class CpuMaster:
    """``offload_to_cpu``: a CPU master copy (pinned on CUDA); a device copy exists only while the
    stage runs. The cache is not emptied after each use: the allocator hands the freed blocks to
    the next stage, so peak VRAM is still about one stage."""

    def __init__(self, device: torch.device, make_room: Optional[MakeRoom] = None,
                 pin: Optional[bool] = None):
        self.device = device
        self.make_room = make_room
        self.pin = device.type == "cuda" if pin is None else pin
        self.copies: dict[str, HostCopy] = {}

    def adopt(self, name: str, module: nn.Module) -> None:
        self.copies[name] = HostCopy(module, pin=self.pin)

    @contextlib.contextmanager
    def use(self, name: str, module: nn.Module) -> Iterator[None]:
        copy = self.copies.get(name)
        if copy is None or copy.module is not module:
            self.adopt(name, module)
            copy = self.copies[name]
        if copy.on_device is not None or self.device.type == "cpu":
            yield  # nested use of the same stage, or the master copy is already where it runs
            return
        if self.make_room is not None:
            self.make_room(copy.nbytes(), self.device)
        copy.upload(self.device)
        try:
            yield
        finally:
            copy.drop()

    def forget(self, name: str) -> None:
        copy = self.copies.pop(name, None)
        if copy is not None:
            copy.drop()

    def release(self) -> None:
        for copy in self.copies.values():
            copy.drop()
        empty_cache(self.device)


def default_residency(device: torch.device, offload: bool,
                      make_room: Optional[MakeRoom] = None) -> Residency:
    """The built-in backend for a resolved offload decision (see ``resolve_offload``)."""
    return CpuMaster(device, make_room) if offload else OnDevice(device, make_room)
