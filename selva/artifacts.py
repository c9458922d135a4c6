"""What the pack writes for users (steering vectors, embeddings, charts): safe names, atomic writes.

Nothing a user made is overwritten: :func:`next_numbered_path` gives the next number of a
series (run folders, muxed videos), :func:`unique_path` numbers a new name when the wanted one
exists, and every write goes to a temporary file in the same folder that replaces the target
only once complete, so a crash never leaves half a file under the real name.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from .errors import SelvaError


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes owner-only files; what we write for users gets the permissions any new file of
# this process would get (read once: os.umask can only be read by setting it)
_FILE_MODE = 0o666 & ~_process_umask()


def numbered_paths(folder: Path, stem: str, suffix: str = "") -> list[tuple[int, Path]]:
    """Every ``<stem>_<number><suffix>`` in ``folder`` (files and folders) with its number,
    lowest first."""
    pattern = re.compile(re.escape(stem) + r"_(\d+)" + re.escape(suffix) + "$")
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)))


def next_numbered_path(folder: Path, stem: str, suffix: str = "", digits: int = 3,
                       also: Sequence[str] = ()) -> Path:
    """``folder/<stem>_<N><suffix>``, N one above the highest number there (nothing is created).

    One above the highest, not the first gap: a numbered series keeps its order even after
    the user deleted some of it. ``also``: more suffixes whose numbers count as taken (files
    written in sets, like a chart beside its table). The one "next free numbered name" of the
    pack.
    """
    taken = [n for s in (suffix, *also) for n, _ in numbered_paths(folder, stem, s)]
    return Path(folder) / f"{stem}_{max(taken, default=0) + 1:0{digits}d}{suffix}"


def unique_path(path: Path) -> Path:
    """``path`` if nothing is there yet, else the next ``<stem>_00001<suffix>``, ``_00002``, ..."""
    path = Path(path)
    if not path.exists():
        return path
    return next_numbered_path(path.parent, path.stem, path.suffix, digits=5)


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
        os.chmod(tmp, _FILE_MODE)
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


def write_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON, atomically (values JSON cannot hold, like paths, as strings)."""
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str),
                                                         encoding="utf-8"))


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Atomically write ``tensors`` (contiguous CPU tensors) with the string ``metadata`` as given.

    The one safetensors writer of the pack. A tensor viewing part of a larger storage is copied
    (safetensors refuses tensors that share memory); whole tensors are written as they are.
    """
    from safetensors.torch import save_file

    data = {}
    for key, value in tensors.items():
        t = value.detach().to("cpu").contiguous()
        if t.untyped_storage().nbytes() != t.nbytes:
            t = t.clone()
        data[key] = t
    meta = {str(k): str(v) for k, v in metadata.items()}
    return write_atomic(path, lambda tmp: save_file(data, str(tmp), metadata=meta))


def save_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, object]) -> Path:
    """:func:`write_safetensors` with every metadata value stored as JSON, so strings, numbers
    and lists round-trip through :func:`meta_value`."""
    return write_safetensors(path, tensors, {k: json.dumps(v) for k, v in metadata.items()})


def load_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and raw metadata of a safetensors file; a clear error when it is not one.

    The one safetensors reader of the pack (safetensors never runs code from the file).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SelvaError(f"{what} file {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own types for every kind of damage
        raise SelvaError(f"Cannot read {path} as a safetensors {what} file ({e}); the file may "
                         f"be incomplete or of another kind.") from e
    return tensors, meta


def read_pt(path: Path, what: str, *, fix: str = "", mmap: bool = False) -> Any:
    """A PyTorch file's object, read with ``weights_only=True`` onto the CPU (tensors and plain
    containers only: a pickle that would run code is refused before anything in it runs).

    The one ``.pt`` reader of the pack. ``fix``: what to do when the file cannot be read.
    ``mmap``: map the file instead of reading it (large weights); files mmap cannot take (legacy
    non-zip files, some file systems) are then read plainly.
    """
    path = Path(path)
    if not path.is_file():
        raise SelvaError(f"{what} file {path} does not exist.")
    try:
        if mmap:
            with contextlib.suppress(Exception):  # the plain read below says what is wrong, if anything is
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        advice = f" {fix[0].upper()}{fix[1:]}." if fix else ""
        raise SelvaError(f"Cannot read {path} as a {what} file: only plain tensor files load "
                         f"(weights_only=True), and this one is not ({_pt_reason(e)}).{advice}") from e


def _pt_reason(error: Exception) -> str:
    """torch's refusal in a line: it names the code reference the pickle wanted (its full text
    explains how to load such a file unsafely, which a user should not be nudged to do)."""
    text = str(error)
    m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if m:
        return f"it refers to the Python object {m.group(1)}, which a tensor file never needs"
    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if m:
        return f"not a PyTorch file, or a damaged one: {m.group(1).strip()}"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def meta_value(meta: Mapping[str, str], key: str, default=None):
    """A metadata entry decoded from JSON (a plain string from another writer comes back as is)."""
    if key not in meta:
        return default
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        return meta[key]
