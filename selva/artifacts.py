"""What the pack writes for users (steering vectors, embeddings, charts): safe names, atomic writes.

Nothing a user made is overwritten: :func:`unique_path` numbers a new name when the wanted one
exists, and every write goes to a temporary file in the same folder that replaces the target
only once complete, so a crash never leaves half a file under the real name.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from .errors import SelvaError


def unique_path(path: Path) -> Path:
    """``path`` if nothing is there yet, else ``<stem>_00001<suffix>``, ``_00002``, ... (first free)."""
    path = Path(path)
    if not path.exists():
        return path
    for i in range(1, 100000):
        candidate = path.with_name(f"{path.stem}_{i:05d}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise SelvaError(f"Too many files named like {path}; choose another output_path.")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces ``path`` once the block succeeds.

    The temporary name ends in ``path``'s suffix, so writers that pick a format by suffix
    (PyAV, PIL, matplotlib) see the right one; on any failure or interrupt it is removed and
    ``path`` keeps what it had. The one atomic write of the pack: everything else wraps it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary file beside ``path``, then move it onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def save_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, object]) -> Path:
    """Atomically write ``tensors`` (contiguous CPU copies) with string ``metadata``.

    Every metadata value is stored as JSON, so strings, numbers and lists round-trip through
    :func:`meta_value`.
    """
    from safetensors.torch import save_file

    data = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    return write_atomic(path, lambda tmp: save_file(data, str(tmp), metadata=meta))


def load_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and raw metadata of a safetensors file; a clear error when it is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SelvaError(f"{what} file {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise SelvaError(f"{path} is not a readable safetensors {what} file ({e}).") from e
    return tensors, meta


def meta_value(meta: Mapping[str, str], key: str, default=None):
    """A metadata entry decoded from JSON (a plain string from another writer comes back as is)."""
    if key not in meta:
        return default
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        return meta[key]
