"""The Spectral Matcher for a whole dataset: the target profile (the VAE's per-band mel mean)
of a mode ("16k" / "44k"), taken from a loaded pipeline or read from the VAE file alone."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .. import audio as audio_ops
from .. import weights as W
from ..errors import SelvaError
from ..models.mel import MelConverter
from ..models.vae import load_vae_statistics
from ..variants import VariantSpec, get_variant

# The variant whose VAE file holds each mode's profile (every 44.1 kHz variant shares one VAE).
MODE_VARIANTS = {"16k": "small_16k", "44k": "large_44k"}

Matcher = Callable[[torch.Tensor, int], torch.Tensor]


def _find_vae(spec: VariantSpec, models_dirs: Iterable[Path]) -> Path:
    dirs = list(models_dirs) or [W.default_models_dir()]
    for d in dirs:
        try:
            return W.resolve_file(W.FILES[spec.vae_file], Path(d), allow_download=False)
        except W.MissingWeightsError:
            continue
    raise SelvaError(f"The {spec.mode} VAE ({spec.vae_file}) is not in {', '.join(str(d) for d in dirs)}: "
                     f"connect a SelVA Model Loader to the model input, or download the {spec.name} "
                     f"weights first.")


def spectral_matcher_for(mode: str, strength: float, max_gain_db: float, model: Any = None,
                         models_dirs: Iterable[Path] = ()) -> tuple[Matcher, int]:
    """``(match, rate)``: ``match(wave (B, C, T), rate)`` EQs toward the mode's VAE profile and
    returns the audio at ``rate``, the mode's sample rate."""
    if mode not in MODE_VARIANTS:
        raise SelvaError(f"mode must be one of {', '.join(MODE_VARIANTS)}, got {mode!r}.")
    if not 0.0 <= strength <= 1.0:
        raise SelvaError(f"strength must be within [0, 1], got {strength}.")
    if model is not None:
        spec = model.variant
        if spec.mode != mode:
            raise SelvaError(f"mode is {mode} but the connected model is {spec.name} ({spec.mode}); "
                             f"set mode to {spec.mode}.")
        # the pipeline reads the profile from its loaded VAE, or from the VAE file alone
        target = model.decoding.vae_data_mean()
    else:
        spec = get_variant(MODE_VARIANTS[mode])
        target = load_vae_statistics(_find_vae(spec, models_dirs), spec.vae)[0]
    mel = MelConverter(spec.mel)
    basis = mel.mel_basis.detach().float().cpu()
    log_to_db = 20.0 if spec.mel.log == "log10" else 20.0 / math.log(10.0)

    def match(wave: torch.Tensor, rate: int) -> torch.Tensor:
        wave = audio_ops.resample(audio_ops.check_waveform(wave), rate, spec.sample_rate)
        b, c, t = wave.shape
        with torch.no_grad():
            profile = mel(wave.reshape(b * c, t)).float().reshape(b, c, spec.mel.num_mels, -1).mean(dim=1)
        return audio_ops.spectral_match(wave, profile, target.reshape(-1), basis, spec.mel.n_fft, strength,
                                        log_to_db=log_to_db, max_gain_db=max_gain_db)

    return match, spec.sample_rate
