"""Synthetic media for the dataset tests, made with PyAV: videos whose sound track holds a tone,
silence or a click at a known time; audio files beside them."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from node_helpers import frames


def sound(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.3,
          click_at: Optional[float] = None, channels: int = 1) -> torch.Tensor:
    """(C, T): a sine (amplitude 0 = silence), plus a full-scale one-sample click at ``click_at``."""
    t = torch.arange(int(round(seconds * rate))) / rate
    wave = amplitude * torch.sin(2 * math.pi * freq * t)
    if click_at is not None:
        wave[int(round(click_at * rate))] = 0.95
    return wave.expand(channels, -1).clone()


def write_av(path: Path, seconds: float, audio: Optional[torch.Tensor] = None, rate: int = 16000,
             seed: int = 0, fps: int = 25) -> Path:
    """An .mkv with random frames and (optionally) ``audio`` (C, T) as lossless PCM sound track."""
    import av

    data = (frames(seconds, fps=fps, seed=seed) * 255).round().to(torch.uint8).numpy()
    with av.open(str(path), "w") as out:
        vs = out.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = data.shape[2], data.shape[1], "yuv420p"
        aus = None
        if audio is not None:
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            aus = out.add_stream("pcm_s16le", rate=rate, layout=layout)
        for img in data:
            for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        if aus is not None:
            pcm = (audio.clamp(-1, 1).numpy() * 32767).round().astype(np.int16)
            step = 1024
            for a in range(0, pcm.shape[1], step):
                chunk = np.ascontiguousarray(pcm[:, a:a + step].T.reshape(1, -1))
                frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout=aus.layout.name)
                frame.sample_rate = rate
                frame.pts = a
                for pkt in aus.encode(frame):
                    out.mux(pkt)
            for pkt in aus.encode(None):
                out.mux(pkt)
        for pkt in vs.encode(None):
            out.mux(pkt)
    return path


def click_time(wave: torch.Tensor, rate: int) -> float:
    """Where the loudest sample is (seconds)."""
    return float(wave.abs().amax(dim=0).argmax()) / rate


def bursts(seconds: float, rate: int, amplitude: float = 0.3, freq: float = 440.0) -> torch.Tensor:
    """(1, T): a tone that stops and starts four times a second over a faint noise floor (a clean
    clip by the Dataset Inspector's measures)."""
    wave = sound(seconds, rate, freq, amplitude)
    t = torch.arange(wave.shape[-1]) / rate
    floor = 1e-4 * torch.randn(wave.shape, generator=torch.Generator().manual_seed(0))
    return wave * ((t * 4).floor() % 2 == 0).float() + floor


# ---------------------------------------------------- the dataset templates in the frontend test
def _folder_setup(comfy) -> dict:
    videos = comfy.output_dir / "selva_frontend_videos"
    videos.mkdir(exist_ok=True)
    write_av(videos / "hum.mkv", 1.2, sound(1.2, 16000, 300.0, 0.3), seed=5)
    return {"SelvaDatasetFromFolder": {"videos_dir": "selva_frontend_videos",
                                       "out_dir": "selva_frontend/made_dataset", "clip_seconds": 1.0}}


def _report_setup(comfy) -> dict:
    from train_data import comfy_dataset

    folder = comfy.output_dir / "selva_frontend_report_dataset"
    if not list(folder.glob("*.npz")):
        comfy_dataset(comfy, "tiny_16k", folder, "clip", 1)
    return {"SelvaDatasetReport": {"dataset_dir": folder.name},
            "SelvaDatasetBrowser": {"dataset_json": folder.name}}


def _chain_setup(comfy) -> dict:
    from comfyui_selva.selva.train.files import write_wav

    folder = comfy.output_dir / "selva_frontend_chain_audio"
    folder.mkdir(exist_ok=True)
    for i in range(2):
        write_wav(folder / f"clip_{i}.wav", bursts(1.0, 22050, freq=300.0 + 200 * i), 22050)
    return {"SelvaDatasetLoader": {"folder": folder.name},
            "SelvaDatasetInspector": {"max_silence_fraction": 0.9},
            "SelvaDatasetSaver": {"output_dir": "selva_frontend/clean_dataset", "npz_source_dir": folder.name}}


FRONTEND_SETUP = {
    "SelVA Make a Dataset from a Folder": _folder_setup,
    "SelVA Inspect a Dataset": _report_setup,
    "SelVA Clean a Dataset Step by Step": _chain_setup,
}
