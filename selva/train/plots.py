"""Loss curves and spectrograms as PNG images (matplotlib, no display needed).

Figures are built with ``matplotlib.figure.Figure`` directly, never pyplot: no global state, no
GUI backend, safe inside ComfyUI's worker thread.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .files import atomic_write


def smooth(values: Sequence[float], factor: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = factor * avg + (1.0 - factor) * float(v)
        out.append(avg / (1.0 - factor ** i))
    return out


def _figure(width: float = 6.4, height: float = 3.6):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="tight")


def _to_image(fig) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def loss_curve_image(losses: Sequence[float], *, raw: bool = True, smoothed: bool = True,
                     title: str = "training loss") -> Image.Image:
    """The loss per optimizer step: raw (faint) and smoothed, on a log axis when positive."""
    fig = _figure()
    ax = fig.add_subplot()
    steps = np.arange(1, len(losses) + 1)
    if len(losses):
        if raw:
            ax.plot(steps, losses, color="tab:blue", alpha=0.35 if smoothed else 1.0, lw=1, label="raw")
        if smoothed:
            ax.plot(steps, smooth(losses), color="tab:blue", lw=2, label="smoothed")
        if min(losses) > 0:
            ax.set_yscale("log")
        ax.legend(loc="upper right")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _to_image(fig)


def comparison_image(curves: Mapping[str, Sequence[float]], title: str = "loss per experiment") -> Image.Image:
    """Smoothed loss curves of several runs overlaid, one labelled line each."""
    fig = _figure(7.2, 4.0)
    ax = fig.add_subplot()
    positive = True
    for name, losses in curves.items():
        if len(losses):
            ax.plot(np.arange(1, len(losses) + 1), smooth(losses), lw=1.8, label=name)
            positive = positive and min(losses) > 0
    if any(len(v) for v in curves.values()):
        if positive:
            ax.set_yscale("log")
        ax.legend(loc="upper right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (smoothed)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _to_image(fig)


def spectrogram_image(waveform: torch.Tensor, sample_rate: int, title: str = "") -> Image.Image:
    """Log-magnitude STFT of the first channel of a (C, T) or (T,) waveform."""
    w = waveform.detach().float().cpu().reshape(-1, waveform.shape[-1])[0]
    n_fft = min(1024, max(16, 1 << (max(len(w), 2) - 1).bit_length() >> 1))
    spec = torch.stft(w, n_fft=n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft),
                      return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp_min(1e-5))
    fig = _figure(6.4, 3.2)
    ax = fig.add_subplot()
    duration = len(w) / sample_rate
    im = ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma",
                   extent=(0.0, duration, 0.0, sample_rate / 2000.0), vmin=float(db.max()) - 80.0)
    fig.colorbar(im, ax=ax, label="dB")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("kHz")
    ax.set_title(title)
    return _to_image(fig)


def save_png(path: Path, image: Image.Image) -> Path:
    return atomic_write(path, lambda p: image.save(p, format="PNG"))


def image_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> ComfyUI IMAGE (1, H, W, 3) float in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]


def blank_image(text: str = "") -> Image.Image:
    fig = _figure(4.0, 2.0)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    return _to_image(fig)
