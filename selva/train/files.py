"""Writing training outputs without ever losing what is already there.

Every file is written to a temporary name in the same folder and moved over the target only
once it is complete (``os.replace`` is atomic on one file system), so a crash or a cancel leaves
either the old file or the new one, never half of one. Run folders are never reused: a new run
gets the next free number.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import wave
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from ..errors import SelvaError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) that replaces ``path`` on success."""
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


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` and move the result to ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: Path, data: Any) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, default=str)))


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
    pattern = re.compile(re.escape(name) + r"_(\d+)$")
    taken = [int(m.group(1)) for p in output_dir.iterdir() if (m := pattern.match(p.name))]
    number = max(taken, default=0) + 1
    while True:
        candidate = output_dir / f"{name}_{number:03d}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:  # another process took it meanwhile
            number += 1


def numbered_file(directory: Path, stem: str, suffix: str) -> Path:
    """``directory/<stem>_NNN<suffix>`` with the next free number (the file is not created)."""
    directory = Path(directory)
    pattern = re.compile(re.escape(stem) + r"_(\d+)" + re.escape(suffix) + "$")
    taken = [int(m.group(1)) for p in directory.glob(f"{stem}_*{suffix}") if (m := pattern.match(p.name))]
    return directory / f"{stem}_{max(taken, default=0) + 1:03d}{suffix}"


def latest_run_dir(output_dir: Path, name: str) -> Optional[Path]:
    pattern = re.compile(re.escape(name) + r"_(\d+)$")
    runs = [(int(m.group(1)), p) for p in Path(output_dir).glob(f"{name}_*")
            if p.is_dir() and (m := pattern.match(p.name))]
    return max(runs)[1] if runs else None
