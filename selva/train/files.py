"""Writing training outputs without ever losing what is already there.

Every file is written to a temporary name in the same folder and moved over the target only
once it is complete (``os.replace`` is atomic on one file system), so a crash or a cancel leaves
either the old file or the new one, never half of one. Run folders are never reused: a new run
gets the next free number.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import wave
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import artifacts as _artifacts
from ..errors import SelvaError


# The one atomic write of the pack (selva/artifacts.py), under the names training uses.
atomic_write = _artifacts.write_atomic
write_json = _artifacts.write_json


def file_digest(path: Path, hasher: Any = None) -> str:
    """Hex digest of a file's bytes (``hasher``: a hashlib object, default 20-byte BLAKE2b)."""
    h = hasher if hasher is not None else hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def save_torch(path: Path, obj: Any) -> Path:
    return atomic_write(path, lambda p: torch.save(obj, p))


def write_wav(path: Path, waveform: torch.Tensor, sample_rate: int) -> Path:
    """16-bit PCM .wav of a (C, T) or (T,) float waveform in [-1, 1]."""
    w = waveform.detach().float().cpu()
    if w.dim() == 1:
        w = w[None]
    pcm = (np.clip(w.numpy().T, -1.0, 1.0) * 32767.0).round().astype("<i2")

    def write(p: Path) -> None:
        with wave.open(str(p), "wb") as f:
            f.setnchannels(pcm.shape[1])
            f.setsampwidth(2)
            f.setframerate(int(sample_rate))
            f.writeframes(pcm.tobytes())

    return atomic_write(path, write)


def check_writable(directory: Path) -> Path:
    """Create ``directory`` and prove a file can be written there, or say why not."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SelvaError(f"Cannot write to the output folder {directory} ({e.strerror or e}). "
                         f"Choose a folder you can write to.") from e
    return directory


def fresh_run_dir(output_dir: Path, name: str) -> Path:
    """``output_dir/<name>_NNN`` with the next free number, created now (never an existing one)."""
    output_dir = check_writable(Path(output_dir))
    while True:
        candidate = _artifacts.next_numbered_path(output_dir, name)
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:  # another process took it meanwhile
            continue


def run_dirs(output_dir: Path, name: str) -> list[Path]:
    """The run folders ``<name>_NNN`` of ``output_dir``, oldest first."""
    return [p for _, p in _artifacts.numbered_paths(output_dir, name) if p.is_dir()]
