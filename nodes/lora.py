"""SelVA LoRA Loader and LoRA Evaluator: thin glue over selva/adapters."""
from __future__ import annotations

from typing import Any, Optional

from ..selva.evaluation.options import ALL_METRICS
from . import comfy_compat, paths
from .common import (CATEGORY, FEATURES_TYPE, LORA_TYPE, MODEL_TYPE, audio_input, comfy_run, image_output,
                     make_hooks, outputs)
from .sampler import MAX_SEED

EVAL_FOLDER = "selva_lora_eval"


class SelvaLoraLoader:
    DESCRIPTION = ("Applies a LoRA adapter to the generator at a strength. The input model is not "
                   "changed: other branches of the graph still get the base model, and loaders chain.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        (MODEL_TYPE, "model", "The same pipeline with the adapter attached whenever it generates."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The pipeline from SelVA Model Loader (or another "
                                                  "LoRA Loader, to stack adapters)."}),
                "adapter_path": ("STRING", {
                    "default": "",
                    "tooltip": "Adapter file (.safetensors from the SelVA trainer, peft lora_A/lora_B "
                               "files, or .pt adapters of the earlier SelVA pack). Relative = inside "
                               "ComfyUI's output folder."}),
                "strength": ("FLOAT", {
                    "default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                    "tooltip": "1 = as trained, 0 = off (exactly the base model), above 1 "
                               "exaggerates, negative pushes away from what it learned."}),
            },
            "optional": {
                "adapter": (LORA_TYPE, {"tooltip": "An adapter straight from SelVA LoRA Trainer; "
                                                   "when connected, adapter_path is ignored."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, adapter_path: str = "", **_: Any) -> str:
        return paths.file_version(adapter_path)

    def load(self, model: Any, adapter_path: str, strength: float,
             adapter: Optional[Any] = None) -> tuple[Any]:
        from ..selva.adapters import LoraPatch, check_adapter_for, resolve_adapter

        with comfy_run():
            lora = resolve_adapter(adapter, adapter_path, comfy_compat.output_directory())
            check_adapter_for(lora, model.variant.name, model.variant.generator)
            return (model.with_patches([LoraPatch(lora, strength)]),)


class SelvaLoraEvaluator:
    DESCRIPTION = ("Generates the same clip with the base model and each adapter (same seed) and "
                   "compares their spectra: centroid, flatness, band energy, log-spectral distance "
                   "to the baseline and to an optional reference. With held_out_dir set it scores "
                   "every clip of a held-out dataset folder instead: DeSync, FD and KL on PaSST, "
                   "spectral distance (see LORA_TRAINING.md).")
    CATEGORY = CATEGORY
    FUNCTION = "evaluate"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("STRING", "summary_path", "The JSON summary (metrics per adapter), in output/selva_lora_eval/."),
        ("IMAGE", "comparison_image",
         "Spectrograms side by side and the metrics table; in held-out "
         "mode one bar chart per metric, the best model marked."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The base pipeline (adapters are added on top)."}),
                "adapters_file": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "A JSON file (or the JSON text) with a list of adapter paths, e.g. "
                               "[\"\", \"selva_lora/lora_001/adapter_final.safetensors\"]; \"\" = the "
                               "baseline, which is always included. Relative paths: beside the "
                               "JSON file, then ComfyUI's output folder. Empty = baseline only."}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 200,
                                  "tooltip": "Sampling steps for every generation."}),
                "cfg_strength": ("FLOAT", {"default": 4.5, "min": 0.0, "max": 20.0, "step": 0.1,
                                           "tooltip": "Guidance strength for every generation."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "One seed for all, so only the adapter differs."}),
            },
            "optional": {
                # optional so the held-out mode needs no clip; links of saved workflows keep working
                "features": (FEATURES_TYPE, {"tooltip": "One-clip mode: the fixed reference clip "
                                                        "every adapter generates for."}),
                "reference_audio": ("AUDIO", {"tooltip": "The sound you trained for: adds the "
                                                         "log-spectral distance to it."}),
                "held_out_dir": ("STRING", {
                    "default": "",
                    "tooltip": "Held-out mode: a dataset folder (features .npz + real audio, the "
                               "trainers' layout) of clips left out of training. Every clip is "
                               "generated by the base model and each adapter, then scored. Empty = "
                               "one-clip mode. Relative paths start in ComfyUI's output folder."}),
                "metrics": ("STRING", {
                    "default": ",".join(ALL_METRICS),
                    "tooltip": "Held-out mode: comma-separated metrics. desync (Synchformer "
                               "offset, s), clap (LAION-CLAP cosine of audio and prompt; higher is "
                               "better), fd (Frechet distance on PaSST), kl (PaSST class KL), "
                               "spectral (log-spectral distance to the real audio, dB); lower is "
                               "better for all but clap. The networks download on first use."}),
            },
        }

    def evaluate(self, model: Any, adapters_file: str, steps: int, cfg_strength: float, seed: int,
                 features: Any = None, reference_audio: Optional[dict] = None, held_out_dir: str = "",
                 metrics: str = ",".join(ALL_METRICS)):
        from ..selva.adapters.compare import compare_adapters, read_adapter_list, save_comparison
        from ..selva.errors import SelvaError

        held_out = str(held_out_dir or "").strip().strip('"')
        with comfy_run():
            out = comfy_compat.output_directory()
            if held_out:
                from ..selva.evaluation.run import EvalOptions, evaluate_held_out, parse_metrics

                options = EvalOptions(metrics=parse_metrics(metrics), steps=int(steps),
                                      cfg_strength=float(cfg_strength), seed=int(seed))
                path, image = evaluate_held_out(model, paths.resolve(held_out, "held_out_dir"), adapters_file,
                                                out / EVAL_FOLDER, options, base_dir=out, hooks=make_hooks())
                return (str(path), image_output(image))
            if features is None:
                raise SelvaError("SelVA LoRA Evaluator: connect features (one-clip mode) or set "
                                 "held_out_dir to a dataset folder (held-out mode).")
            entries = read_adapter_list(adapters_file, out)
            reference = None if reference_audio is None else audio_input(reference_audio,
                                                                          "reference_audio")
            comparison = compare_adapters(model, features, entries, steps=int(steps),
                                          cfg_strength=float(cfg_strength), seed=int(seed),
                                          reference=reference,
                                          reference_name=None if reference is None else "reference_audio",
                                          hooks=make_hooks())
            path, image = save_comparison(comparison, out / EVAL_FOLDER)
        return (str(path), image_output(image))
