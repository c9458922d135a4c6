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


# ------------------------------------------------------------------ inside a real ComfyUI server
def dataset_clip_prompt(variant: str, video: str, audio: str, cache_dir: str, name: str) -> dict:
    """An API prompt: Feature Extractor with ``name`` + ``audio`` saves one dataset clip."""
    return {
        "1": {"class_type": "SelvaModelLoader", "inputs": {"variant": variant, "precision": "fp32",
                                                           "offload_strategy": "auto"}},
        "2": {"class_type": "LoadVideo", "inputs": {"file": video}},
        "3": {"class_type": "LoadAudio", "inputs": {"audio": audio}},
        "4": {"class_type": "SelvaFeatureExtractor", "inputs": {
            "model": ["1", 0], "video": ["2", 0], "prompt": "a bell", "fps": 0.0, "duration": 1.0,
            "cache_dir": cache_dir, "mask_strength": 1.0, "mask_clip": True, "mask_sync": True,
            "name": name, "audio": ["3", 0]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 2]}},
    }


def comfy_dataset(comfy, variant: str, folder: Path, name: str, count: int) -> Path:
    """``count`` clips made by a running ComfyUI into ``folder`` (videos/audio written to its input)."""
    from node_helpers import frames, write_video

    for i in range(count):
        write_video(comfy.input_dir / f"{name}_{i}.mp4", frames(1.2, seed=10 + i), fps=25)
        write_wav(comfy.input_dir / f"{name}_{i}.wav", tone(1.2, 22050, 300.0 + 100 * i), 22050)
        comfy.run(dataset_clip_prompt(variant, f"{name}_{i}.mp4", f"{name}_{i}.wav", str(folder), name))
    return folder
