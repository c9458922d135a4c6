"""Audio nodes around the model: VAE roundtrip check and gentle post-processing."""
from __future__ import annotations

from typing import Any

from .common import CATEGORY, MODEL_TYPE, audio_input, audio_output, comfy_run, make_hooks


_AUDIO_TOOLTIP = "Audio of any sample rate and channel count."


class SelvaVaeRoundtrip:
    DESCRIPTION = ("Encodes audio with the SelVA audio VAE and decodes it again through the "
                   "vocoder: hear what the model can represent (a quality ceiling check).")
    CATEGORY = CATEGORY
    FUNCTION = "roundtrip"
    RETURN_TYPES = ("AUDIO",)
    RETURN_NAMES = ("audio_reconstructed",)
    OUTPUT_TOOLTIPS = ("The reconstruction at the model's sample rate, with the input's channel "
                       "count.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": (MODEL_TYPE, {"tooltip": "The pipeline from SelVA Model Loader."}),
            "audio": ("AUDIO", {"tooltip": _AUDIO_TOOLTIP + " Resampled to the model's rate."}),
        }}

    def roundtrip(self, model: Any, audio: dict) -> tuple[dict]:
        wave, rate = audio_input(audio)
        with comfy_run():
            out = model.decoding.vae_roundtrip(wave, rate, hooks=make_hooks())
        return (audio_output(out, model.sample_rate),)


class SelvaHfSmoother:
    DESCRIPTION = ("Softens harsh high frequencies: above the cutoff, blends a low-pass filtered "
                   "copy into the original. Below the cutoff the audio is unchanged.")
    CATEGORY = CATEGORY
    FUNCTION = "smooth"
    RETURN_TYPES = ("AUDIO",)
    RETURN_NAMES = ("audio",)
    OUTPUT_TOOLTIPS = ("The smoothed audio (same rate, channels and length).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "audio": ("AUDIO", {"tooltip": _AUDIO_TOOLTIP}),
            "cutoff_hz": ("FLOAT", {
                "default": 6000.0, "min": 100.0, "max": 24000.0, "step": 50.0,
                "tooltip": "Frequency above which the low-passed copy is blended in; must be below "
                           "half the sample rate (8 kHz for 16 kHz audio)."}),
            "blend": ("FLOAT", {
                "default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "0 = unchanged, 1 = fully low-passed above the cutoff."}),
        }}

    def smooth(self, audio: dict, cutoff_hz: float, blend: float) -> tuple[dict]:
        from ..selva.audio import hf_smoother

        wave, rate = audio_input(audio)
        return (audio_output(hf_smoother(wave, rate, float(cutoff_hz), float(blend)), rate),)


class SelvaSpectralMatcher:
    DESCRIPTION = ("Per-band equaliser that moves the audio's average spectrum toward the profile "
                   "the SelVA VAE was trained on (from the normalisation statistics stored in the "
                   "VAE weights).")
    CATEGORY = CATEGORY
    FUNCTION = "match"
    RETURN_TYPES = ("AUDIO",)
    RETURN_NAMES = ("audio",)
    OUTPUT_TOOLTIPS = ("The equalised audio at the model's sample rate (other rates are resampled "
                       "first), same channels.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": (MODEL_TYPE, {"tooltip": "The pipeline whose VAE statistics give the target "
                                              "spectral profile."}),
            "audio": ("AUDIO", {"tooltip": _AUDIO_TOOLTIP + " Resampled to the model's rate."}),
            "strength": ("FLOAT", {
                "default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "0 = unchanged, 1 = the full correction (gains are capped at +-12 dB)."}),
        }}

    def match(self, model: Any, audio: dict, strength: float) -> tuple[dict]:
        wave, rate = audio_input(audio)
        with comfy_run():
            out = model.decoding.spectral_match(wave, rate, strength=float(strength))
        return (audio_output(out, model.sample_rate),)

