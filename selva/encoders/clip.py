"""DFN5B CLIP ViT-H/14 (open_clip): prompt token features and, optionally, video frame features.

SelVA's generator reads CLIP text features *per token* — the text transformer's ``ln_final``
output for all 77 positions, L2-normalised — rather than open_clip's pooled text embedding.
Frame features are open_clip's normal image embeddings.

The released snapshot (``open_clip_config.json`` + ``open_clip_pytorch_model.bin``) holds both
towers; the 632M-parameter image tower is only needed when CLIP sees video frames, which the
official demo does not do. So by default the network is built on the meta device, the image tower
is dropped (rule: every key under :data:`IMAGE_PREFIX`), and only the text tensors are read from
the (memory-mapped) file. Every tensor's name and shape is still checked against the architecture
in the config, so a wrong or truncated file is reported, never half-loaded.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SelvaError
from ..models.state_dicts import check_fit, shapes_of, unset_tensors
from ..weights import load_checkpoint

log = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"
IMAGE_PREFIX = "visual."
# The reference's tokenizer name: open_clip's built-in config for it gives the standard
# SimpleTokenizer (lower-cased BPE, 77 tokens), which ships with open_clip: no download.
TOKENIZER_NAME = "ViT-H-14-378-quickgelu"
FRAME_SIZE = 384  # the reference feeds 384x384 frames (the tower's 378 grid ignores the last 6 px)
# Normalisation the reference applies to frames before the image tower (OpenAI CLIP's values).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Config entries that select architectures other than the plain open_clip CLIP built here.
_UNSUPPORTED_CFG = ("custom_text", "multimodal_cfg")

OnBatch = Callable[[int, int], None]


class ClipEncoder(nn.Module):
    """open_clip CLIP with the reference's text and frame encodings."""

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, directory: Union[str, Path], image: bool = False) -> "ClipEncoder":
        """Load from a local snapshot folder; ``image=True`` keeps the image tower too."""
        directory = Path(directory)
        model_cfg = read_model_config(directory)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise SelvaError(f"CLIP snapshot {directory} lacks {WEIGHTS_FILE}: download "
                             f"apple/DFN5B-CLIP-ViT-H-14-384 again.")
        model = build_clip(model_cfg, device="meta")
        load_clip_weights(model, load_checkpoint(weights), source=str(weights), image=image)
        tokenizer = _tokenizer(model.context_length)
        log.debug("CLIP loaded from %s (%s)", weights, "text + image" if image else "text only")
        return cls(model, tokenizer)

    @property
    def has_image_tower(self) -> bool:
        return getattr(self.model, "visual", None) is not None

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.token_embedding.weight.dtype

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise SelvaError("ClipEncoder takes a list of prompts, not a single string.")
        return self.tokenizer(list(texts))

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``(B, 77, width)`` unit-length per-token features (the reference's patched encode_text)."""
        m = self.model
        tokens = self.tokenize(texts).to(self.device)
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast_dtype)
        x = x + m.positional_embedding.to(cast_dtype)
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        return F.normalize(x, dim=-1)

    @torch.inference_mode()
    def encode_frames(self, frames: torch.Tensor, batch_size: int = -1,
                      on_batch: Optional[OnBatch] = None) -> torch.Tensor:
        """``(B, T, 3, 384, 384)`` frames in [0, 1] -> ``(B, T, embed_dim)`` unit-length features.

        Frames go through the image tower ``batch_size`` at a time (all at once if < 1);
        ``on_batch(done, total)`` reports progress in frames.
        """
        if not self.has_image_tower:
            raise SelvaError("CLIP was loaded without its image tower (text only); load it with "
                             "image=True to encode video frames.")
        if frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[-2:] != (FRAME_SIZE, FRAME_SIZE):
            raise SelvaError(f"CLIP frames must be (B, T, 3, {FRAME_SIZE}, {FRAME_SIZE}), got "
                             f"{tuple(frames.shape)}.")
        b, t = frames.shape[:2]
        x = _normalize(frames.to(self.device)).flatten(0, 1)
        total = b * t
        step = total if batch_size < 1 else batch_size
        out = []
        for start in range(0, total, step):
            out.append(self.model.encode_image(x[start:start + step].to(self.dtype), normalize=True))
            if on_batch is not None:
                on_batch(min(start + step, total), total)
        return torch.cat(out).unflatten(0, (b, t))


def _normalize(frames01: torch.Tensor) -> torch.Tensor:
    # as torchvision's Normalize: constants in the frames' dtype, subtract then divide
    mean = torch.as_tensor(CLIP_MEAN, dtype=frames01.dtype, device=frames01.device).view(-1, 1, 1)
    std = torch.as_tensor(CLIP_STD, dtype=frames01.dtype, device=frames01.device).view(-1, 1, 1)
    return (frames01 - mean) / std


def read_model_config(directory: Path) -> dict:
    """``model_cfg`` of the snapshot's ``open_clip_config.json``, checked for what we support."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise SelvaError(f"CLIP snapshot {directory} lacks {CONFIG_FILE}: download "
                         f"apple/DFN5B-CLIP-ViT-H-14-384 again.")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))["model_cfg"]
    except (ValueError, KeyError, TypeError) as e:
        raise SelvaError(f"{path} is not an open_clip config with a 'model_cfg': {e}") from e
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    odd = [k for k in _UNSUPPORTED_CFG if cfg.get(k)]
    odd += [k for k in ("timm_model_name",) if vision.get(k)] + [k for k in ("hf_model_name",) if text.get(k)]
    if odd:
        raise SelvaError(f"{path} describes a CLIP variant this loader does not build ({', '.join(odd)}).")
    return cfg


def build_clip(model_cfg: dict, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """open_clip's ``CLIP(**model_cfg)`` in fp32, as ``create_model`` builds it for that config."""
    import open_clip

    with torch.device(device):
        return open_clip.CLIP(**model_cfg, cast_dtype=None)


def load_clip_weights(model: nn.Module, state_dict: dict, source: str, image: bool) -> None:
    """Fill ``model`` (built on any device, meta included) strictly from the snapshot's state dict.

    All names and shapes are checked against the full architecture; with ``image=False`` the
    image tower is then removed from ``model`` and its tensors are never read.
    """
    expected = shapes_of(model.state_dict())
    check_fit(expected, state_dict, source=source, what=f"CLIP architecture in its {CONFIG_FILE}",
              hint="Is it the open_clip file of apple/DFN5B-CLIP-ViT-H-14-384?")
    if not image:
        del model.visual
    wanted = {k for k in expected if image or not k.startswith(IMAGE_PREFIX)}
    # Assigned as they are (fp32 in the release): the network uses the memory-mapped file's pages
    # directly, like every other stage, so loading never holds two copies of the text tower.
    tensors = {k: v.float() if v.is_floating_point() else v
               for k, v in state_dict.items() if k in wanted}
    model.load_state_dict(tensors, strict=True, assign=True)
    _rebuild_causal_mask(model)
    # anything still on the meta device that the file did not provide would compute on air
    leftover = unset_tensors(model, ignore=tensors.keys())
    if leftover:
        raise SelvaError(f"Internal error: loading {source} left tensors unset: {leftover[:3]}.")


def _rebuild_causal_mask(model: nn.Module) -> None:
    # attn_mask is a non-persistent buffer (not in the file): recreate open_clip's causal mask
    n = model.attn_mask.shape[-1]
    mask = torch.full((n, n), float("-inf")).triu_(1)
    model.register_buffer("attn_mask", mask, persistent=False)


def _tokenizer(context_length: int):
    import open_clip

    tokenizer = open_clip.get_tokenizer(TOKENIZER_NAME)
    if tokenizer.context_length != context_length:
        raise SelvaError(f"The CLIP config's context length ({context_length}) differs from the "
                         f"tokenizer's ({tokenizer.context_length}).")
    return tokenizer
