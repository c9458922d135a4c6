"""Shared by the vocoder-tuning tests: small audio folders and BigVGAN discriminator files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def write_tone(path: Path, seconds: float = 1.0, rate: int = 22050, freq: float = 440.0,
               channels: int = 1, codec: str = "pcm_s16le") -> Path:
    """A short tone (with a little noise, so every band has energy) written with PyAV."""
    import av

    rng = np.random.default_rng(int(freq))
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)
    data = np.repeat(mono[None].astype(np.float32), channels, axis=0)
    layout = "mono" if channels == 1 else "stereo"
    path.parent.mkdir(parents=True, exist_ok=True)
    interleaved = (data.T.reshape(1, -1) * 32767).astype(np.int16)  # packed s16: (1, T * channels)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def audio_folder(root: Path) -> Path:
    """Two clips at other rates than the vocoders', one in a sub-folder."""
    write_tone(root / "a.wav", 1.0, 22050, 440.0)
    write_tone(root / "sub" / "b.wav", 0.6, 48000, 1250.0)
    return root


# The convolutions NVIDIA's discriminators.py wraps in weight_norm (its other convs are plain):
# every conv of the MPD and the MRD; in the CQT discriminator all but conv_pres.* and convs.0.
def release_weight_normed(key: str, second: str) -> bool:
    if not key.endswith(".weight"):
        return False
    if second == "cqtd":
        return ".conv_pres." not in key and ".convs.0." not in key and "cqt_transform" not in key
    return True


def weight_norm_spelled(state: dict, second: str = "mpd") -> dict:
    """``state`` with the release's weight_g / weight_v pairs where the reference uses weight norm."""
    out = {}
    for k, v in state.items():
        if v.dim() >= 2 and release_weight_normed(k, second):
            base = k[: -len("weight")]
            out[base + "weight_g"] = v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
            out[base + "weight_v"] = v.clone()
        else:
            out[k] = v
    return out


def random_state(module: torch.nn.Module, seed: int = 0) -> dict:
    """Random conv weights; the derived buffers (CQT kernels, resampling filter) as computed, as
    the released file stores them."""
    g = torch.Generator().manual_seed(seed)
    params = {n for n, _ in module.named_parameters()}
    return {k: torch.randn(v.shape, generator=g) * 0.1 if k in params else v.clone()
            for k, v in module.state_dict().items()}


def write_discriminator_file(path: Path, mpd: torch.nn.Module, second: torch.nn.Module, second_kind: str) -> dict:
    """A file in the layout of bigvgan_discriminator_optimizer.pt, random values, optimizer state included."""
    mpd_state, second_state = random_state(mpd, 1), random_state(second, 2)
    with torch.inference_mode(False), torch.enable_grad():  # optimizer state as the release holds it
        params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
        opt = torch.optim.AdamW(params, 1e-4, betas=(0.8, 0.99))
        params[0].sum().backward()
        params[1].grad = torch.zeros(3)
        opt.step()
    obj = {"mpd": weight_norm_spelled(mpd_state, "mpd"), "mrd": weight_norm_spelled(second_state, second_kind),
           "optim_g": opt.state_dict(), "optim_d": opt.state_dict(), "steps": 5_000_000, "epoch": 42}
    torch.save(obj, path)
    return {"mpd": mpd_state, "mrd": second_state}
