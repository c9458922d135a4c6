"""Tiny full Synchformer networks (the released geometry, small widths) for the evaluation tests."""
from __future__ import annotations

from pathlib import Path

import torch

from comfyui_selva.selva.models.synchformer import (AudioExtractorConfig, MotionFormerConfig, Synchformer,
                                                    SyncTransformerConfig)

# 224 px frames, 16-frame segments, 128 x 66 mel segments and 14-segment windows as released;
# only widths and depths are small, so the DeSync protocol runs unchanged.
TINY_VIDEO = MotionFormerConfig(img_size=224, patch_size=56, embed_dim=32, depth=1, num_heads=2)
TINY_AUDIO = AudioExtractorConfig(embed_dim=32, depth=1, num_heads=2)
TINY_SYNC = SyncTransformerConfig(embed_dim=32, depth=1, num_heads=2)
TINY_CONFIG = (TINY_VIDEO, TINY_AUDIO, TINY_SYNC)


def tiny_synchformer(seed: int = 0) -> Synchformer:
    torch.manual_seed(seed)
    model = Synchformer(*TINY_CONFIG)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2 if p.dim() < 2 else p.shape[-1] ** -0.5, generator=g)
    return model.eval()


def write_tiny_synchformer(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_synchformer(seed).state_dict(), path)
    return path


# ------------------------------------------------------------------------------------ CLAP
def _clap_tools():
    import importlib.util
    import sys

    root = Path(__file__).resolve().parents[1]
    name = "_selva_tools_clap_parity"
    if name not in sys.modules:
        saved = list(sys.path)  # the tool puts the repository first on sys.path: keep ours as it was
        spec = importlib.util.spec_from_file_location(name, root / "tools" / "clap_parity.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path[:] = saved
    return sys.modules[name]


def tiny_clap_arch():
    """HTSAT's input geometry (256 x 256 image from 1024 frames x 64 mels, 8 x 8 windows, four
    stages) with small widths; a 1-layer RoBERTa over the test tokenizer's few hundred tokens."""
    from comfyui_selva.selva.evaluation.clap import ClapArch

    return ClapArch(patch_embed_dim=8, depths=(2, 1, 1, 1), audio_heads=(1, 2, 2, 4), text_hidden=16,
                    text_layers=1, text_heads=2, text_intermediate=32, vocab_size=512, projection_dim=8)


def tiny_clap_checkpoint(arch=None) -> dict:
    """Random weights for ``arch`` in the released file's layout (``{"epoch", "state_dict"}``,
    ``module.`` names, laion_clap's tensor names), deterministic per tensor."""
    from comfyui_selva.selva.evaluation.clap import released_layout

    return _clap_tools().parity_checkpoint(layout=released_layout(arch or tiny_clap_arch()))


def write_tiny_clap(checkpoint_path: Path, tokenizer_dir: Path) -> None:
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_clap_checkpoint(), checkpoint_path)
    _clap_tools().write_tokenizer(tokenizer_dir)
