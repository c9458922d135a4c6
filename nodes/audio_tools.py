"""Audio nodes around the model: VAE roundtrip check and gentle post-processing."""
from __future__ import annotations

from typing import Any

from .common import CATEGORY, MODEL_TYPE, audio_input, audio_output, comfy_run, make_hooks, outputs


_AUDIO_TOOLTIP = "Audio of any sample rate and channel count."
SPECTRAL_MODES = {"auto": None, "44k": 44100, "16k": 16000}


class SelvaVaeRoundtrip:
    DESCRIPTION = ("Encodes audio with the SelVA audio VAE and decodes it again through the "
                   "vocoder: hear what the model can represent (a quality ceiling check).")
    CATEGORY = CATEGORY
    FUNCTION = "roundtrip"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("AUDIO", "audio_reconstructed",
         "The reconstruction at the model's sample rate, with the input's channel count."))

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
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("AUDIO", "audio", "The smoothed audio (same rate, channels and length)."))

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
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("AUDIO", "audio",
         "The equalised audio at the model's sample rate (other rates are resampled first), same channels."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": (MODEL_TYPE, {"tooltip": "The pipeline whose VAE statistics give the target "
                                              "spectral profile."}),
            "audio": ("AUDIO", {"tooltip": _AUDIO_TOOLTIP + " Resampled to the model's rate."}),
            "strength": ("FLOAT", {
                "default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "0 = unchanged, 1 = the full correction (gains are capped at +-max_gain_db)."}),
        }, "optional": {
            "mode": (list(SPECTRAL_MODES), {
                "default": "auto",
                "tooltip": "Which model's spectral profile: auto = the connected model's. 44k / 16k (the "
                           "earlier pack's choice) must match the connected model, else an error says so."}),
            "max_gain_db": ("FLOAT", {
                "default": 12.0, "min": 1.0, "max": 30.0, "step": 1.0,
                "tooltip": "Largest boost or cut per band, in dB: keeps very quiet bands from being "
                           "pushed up into noise."}),
        }}

    def match(self, model: Any, audio: dict, strength: float, mode: str = "auto",
              max_gain_db: float = 12.0) -> tuple[dict]:
        from ..selva.errors import SelvaError

        wave, rate = audio_input(audio)
        wanted = SPECTRAL_MODES.get(mode)
        if wanted is not None and wanted != model.sample_rate:
            raise SelvaError(f"Spectral Matcher mode {mode} asks for the {wanted} Hz model's profile, but the "
                             f"connected model runs at {model.sample_rate} Hz: set mode to auto (or "
                             f"{'44k' if model.sample_rate == 44100 else '16k'}), or connect that model.")
        with comfy_run():
            out = model.decoding.spectral_match(wave, rate, strength=float(strength), max_gain_db=float(max_gain_db))
        return (audio_output(out, model.sample_rate),)


class SelvaHarmonicExciter:
    DESCRIPTION = ("Adds harmonics above a cutoff: the high band is saturated (tanh) and a little of it "
                   "mixed back, restoring overtones the vocoder smears. Same rate, channels, length.")
    CATEGORY = CATEGORY
    FUNCTION = "excite"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("AUDIO", "audio", "The excited audio (soft-clipped to stay within full scale)."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "audio": ("AUDIO", {"tooltip": _AUDIO_TOOLTIP}),
            "cutoff_hz": ("FLOAT", {"default": 3000.0, "min": 500.0, "max": 16000.0, "step": 100.0,
                                    "tooltip": "Only content above this frequency is excited (below half "
                                               "the sample rate)."}),
            "drive": ("FLOAT", {"default": 2.0, "min": 1.0, "max": 10.0, "step": 0.5,
                                "tooltip": "Saturation drive: more = more harmonics (2-3 subtle, 5+ strong)."}),
            "mix": ("FLOAT", {"default": 0.15, "min": 0.0, "max": 1.0, "step": 0.05,
                              "tooltip": "How much of the excited band is added: 0 = unchanged, 0.1-0.2 "
                                         "subtle."}),
        }}

    def excite(self, audio: dict, cutoff_hz: float, drive: float, mix: float) -> tuple[dict]:
        from ..selva.audio import harmonic_exciter

        wave, rate = audio_input(audio)
        return (audio_output(harmonic_exciter(wave, rate, float(cutoff_hz), float(drive), float(mix)), rate),)


class SelvaOutputNormalizer:
    DESCRIPTION = ("Brings audio to a target loudness (BS.1770-4 LUFS) with a true-peak ceiling: use it "
                   "last, before saving, for a consistent level whatever the video.")
    CATEGORY = CATEGORY
    FUNCTION = "normalize"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("AUDIO", "audio", "The normalised audio (silence and clips under 0.4 s pass unchanged)."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "audio": ("AUDIO", {"tooltip": _AUDIO_TOOLTIP}),
            "target_lufs": ("FLOAT", {"default": -14.0, "min": -40.0, "max": -6.0, "step": 0.5,
                                      "tooltip": "Integrated loudness to reach: -14 for streaming, -23 for "
                                                 "broadcast."}),
            "true_peak_dbtp": ("FLOAT", {"default": -1.0, "min": -6.0, "max": 0.0, "step": 0.5,
                                         "tooltip": "True-peak ceiling (4x oversampled) after the loudness "
                                                    "gain; a louder peak lowers the whole clip."}),
        }}

    def normalize(self, audio: dict, target_lufs: float, true_peak_dbtp: float) -> tuple[dict]:
        from ..selva.audio import output_normalize

        wave, rate = audio_input(audio)
        return (audio_output(output_normalize(wave, rate, float(target_lufs), float(true_peak_dbtp)), rate),)

