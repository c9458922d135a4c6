"""Small in-memory caches of work the pipeline would otherwise repeat on every run.

* :class:`EncodingCache`: a few prompt encodings (a Sampler prompt that differs from the
  features' prompt, negative prompts), keyed by content digests.
* :class:`BackboneCache`: the sync encoder's text-independent backbone tokens of the last clip,
  so a new prompt on the same frames runs only the text cross-attention and the pooling.
* :class:`TokenCache`: backbone tokens of several clips within a byte budget (textual inversion
  on the T5 path re-encodes every clip's sync features at every training step).

The first two are shared by a pipeline and all its views; all are thread-safe.
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


class TokenCache:
    """Backbone tokens of several clips (CPU), least recently used dropped beyond ``max_bytes``.

    An 8 s clip's tokens are about 110 MB in fp32, so a dataset's worth does not always fit:
    whatever is dropped is simply recomputed by the caller (the tokens are a pure function of
    the clip's frames, so a recomputed entry equals the dropped one). ``max_bytes = 0`` keeps
    nothing; an entry larger than the whole budget is not kept either.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 or more, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: "OrderedDict[object, torch.Tensor]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(tokens: torch.Tensor) -> int:
        return tokens.numel() * tokens.element_size()

    def get(self, key: object) -> Optional[torch.Tensor]:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: object, tokens: torch.Tensor) -> None:
        tokens = tokens.detach().cpu()
        size = self._size(tokens)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= self._size(old)
            if size > self.max_bytes:
                return
            self._items[key] = tokens
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= self._size(dropped)

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
