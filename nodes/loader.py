"""SelVA Model Loader: builds a :class:`SelvaPipeline` from the weights in ``models/selva``."""
from __future__ import annotations

import logging
import threading
from dataclasses import astuple
from typing import Any

from . import comfy_compat
from .common import CATEGORY, MODEL_TYPE, comfy_run, make_hooks, outputs

log = logging.getLogger(__name__)

# The last pipeline built, so a graph edit elsewhere (which makes ComfyUI re-run the loader when
# its cache was dropped) does not reload gigabytes of weights. One entry: SelVA models are big.
_CACHE_LOCK = threading.RLock()  # re-entrant: load_pipeline clears the cache while holding it
_LOADED: dict[tuple, Any] = {}


def _weight_paths(variant: str) -> list[str]:
    """Relative paths of everything the variant reads (to find the folder that holds them)."""
    from ..selva.errors import SelvaError
    from ..selva.loading import required_files, required_snapshots
    from ..selva.variants import get_variant

    try:
        spec = get_variant(variant)
    except SelvaError:  # reported properly when the pipeline loads
        return []
    paths = [wf.path for wf in required_files(spec)]
    paths += [f"hf/{snap.local_name}/{name}" for snap in required_snapshots(spec) for name in snap.files]
    return paths


def load_pipeline(variant: str, precision: str, offload_strategy: str, clip_frames: bool = False,
                  compile: bool = False) -> Any:
    """Build (or reuse) the pipeline for these options."""
    from ..selva.pipeline import LoadOptions, SelvaPipeline
    from .model_management import comfy_residency

    device = comfy_compat.torch_device()
    models_dir = comfy_compat.pick_models_dir(_weight_paths(variant))
    options = LoadOptions(variant=variant, precision=precision, offload=offload_strategy,
                          device=device, models_dir=models_dir, clip_frames=clip_frames,
                          compile=bool(compile))
    key = astuple(options)
    with _CACHE_LOCK:
        cached = _LOADED.get(key)
        if cached is not None:
            return cached
        clear_cache()  # free the previous model before loading another one (returns its VRAM too)
        log.info("Loading SelVA %s (%s, offload %s) from %s", variant, precision,
                 offload_strategy, models_dir)
        # Inside ComfyUI its model management owns the stages (nodes/model_management.py).
        residency = comfy_residency(offload_strategy)
        pipeline = SelvaPipeline.load(options, hooks=make_hooks(), residency=residency,
                                      make_room=None if residency else comfy_compat.make_room_for_stage)
        _LOADED[key] = pipeline
        return pipeline


def clear_cache() -> None:
    """Drop the remembered pipeline (tests; freeing memory)."""
    with _CACHE_LOCK:
        for old in _LOADED.values():
            old.release()
        _LOADED.clear()


class SelvaModelLoader:
    DESCRIPTION = ("Loads a SelVA model (video encoder, generator, audio VAE, vocoder, text "
                   "encoders) from models/selva, downloading missing weights on first use.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        (MODEL_TYPE, "model",
         "The loaded SelVA pipeline; connect it to the Feature "
         "Extractor, Sampler, VAE Roundtrip and Spectral Matcher."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        from ..selva.offload import OFFLOAD_STRATEGIES, PRECISIONS
        from ..selva.variants import VARIANTS

        return {
            "required": {
                "variant": (list(VARIANTS), {
                    "default": "small_16k",
                    "tooltip": "Model size and output rate: small_16k (16 kHz) or small/medium/"
                               "large_44k (44.1 kHz). Larger models need more VRAM and time."}),
                "precision": (list(PRECISIONS), {
                    "default": "auto",
                    "tooltip": "Compute precision. auto: bf16 where the device computes it natively "
                               "(recent NVIDIA GPUs, CPUs with AVX512-BF16/AMX), fp16 on other GPUs "
                               "and Apple MPS, fp32 on other CPUs (which only emulate bf16, slowly). "
                               "bf16 is the official choice; without native support it runs in "
                               "fp16 on a GPU and fp32 on a CPU (with a warning). fp32 is exact."}),
                "offload_strategy": (list(OFFLOAD_STRATEGIES), {
                    "default": "auto",
                    "tooltip": "Where the model's parts wait between uses. ComfyUI's model "
                               "manager loads each part before it runs and can unload it when "
                               "another model needs the VRAM (Unload Models frees them too). "
                               "auto: follow ComfyUI (parts stay loaded; unloaded right after "
                               "use with --lowvram/--novram). keep_in_vram: parts stay loaded "
                               "after use. offload_to_cpu: each part is unloaded right after it "
                               "ran (least VRAM, slower)."}),
            },
            "optional": {
                "clip_frames": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Feed CLIP image features of the video to the generator. Off (the "
                               "official demo's behaviour) uses the learned empty CLIP sequence "
                               "and does not load CLIP's image tower."}),
                "compile": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "torch.compile the generator (needs a working Triton/C++ toolchain). "
                               "The first run compiles first (tens of seconds; not measured here); "
                               "the first new duration or batch size compiles once more, later ones "
                               "reuse it. Worth it "
                               "for many generations on a GPU; same audio up to float rounding."}),
            },
        }

    def load(self, variant: str, precision: str, offload_strategy: str,
             clip_frames: bool = False, compile: bool = False) -> tuple[Any]:
        with comfy_run():
            return (load_pipeline(variant, precision, offload_strategy, clip_frames,
                                  compile=compile),)
