"""Test-only ComfyUI custom node package: shows ComfyUI's loaded-model list over HTTP.

``SelvaTestLoadedModels`` is an output node that runs every time (never cached) and returns, in
its UI output (readable from ``/history``), one entry per model in
``comfy.model_management.current_loaded_models``: the patcher's and the network's class names,
the SelVA stage name (when it is one of ours), its size and loaded size in bytes. Given an
AUDIO, it also returns a digest of the waveform, so a test can compare two runs' audio.
"""
from __future__ import annotations

import hashlib


class SelvaTestLoadedModels:
    CATEGORY = "SelVA/testing"
    FUNCTION = "probe"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {"audio": ("AUDIO",)}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # never equal: the list must be read at every run

    def probe(self, audio=None):
        import comfy.model_management as mm

        models = []
        for entry in mm.current_loaded_models:
            patcher = entry.model
            if patcher is None:
                continue
            models.append({"patcher": type(patcher).__name__,
                           "model": type(patcher.model).__name__,
                           "stage": getattr(patcher, "stage", None),
                           "size": int(patcher.model_size()),
                           "loaded": int(patcher.loaded_size()),
                           "device": str(entry.device)})
        ui = {"loaded_models": models}
        if audio is not None:
            wave = audio["waveform"].detach().cpu().contiguous().float().numpy()
            ui["audio_digest"] = [hashlib.sha256(wave.tobytes()).hexdigest()]
        return {"ui": ui}


NODE_CLASS_MAPPINGS = {"SelvaTestLoadedModels": SelvaTestLoadedModels}
NODE_DISPLAY_NAME_MAPPINGS = {"SelvaTestLoadedModels": "SelVA test: loaded models"}
