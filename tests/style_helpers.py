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


# ---------------------------------------------------------------- real-frontend workflow runs
def random_features(variant: str = "tiny_16k", seconds: float = 1.0, seed: int = 0, prompt: str = "a bell"):
    """Features of the right shapes for a tiny variant, without running any encoder."""
    import torch

    import tiny
    from comfyui_selva.selva.features import Features

    spec = {"tiny_16k": tiny.TINY_16K, "tiny_44k": tiny.TINY_44K}[variant]
    seq = spec.seq_lengths(seconds)
    g = torch.Generator().manual_seed(seed)
    return Features(variant=variant, prompt=prompt, duration=seq.duration, fps=25.0,
                    text_t5=torch.randn(1, 4, tiny.T5_DIM, generator=g), text_t5_mask=torch.ones(1, 4),
                    text_clip=torch.randn(1, 77, tiny.CLIP_WIDTH, generator=g),
                    sync_features=torch.randn(1, seq.sync, tiny.SYNC_DIM, generator=g),
                    sync_frames_u8=torch.zeros(1, 224, 224, 3, dtype=torch.uint8))  # never re-encoded


def feature_dataset(folder: Path, clips: int = 2, with_audio: bool = False) -> Path:
    """``clip_NNN.npz`` (+ ``clip_NNN.wav`` with ``with_audio``) for tiny_16k."""
    for i in range(clips):
        random_features(seed=i).save(folder / f"clip_{i:03d}.npz")
        if with_audio:
            write_wav(folder / f"clip_{i:03d}.wav", seconds=1.2, freq=220.0 * (i + 1), seed=i)
    return folder


def _ditto_setup(comfy) -> dict:
    refs = reference_dir(comfy.output_dir / "selva_frontend_style" / "ditto")
    return {"SelvaDittoOptimizer": {"reference_dir": str(refs), "n_opt_steps": 1, "n_ode_steps": 2,
                                    "n_grad_steps": 1}}


def _steering_extract_setup(comfy) -> dict:
    data = feature_dataset(comfy.output_dir / "selva_frontend_style" / "steer_data")
    return {"SelvaActivationSteeringExtractor": {"data_dir": str(data), "n_samples": 2, "n_timesteps": 1,
                                                 "output_path": "selva_frontend_style/steer"}}


def _steering_sample_setup(comfy) -> dict:
    import torch

    from comfyui_selva.selva.style.steering import SteeringVectors

    path = comfy.output_dir / "selva_frontend_style" / "vectors.safetensors"
    if not path.exists():
        names = ["joint_0", "fused_0", "fused_1"]
        SteeringVectors(torch.randn(3, 32), torch.ones(3), torch.ones(3), "tiny_16k", names).save(path)
    return {"SelvaActivationSteeringLoader": {"path": str(path)},
            "SelvaSampler": {"steering_blocks": "top2"}}  # the tiny generator has 3 blocks


def _ti_train_setup(comfy) -> dict:
    data = feature_dataset(comfy.output_dir / "selva_frontend_style" / "ti_data", with_audio=True)
    return {"SelvaTextualInversionTrainer": {"data_dir": str(data), "save_every": 2,
                                             "output_path": "selva_frontend_style/ti"}}


def _ti_sample_setup(comfy) -> dict:
    import torch

    from comfyui_selva.selva.style.textual_inversion import TextualInversion

    path = comfy.output_dir / "selva_frontend_style" / "tokens.safetensors"
    if not path.exists():
        TextualInversion(torch.randn(4, 32), "tiny_16k").save(path)
    return {"SelvaTextualInversionLoader": {"path": str(path)}}


# test_comfyui_frontend.WORKFLOW_SETUP entries for the style templates
FRONTEND_SETUP = {
    "SelVA DITTO Style Transfer": _ditto_setup,
    "SelVA Extract Steering Vectors": _steering_extract_setup,
    "SelVA Sample with Steering Vectors": _steering_sample_setup,
    "SelVA Train Textual Inversion": _ti_train_setup,
    "SelVA Sample with Textual Inversion": _ti_sample_setup,
}
