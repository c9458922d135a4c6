"""Everything the sampler needs from a video and a prompt, and its on-disk cache.

A :class:`Features` holds the encoder outputs for one clip (T5 and CLIP text features of the
prompt, the text-conditioned sync features, optional CLIP frame features) plus the 25 fps sync
frames as uint8. SelVA's sync features depend on the prompt, so keeping the frames lets the
sampler re-encode them when it is given a different prompt, without touching the video again.
Saved as ``.npz`` (no pickles: plain arrays and a JSON header).

:class:`FeatureCache` keeps such files (compressed) under their cache key, with a size cap and
least-recently-used eviction; ``python -m selva cache --info | --prune`` shows and trims it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from .artifacts import write_atomic
from .errors import SelvaError

log = logging.getLogger(__name__)

FORMAT = "selva-features"
FORMAT_VERSION = 1
_REQUIRED = ("text_t5", "text_t5_mask", "text_clip", "sync_features", "sync_frames_u8")
_TENSORS = _REQUIRED + ("clip_features", "sync_mask")
_HEADER = ("variant", "prompt", "duration", "fps")  # header fields without a default


@dataclass
class Features:
    variant: str
    prompt: str
    duration: float  # seconds the features cover
    fps: float  # frame rate of the source video
    text_t5: torch.Tensor  # (1, L, 768) T5 features of ``prompt``, no supplementary tokens
    text_t5_mask: torch.Tensor  # (1, L) 1 where ``text_t5`` holds a real token
    text_clip: torch.Tensor  # (1, 77, 1024) per-token CLIP text features of ``prompt``
    sync_features: torch.Tensor  # (1, S * 8, 768) TextSynchformer output for ``prompt``
    sync_frames_u8: torch.Tensor  # (T, 224, 224, 3) the 25 fps frames the sync features came from
    clip_features: Optional[torch.Tensor] = None  # (1, Tc, 1024) CLIP frame features, if used
    sync_mask: Optional[torch.Tensor] = None  # (1 | T, 224, 224) mask applied to the sync frames
    mask_strength: float = 1.0
    start: float = 0.0  # seconds into the video where the features begin (muxing needs it)

    @property
    def has_video(self) -> bool:
        """False for text-only features (text to audio): no frames and no sync features."""
        return self.sync_frames_u8.shape[0] > 0

    def save(self, path: Path, *, compress: bool = False) -> None:
        """Write atomically: a reader never sees a half-written file, an old one stays until done.

        ``compress`` deflates the arrays (the cache does; about half the size for features).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: _to_numpy(getattr(self, name)) for name in _TENSORS
                  if getattr(self, name) is not None}
        header = {"format": FORMAT, "version": FORMAT_VERSION, "variant": self.variant,
                  "prompt": self.prompt, "duration": self.duration, "fps": self.fps,
                  "mask_strength": self.mask_strength, "start": self.start}
        arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        save = np.savez_compressed if compress else np.savez

        def write(tmp: Path) -> None:
            # Through a file object: given a name, numpy appends ".npz" when it lacks that suffix.
            with open(tmp, "wb") as f:
                save(f, **arrays)

        write_atomic(path, write)

    @classmethod
    def load(cls, path: Path) -> "Features":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(bytes(data["header"]).decode("utf-8"))
                arrays = {k: torch.from_numpy(np.array(data[k])) for k in _TENSORS if k in data.files}
        except FileNotFoundError:
            raise SelvaError(f"Features file {path} does not exist.") from None
        except Exception as e:
            raise SelvaError(f"{path} is not a readable SelVA features file ({e}); extract the "
                             f"features again.") from e
        if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
            raise SelvaError(f"{path} is not a SelVA features file of version {FORMAT_VERSION} "
                             f"(found {header.get('format')} v{header.get('version')}); extract "
                             f"the features again.")
        missing = [name for name in _REQUIRED if name not in arrays]
        missing += [name for name in _HEADER if name not in header]
        if missing:
            raise SelvaError(f"{path} lacks {', '.join(missing)}; extract the features again.")
        return cls(variant=header["variant"], prompt=header["prompt"],
                   duration=float(header["duration"]), fps=float(header["fps"]),
                   mask_strength=float(header.get("mask_strength", 1.0)),
                   start=float(header.get("start", 0.0)), **arrays)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.is_floating_point():
        t = t.float()  # bf16 has no numpy dtype; fp32 holds bf16/fp16 values exactly
    return t.numpy()


# ----------------------------------------------------------------------------- cache keys
def content_hash(parts: Iterable[Any]) -> str:
    """A digest of every byte of every part (tensors by dtype, shape and full content)."""
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.dtype == torch.bfloat16:
                t = t.view(torch.int16)
            h.update(memoryview(t.numpy()).cast("B"))
        elif isinstance(part, np.ndarray):
            a = np.ascontiguousarray(part)
            h.update(f"N{a.dtype}{a.shape}".encode())
            h.update(memoryview(a).cast("B"))
        else:
            h.update(("V" + json.dumps(part, sort_keys=True, default=str)).encode())
        h.update(b"|")
    return h.hexdigest()


# ---------------------------------------------------------------------------------- cache
CACHE_MAX_ENV = "SELVA_FEATURE_CACHE_GB"
DEFAULT_CACHE_MAX_GB = 4.0
GB = 1024**3
# Only files named like a cache key are entries: anything else in the folder is not ours to evict.
_ENTRY = re.compile(r"^[0-9a-f]{40}\.npz$")


def default_cache_dir() -> Path:
    """``<system temp>/selva_features``: where the ComfyUI Feature Extractor caches by default."""
    return Path(tempfile.gettempdir()) / "selva_features"


def cache_max_bytes(max_gb: Optional[float] = None) -> int:
    """The size cap: ``max_gb`` if given, else ``$SELVA_FEATURE_CACHE_GB``, else 4 GB."""
    if max_gb is None:
        text = os.environ.get(CACHE_MAX_ENV, "").strip()
        try:
            max_gb = float(text) if text else DEFAULT_CACHE_MAX_GB
        except ValueError:
            raise SelvaError(f"{CACHE_MAX_ENV}={text!r} is not a number of gigabytes (e.g. 4 or 0.5).") from None
    if not 0 <= max_gb < math.inf:
        raise SelvaError(f"The feature cache size cap must be a finite number of GB, 0 GB or more, "
                         f"got {max_gb}.")
    return int(max_gb * GB)


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size: int
    last_used: float  # seconds since the epoch (the file's modification time, renewed on each hit)


@dataclass(frozen=True)
class CacheInfo:
    directory: Path
    entries: int
    total_bytes: int
    max_bytes: int
    set_aside: int  # unreadable entries renamed *.corrupt (kept for inspection, not counted)

    def describe(self) -> str:
        return (f"{self.directory}: {self.entries} entries, {self.total_bytes / 1024**2:.1f} MB of "
                f"{self.max_bytes / 1024**2:.0f} MB allowed"
                + (f"; {self.set_aside} unreadable entries set aside (*.corrupt)" if self.set_aside else ""))


class FeatureCache:
    """Features on disk, one compressed ``<key>.npz`` per entry, at most ``max_bytes`` in all.

    When a new entry makes the folder exceed the cap, the least recently used entries are
    removed (a hit counts as a use). Only files named like a key are ever removed. A cache must
    never break a run: an unreadable entry is set aside (renamed ``*.corrupt``, so nothing is
    destroyed) and recomputed; an unwritable directory only costs the cache.
    """

    def __init__(self, directory: Path, max_bytes: Optional[int] = None):
        self.directory = Path(directory)
        self.max_bytes = cache_max_bytes() if max_bytes is None else int(max_bytes)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def get(self, key: str) -> Optional[Features]:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            features = Features.load(path)
        except SelvaError as e:
            log.warning("Ignoring unreadable feature cache entry %s (%s); recomputing.", path, e)
            with contextlib.suppress(OSError):
                os.replace(path, path.with_suffix(".corrupt"))
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # the modification time is the last use (atime is often not kept)
        return features

    def put(self, key: str, features: Features) -> Optional[Path]:
        path = self.path(key)
        try:
            features.save(path, compress=True)
        except OSError as e:
            log.warning("Could not write the feature cache %s (%s); continuing without caching.",
                        path, e)
            return None
        self.prune(keep=path)
        return path

    def entries(self) -> list[CacheEntry]:
        """Every entry, least recently used first."""
        found = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        for name in names:
            if not _ENTRY.match(name):
                continue
            try:
                st = os.stat(self.directory / name)
            except OSError:  # removed meanwhile (another process pruning)
                continue
            found.append(CacheEntry(self.directory / name, st.st_size, st.st_mtime))
        return sorted(found, key=lambda e: (e.last_used, e.path.name))

    def info(self) -> CacheInfo:
        entries = self.entries()
        try:
            aside = sum(1 for n in os.listdir(self.directory) if n.endswith(".corrupt"))
        except OSError:
            aside = 0
        return CacheInfo(self.directory, len(entries), sum(e.size for e in entries), self.max_bytes, aside)

    def prune(self, keep: Optional[Path] = None) -> list[Path]:
        """Remove least recently used entries until the cache fits its cap. ``keep`` (the entry
        just written) stays even if it alone is larger."""
        entries = self.entries()
        total = sum(e.size for e in entries)
        removed = []
        for entry in entries:
            if total <= self.max_bytes:
                break
            if keep is not None and entry.path == keep:
                continue
            try:
                entry.path.unlink(missing_ok=True)
            except OSError as e:
                log.warning("Could not remove the feature cache entry %s (%s).", entry.path, e)
                continue
            total -= entry.size
            removed.append(entry.path)
        if removed:
            log.info("Feature cache %s: removed %d least recently used entries (cap %.1f MB)",
                     self.directory, len(removed), self.max_bytes / 1024**2)
        return removed
