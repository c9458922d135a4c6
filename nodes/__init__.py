"""ComfyUI nodes for SelVA. Only thin glue lives here: all model math is in ``selva/``."""
from __future__ import annotations

from . import comfy_compat
from .audio_tools import (SelvaHarmonicExciter, SelvaHfSmoother, SelvaOutputNormalizer, SelvaSpectralMatcher,
                          SelvaVaeRoundtrip)
from . import datasets
from .batch import SelvaBatchGenerate
from .ditto import SelvaDittoOptimizer
from .features import SelvaFeatureExtractor
from .loader import SelvaModelLoader
from .lora import SelvaLoraEvaluator, SelvaLoraLoader
from .mux import SelvaMuxVideo
from .sampler import SelvaSampler, SelvaTextToAudio
from .steering import SelvaActivationSteeringExtractor, SelvaActivationSteeringLoader
from .textual_inversion import SelvaTextualInversionLoader, SelvaTextualInversionTrainer, SelvaTiScheduler
from .training import (SelvaDatasetBrowser, SelvaLoraScheduler, SelvaLoraTrainer, SelvaSkipExperiment,
                       register_routes)
from .vocoder import SelvaBigvganLoader, SelvaBigvganScheduler, SelvaBigvganTrainer

comfy_compat.register_models_folder()
register_routes()

_NODES = (
    ("SelvaModelLoader", SelvaModelLoader, "SelVA Model Loader"),
    ("SelvaFeatureExtractor", SelvaFeatureExtractor, "SelVA Feature Extractor"),
    ("SelvaSampler", SelvaSampler, "SelVA Sampler"),
    ("SelvaVaeRoundtrip", SelvaVaeRoundtrip, "SelVA VAE Roundtrip"),
    ("SelvaHfSmoother", SelvaHfSmoother, "SelVA HF Smoother"),
    ("SelvaSpectralMatcher", SelvaSpectralMatcher, "SelVA Spectral Matcher"),
    ("SelvaHarmonicExciter", SelvaHarmonicExciter, "SelVA Harmonic Exciter"),
    ("SelvaOutputNormalizer", SelvaOutputNormalizer, "SelVA Output Normalizer"),
    ("SelvaLoraLoader", SelvaLoraLoader, "SelVA LoRA Loader"),
    ("SelvaLoraEvaluator", SelvaLoraEvaluator, "SelVA LoRA Evaluator"),
    ("SelvaLoraTrainer", SelvaLoraTrainer, "SelVA LoRA Trainer"),
    ("SelvaLoraScheduler", SelvaLoraScheduler, "SelVA LoRA Scheduler"),
    ("SelvaSkipExperiment", SelvaSkipExperiment, "SelVA Skip Experiment"),
    ("SelvaDatasetBrowser", SelvaDatasetBrowser, "SelVA Dataset Browser"),
    ("SelvaDittoOptimizer", SelvaDittoOptimizer, "SelVA DITTO Optimizer"),
    ("SelvaActivationSteeringExtractor", SelvaActivationSteeringExtractor,
     "SelVA Activation Steering Extractor"),
    ("SelvaActivationSteeringLoader", SelvaActivationSteeringLoader, "SelVA Activation Steering Loader"),
    ("SelvaTextualInversionTrainer", SelvaTextualInversionTrainer, "SelVA Textual Inversion Trainer"),
    ("SelvaTextualInversionLoader", SelvaTextualInversionLoader, "SelVA Textual Inversion Loader"),
    ("SelvaTiScheduler", SelvaTiScheduler, "SelVA Textual Inversion Scheduler"),
    ("SelvaBigvganTrainer", SelvaBigvganTrainer, "SelVA BigVGAN Trainer"),
    ("SelvaBigvganLoader", SelvaBigvganLoader, "SelVA BigVGAN Loader"),
    ("SelvaBigvganScheduler", SelvaBigvganScheduler, "SelVA BigVGAN Scheduler"),
    ("SelvaMuxVideo", SelvaMuxVideo, "SelVA Mux Video"),
    ("SelvaTextToAudio", SelvaTextToAudio, "SelVA Text to Audio"),
    ("SelvaDatasetFromFolder", datasets.SelvaDatasetFromFolder, "SelVA Dataset From Folder"),
    ("SelvaDatasetReport", datasets.SelvaDatasetReport, "SelVA Dataset Report"),
    ("SelvaDatasetLoader", datasets.SelvaDatasetLoader, "SelVA Dataset Loader"),
    ("SelvaDatasetResampler", datasets.SelvaDatasetResampler, "SelVA Dataset Resampler"),
    ("SelvaDatasetLUFSNormalizer", datasets.SelvaDatasetLUFSNormalizer, "SelVA Dataset LUFS Normalizer"),
    ("SelvaDatasetCompressor", datasets.SelvaDatasetCompressor, "SelVA Dataset Compressor"),
    ("SelvaDatasetInspector", datasets.SelvaDatasetInspector, "SelVA Dataset Inspector"),
    ("SelvaDatasetSpectralMatcher", datasets.SelvaDatasetSpectralMatcher, "SelVA Dataset Spectral Matcher"),
    ("SelvaDatasetHfSmoother", datasets.SelvaDatasetHfSmoother, "SelVA Dataset HF Smoother"),
    ("SelvaDatasetAugmenter", datasets.SelvaDatasetAugmenter, "SelVA Dataset Augmenter"),
    ("SelvaDatasetItemExtractor", datasets.SelvaDatasetItemExtractor, "SelVA Dataset Item Extractor"),
    ("SelvaDatasetSaver", datasets.SelvaDatasetSaver, "SelVA Dataset Saver"),
    ("SelvaBatchGenerate", SelvaBatchGenerate, "SelVA Batch Generate"),
)

NODE_CLASS_MAPPINGS = {node_id: cls for node_id, cls, _ in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: name for node_id, _, name in _NODES}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
