"""Host memory an idle network does not need, given back to the system (Linux, CPU).

Two kinds, both of which would otherwise stay counted in the process's memory after a network
ran, although one network runs at a time:

* **Pages of memory-mapped weights.** Checkpoints load memory-mapped (selva/weights.py), and a
  network built on the meta device takes the file's tensors as they are: its weights *are*
  pages of the file. Each page becomes resident the first time it is read and stays so for as
  long as the mapping lives. Dropping a clean page of a file mapping (``madvise(MADV_DONTNEED)``)
  loses nothing: the next read maps it again from the kernel's file cache (measured at ~0.07 s
  per GB on a 2-vCPU VM), or reads it from the file if memory ran short and the kernel let the
  cache go. A page that was written is a private copy-on-write page holding data the file does
  not; dropping it would silently bring back the file's values, so such pages are never dropped:
  ``/proc/self/pagemap`` tells the two kinds apart page by page.
* **Freed heap.** PyTorch's CPU tensors come from the C library's allocator, which keeps memory
  freed in the middle of its heap for later instead of returning it; after a network's
  activations (or a released network) are freed, a second network's run then comes on top of
  the first one's leftovers. ``malloc_trim`` returns those free pages (glibc only).

Elsewhere every function here does nothing.
"""
from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import functools
import math
import mmap
import sys
from typing import Iterable, Optional

import numpy as np
import torch
from torch import nn

PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4  # Linux
# /proc/self/pagemap: one little-endian u64 per virtual page
_PRESENT = np.uint64(1 << 63)
_SWAPPED = np.uint64(1 << 62)
_FILE_OR_SHARED = np.uint64(1 << 61)

Span = tuple[int, int]  # [start, end) virtual addresses


@functools.lru_cache(maxsize=1)
def _c_library() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if hasattr(libc, "malloc_trim"):  # glibc only
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    return libc


def _madvise(start: int, length: int, advice: int) -> None:
    _c_library().madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), advice)


def trim_heap() -> bool:
    """Return the C heap's free pages to the system; False where the C library cannot
    (not glibc, not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = _c_library()
    if not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


def file_mappings() -> list[Span]:
    """Address ranges of this process's file-backed mappings, sorted (empty off Linux)."""
    if not sys.platform.startswith("linux"):
        return []
    spans = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) > 5 and fields[5].startswith("/"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    spans.append((start, end))
    except OSError:
        return []
    return sorted(spans)


def mapping_holding(span: Span, mappings: list[Span]) -> Optional[Span]:
    """The mapping of ``mappings`` (sorted, as :func:`file_mappings` gives them) that holds all
    of ``span``, or None."""
    i = bisect.bisect_right(mappings, (span[0], math.inf)) - 1  # the last one starting at or before
    if i >= 0 and span[1] <= mappings[i][1]:
        return mappings[i]
    return None


def tensor_span(t: torch.Tensor) -> Optional[Span]:
    """The bytes ``t``'s elements occupy (views and strided tensors included), or None when it
    has none or lives on another device than the CPU."""
    if t.device.type != "cpu" or t.is_meta or not t.numel():
        return None
    reach = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))  # strides >= 0
    return t.data_ptr(), t.data_ptr() + (reach + 1) * t.element_size()


def _page_flags(first: int, last: int) -> Optional[np.ndarray]:
    """The pagemap entries of the pages in [first, last), or None when they cannot be read."""
    count = (last - first) // PAGE
    try:
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek(first // PAGE * 8)
            raw = pagemap.read(count * 8)
    except OSError:
        return None
    return np.frombuffer(raw, dtype="<u8") if len(raw) == count * 8 else None


@functools.lru_cache(maxsize=1)
def _pagemap_tells_written_pages() -> bool:
    # A system could hide the flags (all zero) instead of refusing to read them; then a
    # written page would look clean. So check once on a page known to be written.
    probe = ctypes.create_string_buffer(3 * PAGE)
    start = -(-ctypes.addressof(probe) // PAGE) * PAGE
    ctypes.memset(start, 1, PAGE)
    flags = _page_flags(start, start + PAGE)
    return flags is not None and bool(flags[0] & _PRESENT) and not flags[0] & _FILE_OR_SHARED


def _written_pages(first: int, last: int) -> Optional[np.ndarray]:
    """For each page in [first, last): whether it holds data of this process's own (an anonymous
    copy-on-write page, resident or swapped out). None when that cannot be told."""
    if not _pagemap_tells_written_pages():
        return None
    flags = _page_flags(first, last)
    if flags is None:
        return None
    present_anonymous = ((flags & _PRESENT) != 0) & ((flags & _FILE_OR_SHARED) == 0)
    return present_anonymous | ((flags & _SWAPPED) != 0)


def drop_clean_pages(span: Span) -> int:
    """Let the kernel drop the resident pages wholly inside ``span`` (which must lie in one file
    mapping, see :func:`mapping_holding`), except those this process wrote. Returns the bytes
    advised away."""
    first, last = -(-span[0] // PAGE) * PAGE, (span[1] // PAGE) * PAGE
    if last <= first:
        return 0
    written = _written_pages(first, last)
    if written is None:
        return 0  # cannot tell written pages from clean ones: keep them all
    # runs of clean pages: boundaries where `written` changes
    edges = np.flatnonzero(np.diff(np.concatenate(([True], written, [True])).astype(np.int8)))
    dropped = 0
    for a, b in zip(edges[::2], edges[1::2]):
        _madvise(first + int(a) * PAGE, int(b - a) * PAGE, _MADV_DONTNEED)
        dropped += int(b - a) * PAGE
    return dropped


def release_idle_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Drop the resident clean pages of every tensor of ``tensors`` that views a file mapping;
    the tensors stay valid and read back the same values. Returns the bytes advised away."""
    mappings = file_mappings()
    if not mappings:
        return 0
    by_mapping: dict[Span, list[Span]] = {}
    for t in tensors:
        span = tensor_span(t)
        mapping = None if span is None else mapping_holding(span, mappings)
        if mapping is not None:
            by_mapping.setdefault(mapping, []).append(span)
    return sum(drop_clean_pages(span) for spans in by_mapping.values() for span in _merged(spans))


def module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of ``module``."""
    return [*module.parameters(), *module.buffers()]


def _merged(spans: list[Span]) -> list[Span]:
    # Tensors of one checkpoint sit a few header bytes apart: one madvise per run of them. The
    # bytes between two of them are the file's own, so covering them is harmless.
    out: list[Span] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1] + PAGE:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
