"""Draw the ComfyUI Registry's icon and banner for this pack (docs/images/icon.png, banner.png).

The pictures are drawn, not photographed: a film strip (the video) above a waveform (the sound
SelVA makes for it), in the pack's two colours. Run it again after changing the look:

    python tools/make_registry_images.py
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Rectangle  # noqa: E402

BACKGROUND = "#15171c"
FILM = "#e8a33d"
WAVE = "#4fc3c9"
TEXT = "#f2f2f2"


def _waveform(ax, x0: float, x1: float, y: float, height: float) -> None:
    # A decaying burst repeated: it reads as a sound event at any size.
    x = np.linspace(0.0, 1.0, 900)
    envelope = np.exp(-((x * 4.0) % 1.0) * 3.5) * (0.35 + 0.65 * np.sin(np.pi * x))
    wave = envelope * np.sin(2 * np.pi * 55 * x)
    ax.fill_between(x0 + (x1 - x0) * x, y - height * np.abs(wave), y + height * np.abs(wave),
                    color=WAVE, linewidth=0)


def _film_strip(ax, x0: float, x1: float, y: float, height: float, frames: int) -> None:
    ax.add_patch(Rectangle((x0, y), x1 - x0, height, color=FILM))
    hole = height * 0.12
    for i in range(int((x1 - x0) / (hole * 2.2))):
        for hy in (y + hole * 0.6, y + height - hole * 1.6):
            ax.add_patch(Rectangle((x0 + hole * 0.6 + i * hole * 2.2, hy), hole, hole, color=BACKGROUND))
    width = (x1 - x0) / frames
    for i in range(frames):
        ax.add_patch(FancyBboxPatch((x0 + i * width + width * 0.08, y + height * 0.25),
                                    width * 0.84, height * 0.5, boxstyle="round,pad=0,rounding_size=0.01",
                                    color=BACKGROUND, alpha=0.55))


def _figure(width_px: int, height_px: int):
    fig = plt.figure(figsize=(width_px / 100, height_px / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width_px / height_px)
    ax.set_ylim(0, 1)
    ax.axis("off")
    fig.patch.set_facecolor(BACKGROUND)
    return fig, ax


def draw_icon(path: Path, size: int = 400) -> None:
    fig, ax = _figure(size, size)
    _film_strip(ax, 0.08, 0.92, 0.58, 0.26, frames=3)
    _waveform(ax, 0.08, 0.92, 0.3, 0.16)
    fig.savefig(path, facecolor=BACKGROUND)
    plt.close(fig)


def draw_banner(path: Path, width: int = 1200, height: int = 300) -> None:
    fig, ax = _figure(width, height)
    aspect = width / height
    _film_strip(ax, 0.05, aspect * 0.42, 0.55, 0.3, frames=4)
    _waveform(ax, 0.05, aspect * 0.42, 0.28, 0.17)
    ax.text(aspect * 0.47, 0.6, "ComfyUI-SelVA", color=TEXT, fontsize=46, fontweight="bold", va="center")
    ax.text(aspect * 0.47, 0.33, "sound for your video, from a prompt", color=WAVE, fontsize=24, va="center")
    fig.savefig(path, facecolor=BACKGROUND)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    draw_icon(args.out / "icon.png")
    draw_banner(args.out / "banner.png")
    print(f"wrote {args.out / 'icon.png'} and {args.out / 'banner.png'}")


if __name__ == "__main__":
    main()
