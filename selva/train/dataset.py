"""Training datasets: a folder of features ``.npz`` with a same-stem audio file per clip.

Which clips a folder holds is read by :func:`selva.datasets.read_dataset` (the one reader; see
:mod:`selva.datasets.reader` for the layout).

A clip's prompt is, first found: its line in ``prompts.txt``, its ``.txt`` caption, the prompt
stored in the ``.npz``, the folder name. SelVA's sync features depend on the prompt, so a prompt
that differs from the stored one is re-encoded from the frames kept in the features (only then
do T5, CLIP and the TextSynchformer load).

The audio is mixed to mono, resampled to the model's rate, trimmed or zero-padded to the
features' duration and VAE-encoded once; the posterior (mean, std) is cached on disk keyed by
the audio's content and the variant, so later runs skip the VAE entirely.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..artifacts import load_safetensors, write_safetensors
from ..compat.datasets import earlier_clip_features
from ..errors import SelvaError
from ..features import Features, content_hash
from ..hooks import Hooks, or_default
from ..variants import SeqLengths
from ..datasets.reader import ClipFiles, read_dataset
from .audio_files import fit_audio, read_audio
from .files import file_digest
from .loss import ClipConditions

log = logging.getLogger(__name__)

CACHE_SUBDIR = ".selva_cache"
LATENT_CACHE_VERSION = 1


def folder_prompt(data_dir: Path) -> str:
    return re.sub(r"[_\-]+", " ", Path(data_dir).expanduser().resolve().name).strip()


# ------------------------------------------------------------------------------ encoded clips
@dataclass
class TrainClip:
    """One clip ready for the loss: VAE posterior and condition features, all on the CPU."""

    name: str
    prompt: str
    seq: SeqLengths
    latent_mean: torch.Tensor  # (L, C) VAE latent space (not yet normalised)
    latent_std: torch.Tensor  # (L, C)
    conditions: ClipConditions
    features: Features  # with the training prompt (for eval samples)
    audio_path: Path  # the recording the latents were encoded from (eval samples are measured against it)

    @property
    def seq_key(self) -> tuple[int, int, int]:
        return (self.seq.latent, self.seq.clip, self.seq.sync)


@dataclass
class TrainDataset:
    clips: list[TrainClip]
    digest: str  # of every features file, audio file and prompt
    data_dir: Path

    def __len__(self) -> int:
        return len(self.clips)


class LatentCache:
    """VAE posteriors on disk (safetensors), keyed by audio content + variant + length."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def key(self, variant: str, vae_dtype: torch.dtype, audio_digest: str, samples: int) -> str:
        return content_hash(["vae-posterior", LATENT_CACHE_VERSION, variant, str(vae_dtype),
                             audio_digest, samples])

    def get(self, key: str) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        path = self.directory / f"{key}.safetensors"
        if not path.is_file():
            return None
        try:
            data, _ = load_safetensors(path, "latent cache")
            return data["mean"], data["std"]
        except (SelvaError, KeyError) as e:  # a broken cache entry only costs a re-encode
            log.warning("Ignoring unreadable latent cache entry %s (%s)", path, e)
            return None

    def put(self, key: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_safetensors(self.directory / f"{key}.safetensors", {"mean": mean, "std": std},
                              {"format": "selva-latent-cache"})
        except OSError as e:
            log.warning("Could not write the latent cache in %s (%s); continuing without it.",
                        self.directory, e)


def load_clip_features(clip: ClipFiles, variant: str) -> Features:
    try:
        features = Features.load(clip.features_path)
    except SelvaError as e:
        raise SelvaError(f"Clip {clip.stem}: {e}") from e
    if features.variant != variant:
        raise SelvaError(f"Clip {clip.stem} ({clip.features_path.name}) holds features of variant "
                         f"{features.variant!r}, but the model is {variant!r}. Extract the features "
                         f"again with a {variant} model.")
    return features


def encode_posterior(pipe, wave_1t: torch.Tensor, seq: SeqLengths) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior (mean, std), each (L, C) float32 CPU, of a mono clip at the model's rate."""
    posterior = pipe.decoding.vae_encode(pipe.decoding.log_mel(wave_1t[None], pipe.sample_rate))
    mean, std = posterior.mean.float().cpu(), posterior.std.float().cpu()
    if mean.shape[-1] < seq.latent:
        raise SelvaError(f"The VAE made {mean.shape[-1]} latent frames, {seq.latent} are needed "
                         f"(audio of {wave_1t.shape[-1]} samples).")
    return mean[0, :, :seq.latent].T.contiguous(), std[0, :, :seq.latent].T.contiguous()


def _conditions(features: Features, seq: SeqLengths, name: str) -> ClipConditions:
    sync = features.sync_features[0]
    if sync.shape[0] < seq.sync:
        raise SelvaError(f"Clip {name}: the features hold {sync.shape[0]} sync tokens but "
                         f"{seq.duration:.2f} s needs {seq.sync}; extract the features again.")
    clip_f = None
    if features.clip_features is not None:
        clip_f = features.clip_features[0, :seq.clip].float()
    return ClipConditions(clip_f=clip_f, sync_f=sync[:seq.sync].float(), text_clip=features.text_clip[0].float())


def load_dataset(pipe, data_dir: Path, *, cache_dir: Optional[Path] = None,
                 hooks: Optional[Hooks] = None) -> TrainDataset:
    """Every clip of ``data_dir`` encoded for training (posteriors cached, prompts applied)."""
    hooks = or_default(hooks)
    data_dir = Path(data_dir).expanduser()
    files = read_dataset(data_dir)
    cache = LatentCache(Path(cache_dir) if cache_dir else data_dir / CACHE_SUBDIR / "latents")
    variant = pipe.variant.name
    vae_dtype = pipe.stage_dtype("vae")
    fallback_prompt = folder_prompt(data_dir)
    digest = hashlib.blake2b(digest_size=16)
    clips = []
    for i, clip in enumerate(files, 1):
        features = (earlier_clip_features(pipe, clip.features_path, clip.caption, fallback_prompt, hooks)
                    or load_clip_features(clip, variant))  # the earlier pack's .npz, or ours
        prompt = clip.caption if clip.caption is not None else (features.prompt or fallback_prompt)
        if prompt != features.prompt:
            log.info("Clip %s: re-encoding the features for the prompt %r", clip.stem, prompt)
            features = pipe.encoding.features_for_prompt(features, prompt, hooks)
        seq = pipe.variant.seq_lengths(features.duration)
        audio_digest = file_digest(clip.audio_path)
        key = cache.key(variant, vae_dtype, audio_digest, seq.audio_samples)
        cached = cache.get(key)
        if cached is None:
            wave, rate = read_audio(clip.audio_path)
            mono = fit_audio(wave, rate, pipe.sample_rate, seq.audio_samples)
            cached = encode_posterior(pipe, mono, seq)
            cache.put(key, *cached)
        mean, std = cached
        clips.append(TrainClip(clip.stem, prompt, seq, mean, std, _conditions(features, seq, clip.stem),
                               features, clip.audio_path))
        digest.update(f"{clip.stem}|{file_digest(clip.features_path)}|{audio_digest}|{prompt}\n".encode())
        hooks.step("dataset", i, len(files))
    return TrainDataset(clips, digest.hexdigest(), data_dir)


def group_by_length(clips: Sequence[TrainClip], indices: Sequence[int]) -> list[list[int]]:
    """Positions into ``indices`` grouped by sequence lengths (clips of one duration batch together)."""
    groups: dict[tuple, list[int]] = {}
    for pos, idx in enumerate(indices):
        groups.setdefault(clips[idx].seq_key, []).append(pos)
    return list(groups.values())
