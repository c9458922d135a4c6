"""Editing audio with the generator: audio-to-audio, regenerating a time range, continuing a track.

SelVA's generator is a rectified flow from noise (t = 0) to the VAE latent (t = 1); a point on
the way is ``x_t = (1 - t) noise + t latent``. So, with no training:

* audio-to-audio starts the Euler integration at ``t0 = 1 - denoise`` from the input's latent
  mixed with the seed's noise (denoise 1 = the plain Sampler, 0 = the VAE round trip);
* regenerating a range holds every latent frame outside it to the input's latent, re-noised to
  the current time with the same noise at every step, and generates the frames inside it;
* continuing holds the frames the (shorter) input covers and generates the rest.

The output keeps the input waveform itself outside what was regenerated; the join is a
crossfade of at most :data:`CROSSFADE_SECONDS` inside the regenerated part (none where the
input ends, as it has no audio there to fade from).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import audio as audio_ops
from .errors import SelvaError
from .sampling import FlowSchedule

log = logging.getLogger(__name__)

CROSSFADE_SECONDS = 0.1


@dataclass(frozen=True)
class EditOptions:
    """What to start from and what to change (all off = the plain Sampler)."""

    init_audio: Optional[torch.Tensor] = field(default=None, metadata={
        "help": "(batch 1 or the Sampler's batch, channels, samples) audio to edit, any rate and "
                "channel count (mixed down to mono and resampled, as the trainers do)."})
    sample_rate: int = field(default=0, metadata={"help": "The sample rate of init_audio."})
    denoise: float = field(default=1.0, metadata={
        "help": "How much is regenerated, 0-1: sampling starts at flow time 1 - denoise. 1 = from "
                "pure noise (the input only sets what a range or continuation keeps), 0 = the "
                "input through the VAE."})
    regenerate_start: float = field(default=0.0, metadata={
        "help": "Seconds: start of the range to regenerate (with regenerate_end; both 0 = none)."})
    regenerate_end: float = field(default=0.0, metadata={
        "help": "Seconds: end of the range to regenerate."})

    @property
    def has_range(self) -> bool:
        return not (self.regenerate_start == 0 and self.regenerate_end == 0)

    def validate(self, duration: float) -> None:
        if not 0.0 <= self.denoise <= 1.0:
            raise SelvaError(f"denoise must be within [0, 1], got {self.denoise}.")
        if self.init_audio is None:
            if self.has_range:
                raise SelvaError("regenerate_start / regenerate_end need init_audio: connect the "
                                 "audio whose range should be regenerated.")
            if self.denoise != 1.0:
                raise SelvaError(f"denoise {self.denoise:g} needs init_audio: it says how much of the "
                                 f"input audio to regenerate. Connect init_audio or set denoise to 1.")
            return
        audio_ops.check_waveform(self.init_audio, "init_audio")
        if self.sample_rate <= 0:
            raise SelvaError(f"init_audio's sample rate must be positive, got {self.sample_rate}.")
        if self.has_range:
            s, e = self.regenerate_start, self.regenerate_end
            if not 0.0 <= s < e:
                raise SelvaError(f"The range to regenerate must have 0 <= start < end, got "
                                 f"{s:g} s .. {e:g} s.")
            if e > duration + 1e-6:
                raise SelvaError(f"The range to regenerate ends at {e:g} s, after the end of the "
                                 f"audio ({duration:.2f} s). Lower regenerate_end.")


@dataclass
class EditPlan:
    """One generation's edit, worked out: the input, its latent and what the sampler does."""

    wave: torch.Tensor  # (B, 1, L * unit) the input at the model's rate, mono, trimmed / zero-padded
    known: torch.Tensor  # (B, L, C) the input's VAE latent (un-normalised)
    start: float  # flow time t0 the integration starts from
    hold: Optional[torch.Tensor]  # (L,) True where the latent is held to the input's
    region: Optional[tuple[int, int]]  # [a, b) samples regenerated (None: the whole clip)
    crossfade: int  # samples of each crossfade inside the region
    input_end: int  # samples of real input (beyond: padding)

    def start_state(self, gen, noise: torch.Tensor) -> tuple[torch.Tensor, FlowSchedule]:
        """The state at ``start`` from the seed's ``noise`` (B, L, C, normalised space) and the
        schedule that holds the known frames."""
        known = gen.normalize(self.known.to(noise.device, noise.dtype)).expand(noise.shape[0], -1, -1)
        t0 = torch.tensor(self.start, dtype=torch.float32)
        x = ((1 - t0) * noise + t0 * known).to(noise.dtype)
        return x, FlowSchedule(self.start, known if self.hold is not None else None,
                               noise if self.hold is not None else None, self.hold)

    def compose(self, generated: torch.Tensor) -> torch.Tensor:
        """The decoded output (B, 1, T) with the input pasted back outside the regenerated region
        (audio-to-audio with no region: the output as it is)."""
        if self.region is None:
            return generated
        n = min(generated.shape[-1], self.wave.shape[-1])
        out = generated.clone()
        src = self.wave.to(out.dtype).expand(out.shape[0], -1, -1)
        a, b = self.region
        keep = torch.ones(n, dtype=torch.float32)  # 1 = the input, 0 = generated
        keep[a:min(b, n)] = 0.0
        f = self.crossfade
        ramp = (torch.arange(1, f + 1, dtype=torch.float32) / (f + 1)) if f else None
        if f and 0 < a and a + f <= self.input_end:  # from the input into the generation
            keep[a:a + f] = 1.0 - ramp
        if f and b < min(self.input_end, n):  # and back to the input before the range ends
            keep[b - f:b] = ramp
        keep = keep.to(out.dtype)
        out[..., :n] = keep * src[..., :n] + (1 - keep) * generated[..., :n]
        outside = keep == 1.0
        out[..., :n][..., outside] = src[..., :n][..., outside]  # exactly the input there
        return out


def plan_edit(decoding, edit: EditOptions, latent_frames: int, duration: float,
              batch: int) -> Optional[EditPlan]:
    """The edit for a clip of ``latent_frames`` (``duration`` s), or None when there is nothing
    to do: no init audio, or denoise 1 with no range on a full-length input (the plain Sampler,
    bit for bit)."""
    edit.validate(duration)
    if edit.init_audio is None:
        return None
    unit = decoding.samples_per_latent
    total = latent_frames * unit
    mono = audio_ops.check_waveform(edit.init_audio, "init_audio").mean(dim=1, keepdim=True)
    mono = audio_ops.resample(mono, edit.sample_rate, decoding.sample_rate)
    if mono.shape[0] not in (1, batch):
        raise SelvaError(f"init_audio holds {mono.shape[0]} clips; give one (used for every "
                         f"variation) or one per variation (batch_size {batch}).")
    if float(mono.abs().max()) == 0.0:
        raise SelvaError("init_audio is silent (all samples are zero): there is nothing to edit or "
                         "continue. Leave init_audio unconnected to generate from scratch.")
    length = min(mono.shape[-1], total)
    continuing = total - length > unit  # within one latent frame counts as full length (padded)
    if edit.denoise == 1.0 and not edit.has_range and not continuing:
        log.info("denoise 1 with no range: init_audio is not used (the plain Sampler's output)")
        return None
    if continuing and edit.has_range:
        raise SelvaError(f"init_audio lasts {length / decoding.sample_rate:.2f} s, shorter than the "
                         f"{duration:.2f} s to generate: a range needs audio for the whole duration. "
                         f"Give full-length audio, or leave the range at 0 to continue the audio.")
    wave = torch.nn.functional.pad(mono[..., :total], (0, total - length))
    known = decoding.encode_audio(wave, decoding.sample_rate)  # (B, L, C)
    hold = region = None
    if edit.has_range:
        a = round(edit.regenerate_start * decoding.sample_rate)
        b = min(round(edit.regenerate_end * decoding.sample_rate), total)
        region = (a, b)
        hold = torch.ones(latent_frames, dtype=torch.bool)
        hold[a // unit:-(-b // unit)] = False  # every latent frame the range touches is generated
    elif continuing:
        region = (length, total)
        hold = torch.zeros(latent_frames, dtype=torch.bool)
        hold[:length // unit] = True  # frames wholly inside the input
        log.info("Continuing %.2f s of audio to %.2f s", length / decoding.sample_rate, duration)
    fade = 0 if region is None else min(round(CROSSFADE_SECONDS * decoding.sample_rate),
                                        (region[1] - region[0]) // 2)
    return EditPlan(wave, known.float().cpu(), 1.0 - float(edit.denoise), hold, region, fade, length)
