"""The released SelVA variants: the one place that knows which networks and files each one uses,
and how sequence lengths follow the clip's duration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .errors import SelvaError
from .models.generator import LARGE_44K, MEDIUM_44K, SMALL_16K, SMALL_44K, GeneratorConfig
from .models.mel import MEL_16K, MEL_44K, MelConfig
from .models.text_synch import TEXT_SYNCH_DEPTH1, TextSynchConfig
from .models.vae import VAE_16K, VAE_44K, VAEConfig

CLIP_FPS = 8
SYNC_FPS = 25
SYNC_SEGMENT = 16  # frames per Synchformer segment
SYNC_STEP = 8  # frames between segment starts
SYNC_TOKENS_PER_SEGMENT = 8
LATENT_DOWNSAMPLE = 2  # mel frames per latent frame


@dataclass(frozen=True)
class SeqLengths:
    duration: float
    latent: int
    clip: int
    sync: int
    audio_samples: int


@dataclass(frozen=True)
class VariantSpec:
    name: str
    mode: str  # "16k" | "44k"
    sample_rate: int
    hop: int  # waveform samples per mel frame
    generator: GeneratorConfig
    vae: VAEConfig
    mel: MelConfig
    vocoder: str  # "bigvgan_v1" (file ``bigvgan_16k``) | "bigvgan_v2" (snapshot ``bigvgan_v2_44k``)
    generator_file: str  # key in ``weights.FILES``
    vae_file: str
    text_synch: TextSynchConfig = TEXT_SYNCH_DEPTH1
    video_enc_file: str = "video_enc"
    vocoder_file: Optional[str] = None  # key in ``weights.FILES`` (v1) ...
    vocoder_snapshot: Optional[str] = None  # ... or in ``weights.HUB`` (v2)
    vocoder_config: Optional[object] = None  # BigVGAN v1 config; None = the 16 kHz release

    def seq_lengths(self, duration: float) -> SeqLengths:
        """Sequence lengths for ``duration`` seconds, computed the way the official code does.

        The expressions (and their float rounding) follow the official sequence config, so that
        e.g. 8 s gives latent 250 (16 kHz) / 345 (44.1 kHz), clip 64 and sync 192.
        """
        if duration <= 0:
            raise SelvaError(f"Duration must be positive, got {duration}.")
        latent = int(math.ceil(duration * self.sample_rate / self.hop / LATENT_DOWNSAMPLE))
        clip = int(duration * CLIP_FPS)
        segments = int((duration * SYNC_FPS - SYNC_SEGMENT) // SYNC_STEP + 1)
        if segments < 1:
            raise SelvaError(f"{duration:.2f} s is shorter than one sync segment "
                             f"({SYNC_SEGMENT / SYNC_FPS:.2f} s): use a longer clip.")
        sync = int(segments * SYNC_SEGMENT / (SYNC_SEGMENT // SYNC_TOKENS_PER_SEGMENT))
        return SeqLengths(duration=duration, latent=latent, clip=clip, sync=sync,
                          audio_samples=latent * self.hop * LATENT_DOWNSAMPLE)


# Only small_16k was released as SelVA: no 44.1 kHz SelVA generator is listed in the official
# ModelConfig table; their files are expected at weights/generator_<size>_44k_sup_5.pth (or _44khz_).
VARIANTS: dict[str, VariantSpec] = {v.name: v for v in (
    VariantSpec("small_16k", "16k", 16_000, 256, SMALL_16K, VAE_16K, MEL_16K, "bigvgan_v1",
                "generator_small_16k", "vae_16k", vocoder_file="bigvgan_16k"),
    VariantSpec("small_44k", "44k", 44_100, 512, SMALL_44K, VAE_44K, MEL_44K, "bigvgan_v2",
                "generator_small_44k", "vae_44k", vocoder_snapshot="bigvgan_v2_44k"),
    VariantSpec("medium_44k", "44k", 44_100, 512, MEDIUM_44K, VAE_44K, MEL_44K, "bigvgan_v2",
                "generator_medium_44k", "vae_44k", vocoder_snapshot="bigvgan_v2_44k"),
    VariantSpec("large_44k", "44k", 44_100, 512, LARGE_44K, VAE_44K, MEL_44K, "bigvgan_v2",
                "generator_large_44k", "vae_44k", vocoder_snapshot="bigvgan_v2_44k"),
)}


def get_variant(name: str) -> VariantSpec:
    try:
        return VARIANTS[name]
    except KeyError:
        raise SelvaError(f"Unknown SelVA variant {name!r}; choose one of {', '.join(VARIANTS)}.") from None
