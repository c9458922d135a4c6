"""Small in-memory caches of work the pipeline would otherwise repeat on every run.

* :class:`EncodingCache`: a few prompt encodings (a Sampler prompt that differs from the
  features' prompt, negative prompts), keyed by content digests.
* :class:`BackboneCache`: the sync encoder's text-independent backbone tokens of the last clip,
  so a new prompt on the same frames runs only the text cross-attention and the pooling.

Both are shared by a pipeline and all its views, and thread-safe.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional

import torch


class EncodingCache:
    """The last few prompt encodings (CPU tensors by content key), least recently used dropped."""

    def __init__(self, size: int = 8):
        self.size = size
        self._items: "OrderedDict[str, dict]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Optional[dict]:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, item: dict) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class BackboneCache:
    """The sync encoder's backbone tokens of the last clip (CPU), if not too large."""

    def __init__(self, max_bytes: int = 1024**3):
        self.max_bytes = max_bytes
        self._key: Optional[str] = None
        self._tokens: Optional[torch.Tensor] = None
        self._lock = threading.Lock()

    def get(self, key: str) -> Optional[torch.Tensor]:
        with self._lock:
            return self._tokens if key == self._key else None

    def put(self, key: str, tokens: torch.Tensor) -> None:
        size = tokens.numel() * tokens.element_size()
        with self._lock:
            self._key, self._tokens = (key, tokens.detach().cpu()) if size <= self.max_bytes else (None, None)

    def clear(self) -> None:
        with self._lock:
            self._key, self._tokens = None, None
