"""Which compute precision a device gets: ``auto``, and bf16 where the hardware only emulates it.

``auto`` picks bf16 where the device computes it natively (CUDA GPUs with bf16 support, CPUs with
AVX512-BF16 or AMX, Arm CPUs with the BF16 extension), fp16 on other CUDA GPUs and on Apple MPS,
and fp32 everywhere else. Most desktop and many server CPUs (AVX2 only) emulate bf16 in
software: a bf16 generation there is several times slower than fp32, so an explicit ``bf16`` on
such a CPU runs in fp32 with a warning (as bf16 on a GPU without it runs in fp16).

Device capabilities are read once into a :class:`DeviceCaps`; the choice itself
(:func:`choose_precision`) is a pure function of them, so tests can fake any machine.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .errors import SelvaError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# /proc/cpuinfo flags of CPUs with bf16 arithmetic in hardware (x86: AVX512-BF16, AMX; Arm: BF16)
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# Set to 1 to run an explicit bf16 even where it is emulated (to reproduce bf16 numbers on any
# CPU, slowly); auto never picks emulated bf16.
ALLOW_EMULATED_BF16_ENV = "SELVA_ALLOW_EMULATED_BF16"


@dataclass(frozen=True)
class DeviceCaps:
    """What matters about a device for the choice of precision."""

    type: str  # cuda | mps | cpu | ...
    bf16: bool  # computes bf16 natively (not emulated)
    name: str = ""  # for messages


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux; empty where they cannot be read)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=None)
def _cpu_has_native_bf16() -> bool:
    return bool(cpu_flags() & CPU_BF16_FLAGS)


def device_caps(device: torch.device) -> DeviceCaps:
    if device.type == "cuda":
        return DeviceCaps("cuda", bool(torch.cuda.is_bf16_supported()), f"GPU {device}")
    if device.type == "mps":  # Metal gained bf16 with macOS 14
        return DeviceCaps("mps", bool(torch.backends.mps.is_macos_or_newer(14, 0)), "Apple MPS")
    if device.type == "cpu":
        return DeviceCaps("cpu", _cpu_has_native_bf16(), "this CPU")
    return DeviceCaps(device.type, False, str(device))


def choose_precision(precision: str, caps: DeviceCaps) -> tuple[str, Optional[str]]:
    """(precision to run, a warning to show or None) for the requested ``precision`` on ``caps``."""
    if precision not in PRECISIONS:
        raise SelvaError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if precision == "auto":
        if caps.bf16 and caps.type in ("cuda", "cpu"):
            return "bf16", None
        return ("fp16" if caps.type in ("cuda", "mps") else "fp32"), None
    if precision == "bf16" and not caps.bf16:
        if caps.type == "cpu" and os.environ.get(ALLOW_EMULATED_BF16_ENV) == "1":
            return "bf16", None
        if caps.type in ("cuda", "mps"):
            return "fp16", (f"{caps.name} has no bf16 support: using fp16 instead (overflow-prone "
                            f"parts stay fp32).")
        return "fp32", (f"{caps.name} has no native bf16 arithmetic (no AVX512-BF16 or AMX): bf16 "
                        f"would be emulated, several times slower than fp32, so SelVA runs in fp32. "
                        f"Choose precision auto or fp32 to hide this warning ({ALLOW_EMULATED_BF16_ENV}=1 "
                        f"runs emulated bf16 anyway).")
    return precision, None


_logged: set[tuple[str, str, str]] = set()


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``precision`` on ``device``; the choice is logged once per process."""
    caps = device_caps(device)
    chosen, warning = choose_precision(precision, caps)
    key = (precision, str(device), chosen)
    if warning:
        log.warning("%s", warning)
    elif precision == "auto" and key not in _logged:
        _logged.add(key)
        log.info("Precision auto on %s: %s (%s)", caps.name or device, chosen,
                 "native bf16" if chosen == "bf16" else
                 "no native bf16" if chosen == "fp16" else "no fast half precision")
    return DTYPES[chosen]
