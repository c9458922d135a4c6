"""Shared pieces of the SelVA nodes: type names, hooks for ComfyUI, error translation."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ..selva.hooks import Hooks, Interrupted
from . import comfy_compat


CATEGORY = "SelVA"
MODEL_TYPE = "SELVA_MODEL"
FEATURES_TYPE = "SELVA_FEATURES"
LORA_TYPE = "SELVA_LORA"  # selva.adapters.LoraAdapter
STEERING_TYPE = "STEERING_VECTORS"
TEXTUAL_INVERSION_TYPE = "TEXTUAL_INVERSION"
# ComfyUI matches comma-separated types as a union, so one socket takes either an IMAGE batch
# (VHS, Get Video Components) or the native VIDEO of core Load Video.
VIDEO_TYPE = "IMAGE,VIDEO"


def outputs(*sockets: tuple[str, str, str]) -> tuple[tuple[str, ...], ...]:
    """A node's RETURN_TYPES, RETURN_NAMES and OUTPUT_TOOLTIPS from one (type, name, tooltip) per
    output, so each output is declared in one place."""
    return tuple(zip(*sockets))


def make_hooks(preview: bool = False) -> Hooks:
    """Progress into ComfyUI's progress bar, cancel from ComfyUI's interrupt button; with
    ``preview`` (the trainers) the images a run reports, e.g. the live loss curve, show as the
    bar's preview."""
    progress = comfy_compat.StageProgress()
    return Hooks(progress=progress, preview=progress if preview else None,
                 interrupted=comfy_compat.processing_interrupted)


@contextlib.contextmanager
def comfy_run() -> Iterator[None]:
    """Run a node body: a user cancel shows as ComfyUI's own "interrupted", not as an error."""
    try:
        yield
    except Interrupted:
        exc = comfy_compat.interrupt_exception()
        if exc is None:
            raise
        raise exc() from None


def audio_output(waveform: Any, sample_rate: int) -> dict:
    """ComfyUI's AUDIO: float32 CPU (B, C, T) plus the rate."""
    return {"waveform": waveform.detach().to("cpu").float().contiguous(),
            "sample_rate": int(sample_rate)}


def image_output(rgb: Any) -> Any:
    """ComfyUI's IMAGE (1, H, W, 3) float in [0, 1] from an (H, W, 3) uint8 array (a chart)."""
    import torch

    return torch.from_numpy(rgb).float().div(255.0)[None]


def audio_input(audio: Any, what: str = "audio") -> tuple[Any, int]:
    """(waveform (B, C, T) float32 CPU, sample_rate) from a ComfyUI AUDIO dict."""
    import torch

    from ..selva.errors import SelvaError

    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise SelvaError(f"{what} must be a ComfyUI AUDIO (a dict with 'waveform' and 'sample_rate').")
    wave = torch.as_tensor(audio["waveform"])
    if wave.dim() == 1:
        wave = wave[None, None]
    elif wave.dim() == 2:
        wave = wave[None]
    if wave.dim() != 3:
        raise SelvaError(f"{what} must be shaped (batch, channels, samples), got waveform shape "
                         f"{tuple(wave.shape)}.")
    if wave.shape[-1] == 0:
        raise SelvaError(f"{what} holds no samples (waveform shape {tuple(wave.shape)}).")
    rate = int(audio["sample_rate"])
    if rate <= 0:
        raise SelvaError(f"{what} has an invalid sample rate {rate}.")
    return wave.detach().to("cpu", torch.float32), rate
