"""Tiny SelVA models written to disk in the released layout, for fast end-to-end tests.

``make_models_dir(root)`` writes every file a variant needs (generator, video encoder, VAE,
vocoder, CLIP / T5 / BigVGAN v2 snapshots) with small hyperparameters and random values, and
``register_tiny_variants()`` adds the variants ``tiny_16k`` and ``tiny_44k`` that describe those
networks. The product's real resolution and loading code then runs unchanged.
"""
from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from pathlib import Path

import torch

from comfyui_selva.bigvgan.v1 import BigVGANv1, BigVGANv1Config
from comfyui_selva.bigvgan.v2 import BigVGANv2, BigVGANv2Config
from comfyui_selva.selva import variants as V
from comfyui_selva.selva import weights as W
from comfyui_selva.selva.models.generator import GeneratorConfig, SelvaGenerator
from comfyui_selva.selva.models.mel import MEL_16K, MEL_44K
from comfyui_selva.selva.models.synchformer import MotionFormerConfig
from comfyui_selva.selva.models.text_synch import TextSynchConfig, TextSynchformer
from comfyui_selva.selva.models.vae import AudioVAE, VAEConfig

T5_DIM = 32  # tiny T5 hidden size = the tiny TextSynch text_dim
CLIP_WIDTH = 32  # tiny CLIP text width = the tiny generator's text_dim
CLIP_EMBED = 16  # tiny CLIP joint embedding = the tiny generator's clip_dim

TINY_BACKBONE = MotionFormerConfig(img_size=224, patch_size=56, embed_dim=32, depth=1, num_heads=2)
TINY_TEXT_SYNCH = TextSynchConfig(backbone=TINY_BACKBONE, text_dim=T5_DIM)
SYNC_DIM = TINY_BACKBONE.embed_dim


def tiny_generator(latent_dim: int) -> GeneratorConfig:
    return GeneratorConfig(latent_dim=latent_dim, clip_dim=CLIP_EMBED, sync_dim=SYNC_DIM,
                           text_dim=CLIP_WIDTH, hidden_dim=32, depth=3, fused_depth=2, num_heads=2)


TINY_VAE_16K = VAEConfig(data_dim=80, embed_dim=8, hidden_dim=16, ch_mult=(1, 2), num_res_blocks=1)
TINY_VAE_44K = VAEConfig(data_dim=128, embed_dim=8, hidden_dim=16, ch_mult=(1, 2), num_res_blocks=1)
TINY_BIGVGAN_V1 = BigVGANv1Config(num_mels=80, upsample_rates=(4, 4, 4, 4),
                                  upsample_kernel_sizes=(8, 8, 8, 8), upsample_initial_channel=16,
                                  resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))
TINY_BIGVGAN_V2 = BigVGANv2Config(num_mels=128, upsample_rates=(8, 4, 4, 4),
                                  upsample_kernel_sizes=(16, 8, 8, 8), upsample_initial_channel=16,
                                  resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),),
                                  use_bias_at_final=False, use_tanh_at_final=False)

TINY_16K = dataclasses.replace(V.VARIANTS["small_16k"], name="tiny_16k", generator=tiny_generator(8),
                               vae=TINY_VAE_16K, text_synch=TINY_TEXT_SYNCH,
                               vocoder_config=TINY_BIGVGAN_V1)
TINY_44K = dataclasses.replace(V.VARIANTS["small_44k"], name="tiny_44k", generator=tiny_generator(8),
                               vae=TINY_VAE_44K, text_synch=TINY_TEXT_SYNCH)
assert TINY_16K.mel is MEL_16K and TINY_44K.mel is MEL_44K


def register_tiny_variants() -> None:
    V.VARIANTS.setdefault("tiny_16k", TINY_16K)
    V.VARIANTS.setdefault("tiny_44k", TINY_44K)


# ----------------------------------------------------------------------------- file writers
def _save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)


def _randomize(module: torch.nn.Module, scale: float = 0.2) -> torch.nn.Module:
    """Non-zero values everywhere: the official inits zero some layers, which would hide bugs."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("latent_std", "data_std")):
                p.uniform_(0.5, 1.5, generator=g)
            else:
                p.normal_(0.0, scale, generator=g)
    return module


def weight_norm_spelling(state: dict) -> dict:
    """A plain state dict written the way the released BigVGAN files are: weight_g / weight_v."""
    out = {}
    for k, v in state.items():
        if k.endswith(".weight") and v.dim() >= 2:
            base = k[: -len(".weight")]
            out[base + ".weight_g"] = v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
            out[base + ".weight_v"] = v.clone()
        else:
            out[k] = v
    return out


def write_generator(path: Path, cfg: GeneratorConfig) -> None:
    # small weights keep velocities O(1), as trained ones are (0.2 would make fp16 overflow by design)
    net = SelvaGenerator(cfg, latent_seq_len=16, clip_seq_len=8, sync_seq_len=16)
    _save(_randomize(net, 0.05).state_dict(), path)


def write_video_enc(path: Path) -> None:
    _save(_randomize(TextSynchformer(TINY_TEXT_SYNCH), 0.1).state_dict(), path)


def write_vae(path: Path, cfg: VAEConfig) -> None:
    vae = _randomize(AudioVAE(cfg), 0.05)
    _save(vae.state_dict(), path)


def write_bigvgan_v1(path: Path) -> None:
    net = _randomize(BigVGANv1(TINY_BIGVGAN_V1), 0.1)
    _save({"generator": weight_norm_spelling(net.state_dict())}, path)


def write_bigvgan_v2(directory: Path) -> None:
    net = _randomize(BigVGANv2(TINY_BIGVGAN_V2), 0.1)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.asdict(TINY_BIGVGAN_V2)
    (directory / "config.json").write_text(json.dumps(cfg))
    _save({"generator": weight_norm_spelling(net.state_dict())}, directory / "bigvgan_generator.pt")


_WORDS = ("a dog barking while bell rings music the sound of rain on roof footsteps gravel "
          "engine car horn birds singing water").split()


def write_t5_tokenizer(directory: Path) -> int:
    """A small Unigram tokenizer.json with T5's special tokens; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
             + [("\u2581" + w, -1.0) for w in _WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"])
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.save(str(directory / "tokenizer.json"))
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {**special, "model_max_length": 512, "tokenizer_class": "T5Tokenizer", "extra_ids": 0}))
    return len(vocab)


def write_t5(directory: Path) -> None:
    """A tiny flan-T5 snapshot: Unigram tokenizer.json + T5 weights (encoder and decoder)."""
    from transformers import T5Config, T5ForConditionalGeneration

    vocab_size = write_t5_tokenizer(directory)
    cfg = T5Config(vocab_size=vocab_size, d_model=T5_DIM, d_kv=8, d_ff=64, num_layers=2,
                   num_decoder_layers=1, num_heads=4, feed_forward_proj="gated-gelu",
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    T5ForConditionalGeneration(cfg).save_pretrained(directory)


def write_clip(directory: Path) -> None:
    """A tiny open_clip snapshot in the DFN5B layout (open_clip_config.json + .bin state dict)."""
    import open_clip

    directory.mkdir(parents=True, exist_ok=True)
    model_cfg = {"embed_dim": CLIP_EMBED, "quick_gelu": True,
                 "vision_cfg": {"image_size": 384, "layers": 1, "width": 32, "head_width": 16,
                                "patch_size": 64},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": CLIP_WIDTH,
                              "heads": 2, "layers": 1}}
    (directory / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711],
                           "interpolation": "bicubic", "resize_mode": "squash"}}))
    torch.manual_seed(0)
    model = open_clip.CLIP(**model_cfg)
    torch.save(model.state_dict(), directory / "open_clip_pytorch_model.bin")


@lru_cache(maxsize=None)
def _hub_cache(root: str) -> Path:
    """Write the (slow to build) hub snapshots once per session and copy them from there."""
    base = Path(root)
    write_t5(base / W.HUB["t5"].local_name)
    write_clip(base / W.HUB["clip"].local_name)
    write_bigvgan_v2(base / W.HUB["bigvgan_v2_44k"].local_name)
    return base


def make_models_dir(root: Path, hub_cache: Path, variants=("tiny_16k",)) -> Path:
    """A complete models directory for the tiny variants, in the released layout."""
    import shutil

    register_tiny_variants()
    root.mkdir(parents=True, exist_ok=True)
    hub = _hub_cache(str(hub_cache))
    for snap in W.HUB.values():
        if (hub / snap.local_name).is_dir() and not (root / "hf" / snap.local_name).exists():
            shutil.copytree(hub / snap.local_name, root / "hf" / snap.local_name)
    write_video_enc(root / W.FILES["video_enc"].path)
    for name in variants:
        spec = V.VARIANTS[name]
        write_generator(root / W.FILES[spec.generator_file].path, spec.generator)
        write_vae(root / W.FILES[spec.vae_file].path, spec.vae)
        if spec.vocoder_file:
            write_bigvgan_v1(root / W.FILES[spec.vocoder_file].path)
    return root
