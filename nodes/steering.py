"""Activation steering nodes: extract per-block (or per-position) vectors from a feature dataset,
load them."""
from __future__ import annotations

from typing import Any, Optional

from . import paths
from .common import CATEGORY, MODEL_TYPE, STEERING_TYPE, comfy_run, image_output, make_hooks, outputs

STEERING_SUFFIX = ".safetensors"


def steering_inputs() -> dict:
    """The optional inputs the Sampler and DITTO share (appended at the end of "optional")."""
    return {
        "steering_vectors": (STEERING_TYPE, {
            "tooltip": "Vectors from SelVA Activation Steering Loader. Not connected = no steering."}),
        "steering_strength": ("FLOAT", {
            "default": 0.1, "min": -10.0, "max": 10.0, "step": 0.01,
            "tooltip": "How far each chosen block's hidden state is pushed along its vector (0 = "
                       "off, bit-identical output). Start at 0.1-0.5; negative pushes away."}),
        "steering_blocks": ("STRING", {
            "default": "all",
            "tooltip": "Which generator blocks to steer: 'all', 'topK' (the K largest vectors, "
                       "e.g. top3) or block numbers like 0,3,7 (see the extractor's chart)."}),
    }


def steering_patches(steering_vectors: Any = None, steering_strength: Optional[float] = 0.1,
                     steering_blocks: Optional[str] = "all") -> list:
    """The generator patches for the Sampler's steering inputs (none when not connected / 0)."""
    from ..selva.style.steering import SteeringPatch, parse_blocks

    if steering_vectors is None or not steering_strength:
        return []
    return [SteeringPatch(steering_vectors, float(steering_strength), parse_blocks(steering_blocks, steering_vectors))]


class SelvaActivationSteeringExtractor:
    DESCRIPTION = ("Computes activation-steering vectors from a folder of SelVA feature files "
                   "(.npz): per generator block, how the hidden state under the clips' "
                   "conditions differs from the unconditioned one. Saves them as safetensors "
                   "with a per-block magnitude chart (PNG) beside them.")
    CATEGORY = CATEGORY
    FUNCTION = "extract"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("STRING", "steering_path", "Path of the saved .safetensors file; feed it to the Steering Loader."),
        ("IMAGE", "magnitude_chart",
         "Bar chart of each block's vector size relative to its "
         "hidden state: large bars are the blocks topK picks."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The SelVA model (a LoRA-loaded one works too)."}),
                "data_dir": ("STRING", {
                    "default": "selva/datasets/my_sounds",
                    "tooltip": "Folder of .npz feature files (searched recursively) of clips that "
                               "sound the way you want. Relative = inside ComfyUI's output folder."}),
                "output_path": ("STRING", {
                    "default": "selva/steering/my_style",
                    "tooltip": "Where to save (.safetensors added). Relative = inside ComfyUI's "
                               "output folder. An existing file is never overwritten: a numbered "
                               "name is used instead."}),
                "n_samples": ("INT", {
                    "default": 16, "min": 1, "max": 4096,
                    "tooltip": "Clips averaged over (drawn from the folder; repeated with new noise "
                               "when it holds fewer)."}),
                # ComfyUI's frontend gives every INT named "seed" a control widget anyway;
                # declaring it keeps the stored widget values in step with the server's order.
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1, "control_after_generate": True,
                                 "tooltip": "Picks the clips and their noise."}),
            },
            "optional": {
                "n_timesteps": ("INT", {
                    "default": 10, "min": 1, "max": 100,
                    "tooltip": "Sampling steps per clip; each adds one difference per block."}),
                "mode": (["per_block", "per_position"], {
                    "default": "per_block",
                    "tooltip": "per_block: one vector per block, added on both guidance branches. "
                               "per_position: one vector per block and latent position, added to "
                               "the conditional branch only (the earlier SelVA pack's steering; "
                               "the guidance scales it by cfg_strength, so use smaller strengths)."}),
            },
        }

    def extract(self, model: Any, data_dir: str, output_path: str, n_samples: int, seed: int,
                n_timesteps: int = 10, mode: str = "per_block") -> tuple[str, Any]:
        from ..selva.artifacts import unique_path
        from ..selva.style.steering import (SteeringConfig, extract_steering, find_feature_files,
                                            magnitude_chart)

        with comfy_run():
            folder = paths.resolve_existing(data_dir, "data_dir")
            files = find_feature_files(folder)
            config = SteeringConfig(n_samples=int(n_samples), n_timesteps=int(n_timesteps), seed=int(seed),
                                    mode=mode)
            vectors = extract_steering(model, files, config, make_hooks())
            vectors.info["data_dir"] = str(folder)
            target = unique_path(paths.with_suffix(paths.resolve(output_path, "output_path"), STEERING_SUFFIX))
            vectors.save(target)
            chart = magnitude_chart(vectors, unique_path(target.with_suffix(".png")))
        return (str(target), image_output(chart))


class SelvaActivationSteeringLoader:
    DESCRIPTION = "Loads activation-steering vectors saved by the SelVA Activation Steering Extractor."
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        (STEERING_TYPE, "steering_vectors", "Connect to the Sampler's or DITTO's steering_vectors input."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"path": ("STRING", {
            "default": "selva/steering/my_style.safetensors",
            "tooltip": "The .safetensors file (or the earlier SelVA pack's .pt, which loads as "
                       "per-position vectors). Relative = inside ComfyUI's output folder."})}}

    @classmethod
    def IS_CHANGED(cls, path: str) -> str:
        """Re-run when the file is replaced (the path alone would keep the old vectors cached)."""
        return paths.file_version(path)

    def load(self, path: str) -> tuple[Any]:
        from ..selva.style.steering import SteeringVectors

        with comfy_run():
            return (SteeringVectors.load(paths.resolve(path, "path")),)
