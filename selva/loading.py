"""Build every network a pipeline needs and fill it from the released files.

Networks are built on the meta device and take the checkpoint's tensors as they are
(``assign=True``): no time is spent on a random initialisation that would be overwritten, and
memory holds one copy of the weights.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from . import weights as W
from .errors import SelvaError
from .hooks import Hooks
from .models.generator import SelvaGenerator, load_generator_weights
from .models.mel import MelConverter
from .models.state_dicts import unset_tensors
from .models.text_synch import TextSynchformer, load_text_synch_weights
from .models.vae import load_vae

try:
    from ..bigvgan.loading import load_bigvgan_v1, load_bigvgan_v2
except ImportError:  # selva imported as a top-level package (python -m selva)
    from bigvgan.loading import load_bigvgan_v1, load_bigvgan_v2

if TYPE_CHECKING:
    from .pipeline import SelvaPipeline
    from .variants import VariantSpec

log = logging.getLogger(__name__)

# Generator sequence lengths at construction; every generation sets its own.
_DEFAULT_DURATION = 8.0


def stage_dtypes(precision_dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Compute dtype per stage.

    fp16 overflows in T5 (its feed-forward activations exceed 65504) and in the VAE decoder and
    vocoder (large convolution sums), so under fp16 those run in fp32; the transformer stages
    keep fp16 with their norms and softmax in fp32 inside the networks. bf16 has fp32's range:
    everything runs in bf16, as the official demo does. The mel converter is always fp32.
    """
    fp16 = precision_dtype == torch.float16
    wide = torch.float32 if fp16 else precision_dtype
    return {"t5": wide, "clip": precision_dtype, "text_synch": precision_dtype,
            "generator": precision_dtype, "vae": wide, "vocoder": wide, "mel": torch.float32}


def required_files(spec: "VariantSpec") -> list[W.WeightFile]:
    files = [W.FILES[spec.video_enc_file], W.FILES[spec.generator_file], W.FILES[spec.vae_file]]
    if spec.vocoder_file:
        files.append(W.FILES[spec.vocoder_file])
    return files


def required_snapshots(spec: "VariantSpec") -> list[W.HubSnapshot]:
    snaps = [W.HUB["t5"], W.HUB["clip"]]
    if spec.vocoder_snapshot:
        snaps.append(W.HUB[spec.vocoder_snapshot])
    return snaps


def resolve_all(spec: "VariantSpec", models_dir: Path, allow_download: bool) -> dict[str, Path]:
    """Paths of every file and snapshot the variant needs; one error lists everything missing."""
    files, snaps = required_files(spec), required_snapshots(spec)
    if not allow_download or W.downloads_disabled():
        missing = W.check_available(files, snaps, models_dir)
        if missing:
            raise W.missing_error(missing)
    paths = {wf.key: W.resolve_file(wf, models_dir, allow_download=allow_download) for wf in files}
    paths.update({s.key: W.resolve_snapshot(s, models_dir, allow_download=allow_download) for s in snaps})
    return paths


def _load_file_into(build: Callable[[], nn.Module], load: Callable[..., None], path: Path,
                    **kwargs) -> nn.Module:
    with torch.device("meta"):
        net = build()
    load(net, W.load_checkpoint(path), source=str(path), **kwargs)
    leftover = unset_tensors(net)
    if leftover:  # a loader that forgot a derived buffer: fail loudly rather than compute on air
        raise SelvaError(f"Internal error: {path} left {len(leftover)} tensors unset ({leftover[:3]}).")
    return net


def load_networks(pipe: "SelvaPipeline", hooks: Hooks) -> None:
    """Resolve, load and register every stage of ``pipe`` with its offload manager."""
    from .encoders.clip import ClipEncoder
    from .encoders.t5 import T5TextEncoder

    spec, opts, mgr = pipe.variant, pipe.options, pipe.manager
    dtypes = stage_dtypes(pipe.dtype)
    paths = resolve_all(spec, Path(opts.models_dir), opts.allow_download)
    seq = spec.seq_lengths(_DEFAULT_DURATION)
    total = 7
    hooks.step("loading", 0, total)

    mgr.add("t5", T5TextEncoder.from_pretrained(paths["t5"]), dtypes["t5"])
    hooks.step("loading", 1, total)
    mgr.add("clip", ClipEncoder.from_pretrained(paths["clip"], image=opts.clip_frames), dtypes["clip"])
    hooks.step("loading", 2, total)
    video_enc = paths[spec.video_enc_file]
    mgr.add("text_synch", _load_file_into(lambda: TextSynchformer(spec.text_synch),
                                          load_text_synch_weights, video_enc), dtypes["text_synch"])
    hooks.step("loading", 3, total)
    mgr.add("generator", _load_file_into(
        lambda: SelvaGenerator(spec.generator, latent_seq_len=seq.latent, clip_seq_len=seq.clip,
                               sync_seq_len=seq.sync),
        load_generator_weights, paths[spec.generator_file]), dtypes["generator"])
    hooks.step("loading", 4, total)

    vae_path = paths[spec.vae_file]
    mgr.add("vae", load_vae(vae_path, spec.vae, need_encoder=False), dtypes["vae"])
    pipe._vae_encoder_loader = lambda: _reload_vae_with_encoder(pipe, vae_path, dtypes["vae"])
    hooks.step("loading", 5, total)
    if spec.vocoder == "bigvgan_v1":
        path = paths[spec.vocoder_file]
        cfg = spec.vocoder_config
        vocoder = load_bigvgan_v1(path, source=str(path)) if cfg is None else \
            load_bigvgan_v1(path, cfg, source=str(path))
    else:
        vocoder = load_bigvgan_v2(paths[spec.vocoder_snapshot])
    mgr.add("vocoder", vocoder, dtypes["vocoder"])
    hooks.step("loading", 6, total)
    mgr.add("mel", MelConverter(spec.mel), dtypes["mel"])
    hooks.step("loading", 7, total)


def _reload_vae_with_encoder(pipe: "SelvaPipeline", path: Path, dtype: torch.dtype) -> None:
    """The VAE with its encoder (only the VAE round trip needs it), replacing the decoder-only one."""
    spec = pipe.variant
    log.info("Loading the VAE encoder from %s for the round trip", path)
    pipe.manager.add("vae", load_vae(path, spec.vae, need_encoder=True), dtype)
