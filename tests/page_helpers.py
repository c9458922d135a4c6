"""Which pages of a tensor are mapped into this process, read from /proc/self/pagemap (Linux),
independently of selva/host_memory.py."""
from __future__ import annotations

import mmap

import numpy as np
import torch

PAGE = mmap.PAGESIZE


def whole_pages(t: torch.Tensor) -> tuple[int, int]:
    """Page numbers [first, last) of the pages wholly inside ``t``'s bytes."""
    start, end = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
    first = -(-start // PAGE)
    return first, max(first, end // PAGE)


def present_pages(t: torch.Tensor) -> int:
    """How many of the pages wholly inside ``t`` are mapped into this process right now (read
    from /proc/self/pagemap independently of the code under test)."""
    first, last = whole_pages(t)
    if last == first:
        return 0
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        flags = np.frombuffer(f.read((last - first) * 8), dtype="<u8")
    return int(((flags >> np.uint64(63)) & np.uint64(1)).sum())
