"""Small in-memory caches of work the pipeline would otherwise repeat on every run.

One least-recently-used cache (:class:`LruCache`) serves three uses:

* a few prompt encodings (a Sampler prompt that differs from the features' prompt, negative
  prompts), keyed by content digests (``max_items=8``);
* the sync encoder's text-independent backbone tokens of the last clip, so a new prompt on the
  same frames runs only the text cross-attention and the pooling (``max_items=1``, 1 GB);
* backbone tokens of several clips within a byte budget (textual inversion on the T5 path
  re-encodes every clip's sync features at every training step).

The first two are shared by a pipeline and all its views; all are thread-safe.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Hashable, Optional

import torch


def _nbytes(item: Any) -> int:
    return item.nbytes if isinstance(item, torch.Tensor) else 0


class LruCache:
    """Items by key, least recently used dropped first: beyond ``max_items`` entries, or beyond
    ``max_bytes`` of tensor entries in all (None: no such limit). Tensors are kept detached on
    the CPU.

    An 8 s clip's backbone tokens are about 110 MB in fp32, so a dataset's worth does not always
    fit: whatever is dropped is simply recomputed by the caller (the entries are pure functions
    of their keys, so a recomputed entry equals the dropped one). ``max_bytes = 0`` keeps no
    tensor; one larger than the whole budget is not kept either (and still displaces the entry
    it would have replaced).
    """

    def __init__(self, max_items: Optional[int] = None, max_bytes: Optional[int] = None):
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 or more, got {max_bytes}")
        self.max_items = max_items
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self._items: "OrderedDict[Hashable, Any]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Optional[Any]:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: Hashable, item: Any) -> None:
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu()
        size = _nbytes(item)
        with self._lock:
            if key in self._items:
                self._drop(key)
            while self.max_items is not None and self._items and len(self._items) >= self.max_items:
                self._drop(next(iter(self._items)))
            if self.max_bytes is not None and size > self.max_bytes:
                return
            self._items[key] = item
            self._bytes += size
            while self.max_bytes is not None and self._bytes > self.max_bytes:
                self._drop(next(iter(self._items)))

    def _drop(self, key: Hashable) -> None:
        self._bytes -= _nbytes(self._items.pop(key))

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
