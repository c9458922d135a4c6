"""Reference audio and feature datasets for the style tests (DITTO, steering)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_wav(path: Path, seconds: float = 0.6, rate: int = 16000, freq: float = 440.0,
              seed: int = 0, channels: int = 1) -> Path:
    """A harmonic tone with a little noise, as 16-bit PCM."""
    from scipy.io import wavfile

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 5))
    wave = 0.3 * tone / 2 + 0.02 * rng.standard_normal(t.shape)
    data = np.stack([wave] * channels, axis=-1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(str(path), rate, (data * 32767).astype(np.int16))
    return path


def reference_dir(root: Path, n: int = 3) -> Path:
    """A folder of a few tones (one nested, one stereo at 22.05 kHz) for DITTO's reference set."""
    folder = root / "refs"
    write_wav(folder / "a.wav", freq=330.0, seed=1)
    write_wav(folder / "nested" / "b.wav", freq=660.0, seed=2, rate=22050, channels=2)
    for i in range(2, n):
        write_wav(folder / f"c{i}.wav", freq=220.0 * i, seed=i)
    return folder
