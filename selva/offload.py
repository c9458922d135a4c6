"""Where each stage of the pipeline lives, and when it moves: the one place for device/dtype policy.

Strategies:

* ``keep_in_vram``: every stage is moved to the compute device once and stays there.
* ``offload_to_cpu``: stages wait on the CPU; each moves to the compute device only while it runs,
  then goes back and the accelerator's cache is emptied. Slower, but peak VRAM is one stage.
* ``auto``: ``keep_in_vram`` when the device has at least 16 GB free, else ``offload_to_cpu``.
  On a CPU-only machine both are the same.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from .errors import SelvaError

log = logging.getLogger(__name__)

PRECISIONS = ("bf16", "fp16", "fp32")
OFFLOAD_STRATEGIES = ("auto", "keep_in_vram", "offload_to_cpu")
AUTO_KEEP_MIN_FREE_BYTES = 16 * 1024**3
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``precision`` on ``device`` (bf16 without hardware support -> fp16)."""
    if precision not in _DTYPES:
        raise SelvaError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if precision == "bf16" and not _bf16_supported(device):
        log.warning("%s has no bf16 support: using fp16 instead (overflow-prone parts stay fp32).",
                    device)
        return torch.float16
    return _DTYPES[precision]


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":  # Metal gained bf16 with macOS 14
        return torch.backends.mps.is_macos_or_newer(14, 0)
    return True


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


def resolve_offload(strategy: str, device: torch.device, free: Optional[int] = None) -> bool:
    """Whether stages should go back to the CPU after running."""
    if strategy not in OFFLOAD_STRATEGIES:
        raise SelvaError(f"Unknown offload strategy {strategy!r}; choose one of "
                         f"{', '.join(OFFLOAD_STRATEGIES)}.")
    if device.type == "cpu" or strategy == "keep_in_vram":
        return False
    if strategy == "offload_to_cpu":
        return True
    free = free_bytes(device) if free is None else free
    keep = free is not None and free >= AUTO_KEEP_MIN_FREE_BYTES
    log.info("Offload auto: %s free on %s -> %s", "unknown" if free is None else f"{free / 1024**3:.1f} GB",
             device, "keep_in_vram" if keep else "offload_to_cpu")
    return not keep


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


@dataclass
class Stage:
    dtype: torch.dtype
    module: Optional[nn.Module] = None
    build: Optional[Callable[[], nn.Module]] = None  # builds ``module`` on first use


@dataclass
class OffloadManager:
    """Owns the pipeline's networks and moves them between the CPU and the compute device.

    Stages are registered eagerly (:meth:`add`) or as builders (:meth:`add_lazy`) that run the
    first time the stage is used, so a graph that never samples never loads the generator.
    ``make_room(bytes, device)`` lets a host application (ComfyUI's model management) evict its
    own models before a stage is moved to the accelerator.
    """

    device: torch.device
    offload: bool
    make_room: Optional[Callable[[int, torch.device], None]] = None
    stages: dict[str, Stage] = field(default_factory=dict)

    @property
    def home(self) -> torch.device:
        return torch.device("cpu") if self.offload else self.device

    def _place(self, module: nn.Module, dtype: torch.dtype) -> nn.Module:
        return module.eval().requires_grad_(False).to(self.home, dtype)

    def add(self, name: str, module: nn.Module, dtype: torch.dtype) -> nn.Module:
        module = self._place(module, dtype)
        self.stages[name] = Stage(dtype, module)
        return module

    def add_lazy(self, name: str, build: Callable[[], nn.Module], dtype: torch.dtype) -> None:
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
            module = stage.build()
            if self.home.type != "cpu" and self.make_room is not None:
                # it will stay on the accelerator: let the host evict its own models first
                self.make_room(module_bytes(module, stage.dtype), self.device)
            stage.module = self._place(module, stage.dtype)
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
        module = self.get(name)
        if self.offload:
            if self.make_room is not None:
                self.make_room(module_bytes(module), self.device)
            module.to(self.device)
        try:
            yield module
        finally:
            if self.offload:
                module.to("cpu")
                empty_cache(self.device)

    def release(self) -> None:
        """Drop every network that can be rebuilt, and free the accelerator's cache.

        A released pipeline stays usable: its stages load again on first use (moving them to the
        CPU instead would leave ``keep_in_vram`` stages on the wrong device). Stages added as
        ready modules are kept as they are.
        """
        for stage in self.stages.values():
            if stage.build is not None:
                stage.module = None
        empty_cache(self.device)


def module_bytes(module: nn.Module, dtype: Optional[torch.dtype] = None) -> int:
    """Bytes of the module's tensors (as ``dtype`` for floating-point ones, when given)."""
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        size = torch.empty(0, dtype=dtype).element_size() if dtype and t.is_floating_point() else t.element_size()
        total += t.numel() * size
    return total
