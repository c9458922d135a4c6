"""From latent to waveform and back: VAE decode / encode, the vocoder, the log-mel the VAE sees,
the VAE round trip and the spectral match toward the VAE's training profile."""
from __future__ import annotations

import logging
import math
from typing import Callable, Optional, Sequence

import torch

from . import accel
from . import audio as audio_ops
from .errors import SelvaError
from .hooks import Hooks, or_default
from .long_video import default_decode_spans
from .offload import OffloadManager
from .tiled_decode import decode_tiles
from .variants import LATENT_DOWNSAMPLE, VariantSpec

log = logging.getLogger(__name__)


class Decoders:
    """The VAE, the mel front end and the vocoder of one pipeline (or view).

    ``vocoder_stage`` is the offload-manager stage serving the vocoder (a tuned vocoder's view
    names its own); ``builders`` rebuilds the VAE with its encoder when audio must be encoded.
    """

    def __init__(self, variant: VariantSpec, manager: OffloadManager, builders, *, tf32: bool,
                 vocoder_stage: str = "vocoder", stats: Optional[dict] = None):
        self.variant, self.manager, self._builders, self.tf32 = variant, manager, builders, tf32
        self.vocoder_stage = vocoder_stage
        self._stats = stats if stats is not None else {}  # the VAE's data statistics, read once

    def with_vocoder(self, stage: str) -> "Decoders":
        return Decoders(self.variant, self.manager, self._builders, tf32=self.tf32,
                        vocoder_stage=stage, stats=self._stats)

    @property
    def sample_rate(self) -> int:
        return self.variant.sample_rate

    @property
    def device(self) -> torch.device:
        return self.manager.device

    # -------------------------------------------------------------------------------- decode
    def decode(self, latent: torch.Tensor, hooks: Optional[Hooks] = None,
               spans: Optional[Sequence[tuple[int, int]]] = None) -> torch.Tensor:
        """Latent (B, L, C) -> waveform (B, 1, T) float32 on the CPU.

        ``spans`` are overlapping tiles in latent frames (default: 8 s ones for a latent longer
        than one default window); the VAE and the vocoder decode one tile at a time and the
        results are crossfaded (selva/tiled_decode.py). One tile = one piece, as always.
        """
        hooks = or_default(hooks)
        if spans is None:
            spans = default_decode_spans(self.variant, latent.shape[1])
        n = len(spans)
        with accel.tf32(self.device, self.tf32):
            # one function per network: a released one is freed when its function returns
            mel = self._decode_mel(latent, spans, lambda d: hooks.step("decode", d, 2 * n))
            mel_spans = [(a * LATENT_DOWNSAMPLE, b * LATENT_DOWNSAMPLE) for a, b in spans]
            return self._vocode(mel, mel_spans, lambda d: hooks.step("decode", n + d, 2 * n))

    def _decode_mel(self, latent: torch.Tensor, spans: Sequence[tuple[int, int]],
                    on_tile: Callable[[int], None]) -> torch.Tensor:
        with self.manager.use("vae") as vae:
            return decode_tiles(vae.decode, latent.to(self.device, self.manager.dtype("vae")).transpose(1, 2),
                                spans, LATENT_DOWNSAMPLE, on_tile=lambda d, _: on_tile(d))

    def _vocode(self, mel: torch.Tensor, spans: Sequence[tuple[int, int]],
                on_tile: Callable[[int], None]) -> torch.Tensor:
        with self.manager.use(self.vocoder_stage) as vocoder:
            wave = decode_tiles(vocoder, mel.to(self.device, self.manager.dtype(self.vocoder_stage)), spans,
                                self.variant.hop, out_device=torch.device("cpu"),
                                on_tile=lambda d, _: on_tile(d))
        return wave.float().cpu()

    # -------------------------------------------------------------------------------- encode
    def log_mel(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """(B, C, T) any rate -> log-mel (B * C, n_mels, frames) as the VAE sees it."""
        wave = audio_ops.resample(audio_ops.check_waveform(waveform), sample_rate, self.sample_rate)
        b, c, t = wave.shape
        with self.manager.use("mel") as mel:
            return mel(wave.reshape(b * c, t).to(self.device)).float().cpu()

    def vae_encode(self, mel: torch.Tensor):
        """The VAE posterior (a ``GaussianPosterior``, [B, C, L]) of log-mels [B, n_mels, T]; the
        encoder is loaded on first use."""
        self._ensure_vae_encoder()
        with torch.no_grad(), self.manager.use("vae") as vae:
            return vae.encode(mel.to(self.device, self.manager.dtype("vae")))

    def encode_audio(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """The VAE latent (B * C, L, C_latent) -- the posterior's mode -- of audio at any rate,
        channel by channel, padded to whole latent frames (L = ceil(T / samples per frame))."""
        wave = audio_ops.resample(audio_ops.check_waveform(waveform), sample_rate, self.sample_rate)
        t = wave.shape[-1]
        # The VAE works on whole latent frames: pad to a multiple of them (reflect-padding the
        # mel needs a little signal too).
        if t < self.variant.mel.n_fft:
            raise SelvaError(f"The audio is too short for the VAE: {t} samples at {self.sample_rate} Hz; "
                             f"it needs at least {self.variant.mel.n_fft}.")
        padded = torch.nn.functional.pad(wave, (0, -t % self.samples_per_latent))
        latent = self.vae_encode(self.log_mel(padded, self.sample_rate)).mode()
        return latent.transpose(1, 2)

    @property
    def samples_per_latent(self) -> int:
        """Waveform samples per latent frame."""
        return self.variant.hop * LATENT_DOWNSAMPLE

    def vae_roundtrip(self, waveform: torch.Tensor, sample_rate: int,
                      hooks: Optional[Hooks] = None) -> torch.Tensor:
        """Encode audio with the VAE and decode it again: hear what the VAE + vocoder keep.

        Any rate and channel count in; (B, C, T') at the model's rate out, channel by channel.
        """
        hooks = or_default(hooks)
        wave = audio_ops.resample(audio_ops.check_waveform(waveform), sample_rate, self.sample_rate)
        b, c, t = wave.shape
        latent = self.encode_audio(wave, self.sample_rate)
        hooks.step("vae encode", 1, 1)
        out = self.decode(latent, hooks)
        return out.reshape(b, c, -1)[..., :t]

    def _ensure_vae_encoder(self) -> None:
        """Swap in the VAE with its encoder (generation only needs the decoder)."""
        vae = self.manager.get("vae") if self.manager.is_loaded("vae") else None
        if vae is not None and vae.encoder is not None:
            return
        if self._builders is None:
            raise SelvaError("This pipeline's VAE has no encoder, so it cannot encode audio.")
        log.info("Loading the VAE encoder for the round trip")
        self.manager.add_lazy("vae", lambda: self._builders.vae(need_encoder=True), self.manager.dtype("vae"))

    # ----------------------------------------------------------------------- spectral match
    def vae_data_mean(self) -> torch.Tensor:
        """The VAE's per-band mel mean (data_dim,) on the CPU: from the loaded VAE if it is
        loaded, else read from its file alone (the network is neither built nor moved)."""
        if self.manager.is_loaded("vae"):
            return self.manager.get("vae").data_mean.detach().float().cpu().reshape(-1)
        if self._builders is None:
            raise SelvaError("This pipeline has no VAE file to read the spectral profile from.")
        if "vae" not in self._stats:
            self._stats["vae"] = self._builders.vae_statistics()
        return self._stats["vae"][0]

    def spectral_match(self, waveform: torch.Tensor, sample_rate: int, strength: float,
                       max_gain_db: float = 12.0) -> torch.Tensor:
        """Per-band EQ toward the spectral profile the VAE was trained on (its data mean).

        Works at the model's rate (other rates are resampled first); returns (B, C, T).
        """
        wave = audio_ops.resample(audio_ops.check_waveform(waveform), sample_rate, self.sample_rate)
        b, c, _ = wave.shape
        mel = self.manager.get("mel")
        cfg = self.variant.mel
        profile = self.log_mel(wave, self.sample_rate).reshape(b, c, cfg.num_mels, -1).mean(dim=1)
        target = self.vae_data_mean()
        log_to_db = 20.0 if cfg.log == "log10" else 20.0 / math.log(10.0)
        return audio_ops.spectral_match(wave, profile, target, mel.mel_basis.detach().float().cpu(),
                                        cfg.n_fft, strength, log_to_db=log_to_db, max_gain_db=max_gain_db)
