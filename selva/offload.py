"""Where each stage of the pipeline lives, and when it moves: the one place for device/dtype policy.

Strategies:

* ``keep_in_vram``: every stage is moved to the compute device once and stays there.
* ``offload_to_cpu``: stages wait on the CPU as a master copy (pinned memory on CUDA); each use
  uploads a device copy and drops it afterwards (nothing is copied back). Slower, but peak VRAM
  is about one stage.
* ``auto``: ``keep_in_vram`` when the device has at least 16 GB free, else ``offload_to_cpu``.
  On a CPU-only machine ``auto`` keeps every stage loaded.

On a CPU-only machine there is no second memory to offload to, so:

* ``offload_to_cpu`` there means *release after use*: a stage that can be rebuilt is dropped as
  soon as its last user is done, and built again (from the memory-mapped checkpoint) the next
  time it runs. Peak RAM is then about the largest stage plus the working set instead of every
  stage at once; each generation pays for loading its stages again (:func:`releases_after_use`).
* stages that stay loaded (``auto``, ``keep_in_vram``) give back the resident pages of their
  memory-mapped weights whenever they are idle: the weights stay in the kernel's file cache and
  the next use maps them again, at a small cost, so the process does not hold every network's
  pages at once although one runs at a time. What a stage computed at load time (folded weight
  norm, a dtype cast) stays in its memory.
* in both, the heap a stage freed (its activations, a released network) goes back to the
  system after each use instead of staying reserved under the next stage's run
  (:func:`returns_idle_memory`, selva/host_memory.py).

How stages move is delegated to a residency backend (selva/residency.py); ComfyUI plugs in
its own model management there.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from . import host_memory
from .errors import SelvaError
from .precision import PRECISIONS, resolve_dtype  # re-exported: callers read all device policy here
from .residency import MakeRoom, Residency, default_residency, module_bytes

__all__ = ["PRECISIONS", "OFFLOAD_STRATEGIES", "OffloadManager", "Stage", "pick_device",
           "resolve_dtype", "resolve_offload", "check_strategy", "releases_after_use", "returns_idle_memory",
           "free_bytes", "module_bytes"]

log = logging.getLogger(__name__)

OFFLOAD_STRATEGIES = ("auto", "keep_in_vram", "offload_to_cpu")
AUTO_KEEP_MIN_FREE_BYTES = 16 * 1024**3


def pick_device(requested: Optional[str] = None) -> torch.device:
    """``requested`` if given, else CUDA, then Apple MPS, then the CPU."""
    if requested:
        dev = torch.device(requested)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SelvaError(f"Device {requested} was asked for but CUDA is not available.")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise SelvaError(f"Device {requested} was asked for but Apple MPS is not available.")
    elif torch.cuda.is_available():
        dev = torch.device("cuda")
    elif torch.backends.mps.is_available():
        dev = torch.device("mps")
    else:
        dev = torch.device("cpu")
    if dev.type == "mps":
        # Ops MPS lacks (some FFT and interpolation variants) run on the CPU instead of failing.
        os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    return dev


def free_bytes(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "mps":
        try:
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
        except (AttributeError, RuntimeError):
            return None
    return None


def check_strategy(strategy: str) -> None:
    """A clear error for an offload strategy that is not one of :data:`OFFLOAD_STRATEGIES`."""
    if strategy not in OFFLOAD_STRATEGIES:
        raise SelvaError(f"Unknown offload strategy {strategy!r}; choose one of "
                         f"{', '.join(OFFLOAD_STRATEGIES)}.")


def resolve_offload(strategy: str, device: torch.device, free: Optional[int] = None) -> bool:
    """Whether stages should go back to the CPU after running."""
    check_strategy(strategy)
    if device.type == "cpu" or strategy == "keep_in_vram":
        return False
    if strategy == "offload_to_cpu":
        return True
    free = free_bytes(device) if free is None else free
    keep = free is not None and free >= AUTO_KEEP_MIN_FREE_BYTES
    log.info("Offload auto: %s free on %s -> %s", "unknown" if free is None else f"{free / 1024**3:.1f} GB",
             device, "keep_in_vram" if keep else "offload_to_cpu")
    return not keep


def releases_after_use(strategy: str, device: torch.device) -> bool:
    """Whether stages are dropped after each use and rebuilt on the next (``offload_to_cpu`` on a
    CPU-only device, where keeping a "CPU copy" would keep everything)."""
    check_strategy(strategy)  # only the name: resolving "auto" again would query and log twice
    return device.type == "cpu" and strategy == "offload_to_cpu"


def returns_idle_memory(device: torch.device) -> bool:
    """Whether host memory a stage no longer needs goes back to the system after each use
    (selva/host_memory.py): on the CPU, where the mapped pages are the very weights the network
    computes with and its activations are host memory (on an accelerator both live on the
    device)."""
    return device.type == "cpu"


@dataclass
class Stage:
    dtype: torch.dtype
    module: Optional[nn.Module] = None
    build: Optional[Callable[[], nn.Module]] = None  # builds ``module`` on first use
    users: int = 0  # open ``use`` blocks (nested uses share one module)


@dataclass
class OffloadManager:
    """Owns the pipeline's networks; its residency backend decides where they live.

    Stages are registered eagerly (:meth:`add`) or as builders (:meth:`add_lazy`) that run the
    first time the stage is used, so a graph that never samples never loads the generator.
    Where a built stage waits between uses and how it reaches the compute device is the
    ``residency`` backend's business (selva/residency.py): by default :class:`OnDevice` or
    :class:`CpuMaster` as ``offload`` says; a host application passes its own (ComfyUI's model
    management). ``make_room(bytes, device)`` lets a host evict its own models before a
    built-in backend puts a stage on the accelerator. With ``release_after_use`` a rebuildable
    stage is dropped when its last open :meth:`use` block ends (see the module docstring). With
    ``return_idle_memory`` the memory a stage no longer needs goes back to the system then: the
    pages of its memory-mapped weights when it stays built, and the freed heap
    (selva/host_memory.py).
    """

    device: torch.device
    offload: bool
    make_room: Optional[MakeRoom] = None
    stages: dict[str, Stage] = field(default_factory=dict)
    residency: Optional[Residency] = None
    release_after_use: bool = False
    return_idle_memory: bool = False

    def __post_init__(self) -> None:
        if self.residency is None:
            self.residency = default_residency(self.device, self.offload, self.make_room)

    def _adopt(self, name: str, module: nn.Module, dtype: torch.dtype) -> nn.Module:
        # Cast on the CPU where it was built; the backend then moves it (or not).
        module = module.eval().requires_grad_(False).to(dtype=dtype)
        self.residency.adopt(name, module)
        return module

    def add(self, name: str, module: nn.Module, dtype: torch.dtype) -> nn.Module:
        self.forget(name)
        module = self._adopt(name, module, dtype)
        self.stages[name] = Stage(dtype, module)
        return module

    def add_lazy(self, name: str, build: Callable[[], nn.Module], dtype: torch.dtype) -> None:
        self.forget(name)
        self.stages[name] = Stage(dtype, build=build)

    def _stage(self, name: str) -> Stage:
        stage = self.stages.get(name)
        if stage is None:
            raise SelvaError(f"Stage {name!r} is not part of this pipeline.")
        return stage

    def get(self, name: str) -> nn.Module:
        """The stage's module (built now if it was registered lazily), wherever it lives."""
        stage = self._stage(name)
        if stage.module is None:
            log.info("Loading %s", name)
            stage.module = self._adopt(name, stage.build(), stage.dtype)
        return stage.module

    def dtype(self, name: str) -> torch.dtype:
        return self._stage(name).dtype

    def has(self, name: str) -> bool:
        return name in self.stages

    def is_loaded(self, name: str) -> bool:
        return name in self.stages and self.stages[name].module is not None

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[nn.Module]:
        """The stage's module on the compute device for the duration of the block."""
        stage = self._stage(name)
        if self.return_idle_memory and stage.users == 0:
            host_memory.trim_heap()  # what the previous stage's caller freed after it finished
        module = self.get(name)
        stage.users += 1
        try:
            with self.residency.use(name, module):
                yield module
        finally:
            stage.users -= 1
            if stage.users == 0 and stage.module is module:
                if self.release_after_use:
                    self.forget(name)
                elif self.return_idle_memory:
                    host_memory.release_idle_pages(host_memory.module_tensors(module))
                if self.return_idle_memory:
                    host_memory.trim_heap()

    def forget(self, name: str) -> None:
        """Drop one stage's built module (a lazy stage is built again on its next use)."""
        stage = self.stages.get(name)
        if stage is not None and stage.module is not None:
            self.residency.forget(name)
            if stage.build is not None:
                stage.module = None

    def release(self) -> None:
        """Drop every network that can be rebuilt, and free the accelerator's cache.

        A released pipeline stays usable: its stages load again on first use. Stages added as
        ready modules are kept (the backend takes them off the accelerator where it can).
        """
        for name, stage in self.stages.items():
            if stage.build is not None:
                self.forget(name)
        self.residency.release()
        if self.return_idle_memory:
            host_memory.trim_heap()
