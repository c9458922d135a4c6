"""ComfyUI nodes for SelVA. Only thin glue lives here: all model math is in ``selva/``."""
from __future__ import annotations

from . import comfy_compat
from .audio_tools import SelvaHfSmoother, SelvaSpectralMatcher, SelvaVaeRoundtrip
from .features import SelvaFeatureExtractor
from .loader import SelvaModelLoader
from .lora import SelvaLoraEvaluator, SelvaLoraLoader
from .mux import SelvaMuxVideo
from .sampler import SelvaSampler

comfy_compat.register_models_folder()

_NODES = (
    ("SelvaModelLoader", SelvaModelLoader, "SelVA Model Loader"),
    ("SelvaFeatureExtractor", SelvaFeatureExtractor, "SelVA Feature Extractor"),
    ("SelvaSampler", SelvaSampler, "SelVA Sampler"),
    ("SelvaVaeRoundtrip", SelvaVaeRoundtrip, "SelVA VAE Roundtrip"),
    ("SelvaHfSmoother", SelvaHfSmoother, "SelVA HF Smoother"),
    ("SelvaSpectralMatcher", SelvaSpectralMatcher, "SelVA Spectral Matcher"),
    ("SelvaLoraLoader", SelvaLoraLoader, "SelVA LoRA Loader"),
    ("SelvaLoraEvaluator", SelvaLoraEvaluator, "SelVA LoRA Evaluator"),
    ("SelvaMuxVideo", SelvaMuxVideo, "SelVA Mux Video"),
)

NODE_CLASS_MAPPINGS = {node_id: cls for node_id, cls, _ in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: name for node_id, _, name in _NODES}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
