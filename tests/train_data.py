"""A synthetic training dataset made with the tiny models: features .npz + same-stem audio."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from comfyui_selva.selva.train.files import write_wav

PROMPTS = ("a dog barking", "rain on the roof", "a car horn", "birds singing")


def video(seconds: float, seed: int, fps: float = 25.0, h: int = 32, w: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(int(round(seconds * fps)), h, w, 3, generator=g)


def tone(seconds: float, rate: int, freq: float, channels: int = 1) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    wave = 0.3 * torch.sin(2 * math.pi * freq * t)
    return wave.expand(channels, -1).clone()


def make_dataset(pipe, folder: Path, clips: int = 3, seconds: float = 1.0, audio_rate: int = 22050,
                 stereo: bool = True) -> Path:
    """``clips`` clips with random videos and tones; audio at another rate, stereo."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        feats = pipe.extract_features(video(seconds, seed=i), 25.0, PROMPTS[i % len(PROMPTS)])
        feats.save(folder / f"clip_{i:03d}.npz")
        write_wav(folder / f"clip_{i:03d}.wav", tone(seconds * 1.2, audio_rate, 220.0 * (i + 1),
                                                     2 if stereo else 1), audio_rate)
    return folder
