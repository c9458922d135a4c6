"""The settings of one generation and of a video mask, each written once as a dataclass.

``SamplingOptions`` travels through :meth:`SelvaPipeline.generate`, ``sample_latent`` and the
editing paths; ``MaskOptions`` through feature extraction. Both are frozen: a caller changes a
setting with :meth:`SamplingOptions.of` (which names an unknown setting clearly).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional

import torch

from .errors import SelvaError
from .audio import DEFAULT_TARGET_LUFS
from .long_video import DEFAULT_OVERLAP_SECONDS, DEFAULT_WINDOW_SECONDS, WindowOptions


@dataclass(frozen=True)
class SamplingOptions:
    """How the generator is sampled for one clip (everything but the clip's features)."""

    prompt: Optional[str] = field(default=None, metadata={
        "help": "Prompt to generate for; None or the features' own prompt = the features as they "
                "are, another one re-encodes text and sync features from the stored frames."})
    negative_prompt: str = field(default="", metadata={
        "help": "Sounds to steer away from (the unconditional branch's text); empty = none."})
    duration: Optional[float] = field(default=None, metadata={
        "help": "Seconds of audio; None = the features' duration (longer is clamped to it)."})
    steps: int = field(default=25, metadata={
        "help": "Euler steps over the whole flow (official: 25); an edit runs the part after its "
                "start time."})
    cfg_strength: float = field(default=4.5, metadata={
        "help": "Classifier-free guidance strength (official: 4.5)."})
    seed: int = field(default=0, metadata={
        "help": "Noise seed; batch item i uses seed + i."})
    batch_size: int = field(default=1, metadata={
        "help": "Variations sampled in one batched pass."})
    windows: Optional[WindowOptions] = field(default=None, metadata={
        "help": "Window and overlap for clips longer than one window (None = 8 s / 2.56 s)."})

    def validate(self) -> None:
        if self.steps < 1:
            raise SelvaError(f"steps must be at least 1, got {self.steps}.")
        if self.batch_size < 1:
            raise SelvaError(f"batch_size must be at least 1, got {self.batch_size}.")

    @classmethod
    def of(cls, options: Optional["SamplingOptions"], **changes: Any) -> "SamplingOptions":
        """``options`` (default: all defaults) with ``changes``: the keyword form callers use. An
        unknown name is an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise SelvaError(f"Unknown {cls.__name__} setting(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}.")
        options = options if options is not None else cls()
        return replace(options, **changes) if changes else options


@dataclass(frozen=True)
class MaskOptions:
    """Where the sound source is in the video, and how the mask applies to the two encoders."""

    mask: Optional[torch.Tensor] = field(default=None, metadata={
        "help": "(1 | T, H, W) in [0, 1], 1 = keep: one static mask or one per source frame."})
    mask_strength: float = field(default=1.0, metadata={
        "help": "0 = no effect, 1 = the background fully replaced with neutral grey."})
    mask_clip: bool = field(default=True, metadata={
        "help": "Mask the frames CLIP sees (8 fps path; only when CLIP frames are used)."})
    mask_sync: bool = field(default=True, metadata={
        "help": "Mask the frames the sync encoder sees (25 fps path)."})

    def validate(self) -> None:
        if not 0.0 <= self.mask_strength <= 1.0:
            raise SelvaError(f"mask_strength must be within [0, 1], got {self.mask_strength}.")

    @property
    def active(self) -> bool:
        return self.mask is not None and self.mask_strength != 0


def add_sampling_arguments(group: Any) -> None:
    """The command-line flags every generating command shares (``generate``, ``batch``), their
    defaults and help read from :class:`SamplingOptions` so the two never disagree.

    Sets ``steps``, ``cfg``, ``no_normalize``, ``target_lufs``, ``window_seconds`` and
    ``overlap_seconds`` on the parsed namespace; :func:`windows_from_args` reads the last two back.
    """
    helps = {f.name: f.metadata["help"] for f in fields(SamplingOptions)}
    d = SamplingOptions()
    group.add_argument("--steps", type=int, default=d.steps, help=f"{helps['steps'].rstrip('.')} (default: {d.steps})")
    group.add_argument("--cfg", "--cfg-strength", dest="cfg", type=float, default=d.cfg_strength,
                       help=f"{helps['cfg_strength'].rstrip('.')} (default: {d.cfg_strength})")
    group.add_argument("--no-normalize", action="store_true", help="skip loudness normalisation")
    group.add_argument("--target-lufs", type=float, default=DEFAULT_TARGET_LUFS,
                       help=f"loudness target (default: {DEFAULT_TARGET_LUFS:g})")
    group.add_argument("--window-seconds", type=float, default=DEFAULT_WINDOW_SECONDS,
                       help="longer clips are sampled in overlapping windows of this length "
                            f"(default: {DEFAULT_WINDOW_SECONDS:g})")
    group.add_argument("--overlap-seconds", type=float, default=DEFAULT_OVERLAP_SECONDS,
                       help=f"overlap of neighbouring windows (default: {DEFAULT_OVERLAP_SECONDS:g})")


def windows_from_args(args: argparse.Namespace) -> WindowOptions:
    return WindowOptions(args.window_seconds, args.overlap_seconds)
