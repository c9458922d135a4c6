"""Long videos: overlapping windows near the training length, joined in latent space.

SelVA was trained on 8 s clips. A longer clip is cut into overlapping windows; at every Euler
step each window's velocity is computed from its own slice of the sync (and CLIP) features, with
the text and negative conditions shared, and the velocities are blended where windows overlap
(MultiDiffusion, Bar-Tal et al. 2023, with tapered instead of flat weights). All windows read and
write one noise latent for the whole duration, so there is nothing to crossfade afterwards: the
overlaps are sampled once, consistently, by both neighbours.

Alignment. Windows start on the sync-segment grid (0.32 s = 8 frames at 25 fps; a window's sync
tokens are exactly those a clip cut at that time would give) and on whole latent frames (the
nearest one to the window's start: exact at 16 kHz, within half a latent frame, 12 ms, at
44.1 kHz). A window lasts a whole number of 0.32 s units; the last window is aligned to the end
of the clip and lasts up to 0.32 s longer, exactly as a clip of that length would.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Callable, Optional

import torch

from . import sampling
from .blending import Span, even_spans, overlap_weights
from .errors import SelvaError
from .variants import CLIP_FPS, LATENT_DOWNSAMPLE, SYNC_FPS, SYNC_STEP, SYNC_TOKENS_PER_SEGMENT, \
    SeqLengths, VariantSpec

if TYPE_CHECKING:
    from .conditioning import ConditionInputs

UNIT = Fraction(SYNC_STEP, SYNC_FPS)  # 0.32 s between sync segment starts
DEFAULT_WINDOW_SECONDS = 8.0  # the training clip length
DEFAULT_OVERLAP_SECONDS = 2.56  # 8 sync steps; see README "Long videos" for the reasoning


@dataclass(frozen=True)
class WindowOptions:
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS


@dataclass(frozen=True)
class Window:
    """One window: where it sits in the whole clip's latent / sync / CLIP sequences."""

    start: float  # seconds from the start of the features
    duration: float
    latent: tuple[int, int]  # [start, stop) in latent frames
    sync: tuple[int, int]  # [start, stop) in sync tokens
    clip: tuple[int, int]  # [start, stop) in CLIP frames (8 fps)

    @property
    def lengths(self) -> tuple[int, int, int]:
        """(latent, clip, sync) sequence lengths, as ``set_seq_lengths`` takes them."""
        return (self.latent[1] - self.latent[0], self.clip[1] - self.clip[0],
                self.sync[1] - self.sync[0])


@dataclass(frozen=True)
class WindowPlan:
    total: SeqLengths
    windows: tuple[Window, ...]

    @property
    def single(self) -> bool:
        return len(self.windows) == 1

    def weights(self) -> list[torch.Tensor]:
        """Per window, float32 blend weights over its latent frames (they sum to 1 everywhere):
        each window fades in and out over its overlaps with its neighbours."""
        return overlap_weights([w.latent for w in self.windows], self.total.latent)


def _exact(seconds: float, what: str) -> Fraction:
    if not math.isfinite(seconds):
        raise SelvaError(f"{what} must be a finite number of seconds, got {seconds}.")
    return Fraction(seconds).limit_denominator(1_000_000)


def _latent_index(seconds: Fraction, variant: VariantSpec) -> int:
    """The latent frame nearest to ``seconds``."""
    frames = seconds * variant.sample_rate / (variant.hop * LATENT_DOWNSAMPLE)
    return math.floor(frames + Fraction(1, 2))


def window_units(options: WindowOptions) -> tuple[int, int]:
    """(window, overlap) in 0.32 s units, checked: the window is floored, the overlap rounded."""
    window = _exact(options.window_seconds, "window_seconds")
    overlap = _exact(options.overlap_seconds, "overlap_seconds")
    w_units = math.floor(window / UNIT)
    o_units = round(overlap / UNIT)
    if w_units < 3:
        raise SelvaError(f"window_seconds {float(window):g} is too short: a window needs at least "
                         f"{float(3 * UNIT):.2f} s (two sync segments). The default is "
                         f"{DEFAULT_WINDOW_SECONDS:g} s, the length SelVA was trained on.")
    if o_units < 1:
        raise SelvaError(f"overlap_seconds {float(overlap):g} is too short: windows must overlap by "
                         f"at least {float(UNIT):.2f} s (one sync step) or their joins are audible. "
                         f"The default is {DEFAULT_OVERLAP_SECONDS:g} s.")
    if o_units >= w_units:
        raise SelvaError(f"overlap_seconds ({float(overlap):g}) must be shorter than window_seconds "
                         f"({float(window):g}); both count in steps of {float(UNIT):.2f} s. Lower "
                         f"overlap_seconds or raise window_seconds.")
    return w_units, o_units


def plan_windows(variant: VariantSpec, duration: float,
                 options: Optional[WindowOptions] = None) -> WindowPlan:
    """Windows covering ``duration`` seconds; one window (the whole clip) when it fits.

    A clip fits one window when it has no more sync segments than a window holds, i.e. up to
    0.32 s beyond ``window_seconds`` (that clip is then sampled exactly as before).
    """
    options = options or WindowOptions()
    total = variant.seq_lengths(duration)
    w_units, o_units = window_units(options)
    segments = total.sync // SYNC_TOKENS_PER_SEGMENT
    per_window = w_units - 1  # a segment spans 2 units
    if segments <= per_window:
        whole = Window(0.0, float(duration), (0, total.latent), (0, total.sync), (0, total.clip))
        return WindowPlan(total, (whole,))

    # Starts on the segment grid, spread evenly so that every join overlaps by >= the overlap.
    last = segments - per_window
    count = math.ceil(last / (w_units - o_units)) + 1
    starts = [round(i * last / (count - 1)) for i in range(count)]
    inner = variant.seq_lengths(float(w_units * UNIT))
    windows = []
    for i, k in enumerate(starts):
        t = k * UNIT
        a = _latent_index(t, variant)
        is_last = i == count - 1
        if is_last:
            seconds = float(_exact(duration, "duration") - t)
            latent = (a, total.latent)
            clip_len = min(int(seconds * CLIP_FPS), total.clip)
        else:
            seconds = float(w_units * UNIT)
            latent = (a, min(a + inner.latent, total.latent))
            clip_len = min(inner.clip, total.clip)
        # the nearest CLIP frame (8 fps is off the 0.32 s grid); the last window ends with the clip
        c = total.clip - clip_len if is_last else min(math.floor(t * CLIP_FPS + Fraction(1, 2)),
                                                      total.clip - clip_len)
        sync = (k * SYNC_TOKENS_PER_SEGMENT, (k + per_window) * SYNC_TOKENS_PER_SEGMENT)
        windows.append(Window(float(t), seconds, latent, sync, (c, c + clip_len)))
    return WindowPlan(total, tuple(windows))


def default_decode_spans(variant: VariantSpec, latent_frames: int) -> list[Span]:
    """Decoder tiles for a latent made elsewhere: default-window tiles when it is longer than
    the longest one-window clip (window + 0.32 s), else the whole latent."""
    tile = variant.seq_lengths(float(DEFAULT_WINDOW_SECONDS + UNIT)).latent
    if latent_frames <= tile:
        return [(0, latent_frames)]
    overlap = variant.seq_lengths(DEFAULT_OVERLAP_SECONDS).latent
    return even_spans(latent_frames, variant.seq_lengths(DEFAULT_WINDOW_SECONDS).latent, overlap)


# ---------------------------------------------------------------------------------- sampling
WindowVelocity = Callable[[int, float, torch.Tensor], torch.Tensor]


def blended_velocity(plan: WindowPlan, window_velocity: WindowVelocity,
                     on_window: Optional[Callable[[], None]] = None) -> sampling.VelocityFn:
    """The whole clip's velocity: each window's, weighted by :meth:`WindowPlan.weights`.

    ``window_velocity(i, t, x_i)`` returns window ``i``'s velocity for its latent slice ``x_i``;
    ``on_window()`` runs after each window (progress, cancel). Windows run one after another,
    so memory holds one window's activations, whatever the duration.
    """
    weights = plan.weights()

    def velocity(t: float, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        seen = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)  # weight so far
        for i, (w, weight) in enumerate(zip(plan.windows, weights)):
            a, b = w.latent
            v = window_velocity(i, t, x[:, a:b]).float()
            weight = weight.to(x.device)
            seen[a:b] += weight
            # A running weighted mean rather than a sum of weighted terms: windows that agree
            # give exactly their velocity (v - out is 0), where float32 weights summing to
            # 1 +- an ulp would not; where they differ it is the weighted sum.
            out[:, a:b] += (weight / seen[a:b])[None, :, None] * (v - out[:, a:b])
            if on_window is not None:
                on_window()
        return out.to(x.dtype)

    return velocity


def sample_windows(gen, plan: WindowPlan, x0: torch.Tensor, inputs: "ConditionInputs",
                   neg_clip: Optional[torch.Tensor], steps: int, cfg_strength: float, hooks,
                   velocity: Optional[Callable] = None,
                   schedule: Optional[sampling.FlowSchedule] = None) -> torch.Tensor:
    """Euler-sample the whole clip's latent ``x0`` (B, L, C) window by window (normalised space).

    ``inputs`` (selva/conditioning.py) cover the whole clip; ``neg_clip`` is the negative
    prompt's CLIP text (1, 77, D). Each window's conditions are projected once and shared by
    every batch item (``cfg_velocity`` runs both CFG branches in one pass). ``velocity`` replaces
    the generator's ``predict_flow`` (its compiled form); ``schedule`` starts part-way along the
    flow and/or holds known latent frames (selva/sampling.py). Progress counts windows x steps; a
    cancel stops after the current window.
    """
    from .conditioning import window_conditions

    conds = window_conditions(gen, plan.windows, inputs, neg_clip, x0.device, x0.dtype)

    def window_velocity(i: int, t: float, x: torch.Tensor) -> torch.Tensor:
        gen.set_seq_lengths(*plan.windows[i].lengths)
        cond, uncond = conds[i]
        return gen.cfg_velocity(t, x, cond, uncond, cfg_strength, velocity=velocity)

    total = steps * len(plan.windows)
    done = itertools.count(1)  # windows sampled so far: progress counts windows x steps
    blended = blended_velocity(plan, window_velocity, lambda: hooks.step("sampling", next(done), total))
    return sampling.euler_sample(blended, x0, steps, schedule=schedule)
