"""The small public API shared by the ComfyUI nodes and the CLI.

    pipe = SelvaPipeline.load(LoadOptions(variant="small_16k", precision="bf16"))
    feats = pipe.extract_features_from_video("clip.mp4", "a dog barking")
    audio = pipe.generate(feats, negative_prompt="music", seed=42)   # (1, 1, T) at pipe.sample_rate

Generation follows the official demo step by step (same encoders, same order, same noise), so the
same weights, inputs and seed give the official audio.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from . import accel
from . import audio as audio_ops
from . import streamed_encode
from . import video as video_ops
from .errors import SelvaError
from .features import FORMAT_VERSION, FeatureCache, Features, content_hash
from .hooks import NO_HOOKS, Hooks, or_default
from .loading import StageBuilders, prefetch, register_stages
from .long_video import WindowOptions, WindowPlan, default_decode_spans, plan_windows, sample_windows
from .memo import BackboneCache, EncodingCache
from .models.generator import Conditions, SelvaGenerator
from .models.text_synch import TextSynchformer
from .offload import (OffloadManager, pick_device, releases_after_use, resolve_dtype, resolve_offload,
                      returns_idle_memory)
from .patches import GeneratorPatch, attached
from .residency import Residency
from .sampling import euler_sample, initial_noise
from .tiled_decode import decode_tiles
from .variants import LATENT_DOWNSAMPLE, VariantSpec, get_variant
from .weights import default_models_dir

log = logging.getLogger(__name__)

Frames = Union[torch.Tensor, np.ndarray]  # (T, H, W, 3) uint8, or float in [0, 1]


@dataclass
class LoadOptions:
    variant: str = "small_16k"
    precision: str = "bf16"  # bf16 | fp16 | fp32
    offload: str = "auto"  # auto | keep_in_vram | offload_to_cpu
    device: Optional[str] = None  # None: CUDA, then MPS, then CPU
    models_dir: Optional[Path] = None  # None: $SELVA_MODELS_DIR or ./models/selva
    clip_frames: bool = False  # official demo: False (the generator's learned empty CLIP sequence)
    allow_download: bool = True
    tf32: bool = True  # CUDA only: TF32 matmuls while SelVA runs, as the official demo (selva/accel.py)
    compile: bool = False  # torch.compile the generator (selva/accel.py: when it recompiles)


@dataclass(frozen=True)
class PreparedInput:
    """Frames chosen and resized for both encoders, with their masks: no network ran yet."""

    frames: video_ops.PreparedFrames
    sync_mask: Optional[torch.Tensor] = None  # (1 | Ts, 224, 224) in [0, 1], 1 = keep
    clip_mask: Optional[torch.Tensor] = None  # (1 | Tc, 384, 384)
    mask_strength: float = 1.0

    @property
    def duration(self) -> float:
        return self.frames.duration


def _masks_for(frames: video_ops.PreparedFrames, mask: Optional[torch.Tensor], strength: float,
               mask_clip: bool, mask_sync: bool) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The mask frames that go with the chosen sync / clip frames, at the encoders' sizes.

    ``mask_clip`` is only honoured by pipelines that feed CLIP frames at all.
    """
    if mask is None or strength == 0:
        return None, None
    video_ops.warn_if_mask_stretched(mask, frames.source_size)
    # Selecting validates the mask against the video even when the sync path is switched off.
    sync = video_ops.mask_for_indices(mask, frames.sync_indices, frames.n_source_frames)
    clip = None
    if mask_clip:
        picked = video_ops.mask_for_indices(mask, frames.clip_indices, frames.n_source_frames)
        clip = video_ops.resize_mask(picked, video_ops.CLIP_SIZE)
    return (video_ops.resize_mask(sync, video_ops.SYNC_SIZE) if mask_sync else None, clip)


@dataclass
class TextFeatures:
    """One prompt, encoded: T5 per-token features with their mask, CLIP per-token features."""

    t5: torch.Tensor
    t5_mask: torch.Tensor
    clip: torch.Tensor


class SelvaPipeline:
    """All SelVA networks for one variant, with their device policy."""

    def __init__(self, variant: VariantSpec, options: LoadOptions, manager: OffloadManager,
                 dtype: torch.dtype):
        self.variant = variant
        self.options = options
        self.manager = manager
        self.dtype = dtype
        self._builders = None  # set by load(): rebuilds the VAE with its encoder when needed
        self._vae_stats: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # read on first use
        # What loaders attached (see selva/patches.py): shared networks, per-view additions.
        self.generator_patches: tuple[GeneratorPatch, ...] = ()
        self.stage_overrides: dict[str, str] = {}
        # Parts a view adds to every feature key (e.g. a textual-inversion embedding's digest):
        # anything that changes what the encoders produce must be named here.
        self.feature_key_extra: tuple = ()
        # Re-encodings for Sampler prompts (and negative prompts), shared with every view.
        self._encodings = EncodingCache()
        self._backbone = BackboneCache()  # the last clip's text-independent sync-encoder tokens

    # ------------------------------------------------------------------------------- views
    def with_patches(self, generator: Sequence[GeneratorPatch] = (),
                     stages: Optional[dict[str, str]] = None,
                     feature_key: Sequence = ()) -> "SelvaPipeline":
        """A view of this pipeline with more generator patches and/or stage overrides.

        The view shares every network (and the offload manager) with ``self``; ``self`` is not
        changed, so other branches of a graph keep the base behaviour. ``feature_key`` parts
        (JSON-able values or tensors) join every feature cache key of the view: a patch that
        changes the features (textual inversion) passes its digest here.
        """
        view = copy.copy(self)
        view.feature_key_extra = self.feature_key_extra + tuple(feature_key)
        view.generator_patches = self.generator_patches + tuple(generator)
        view.stage_overrides = {**self.stage_overrides, **(stages or {})}
        for logical, actual in view.stage_overrides.items():
            if not self.manager.has(actual):
                raise SelvaError(f"Stage override {logical!r} -> {actual!r}: no such stage.")
        return view

    def stage_name(self, logical: str) -> str:
        """The offload-manager stage that serves ``logical`` in this view."""
        return self.stage_overrides.get(logical, logical)

    @contextlib.contextmanager
    def use_generator(self, extra_patches: Sequence[GeneratorPatch] = ()) -> Iterator[SelvaGenerator]:
        """The generator on the compute device with this view's patches (then ``extra_patches``,
        e.g. a Sampler's steering vectors) attached; everything attached is removed on exit."""
        with self.manager.use(self.stage_name("generator")) as gen:
            with attached(gen, self.generator_patches + tuple(extra_patches)):
                yield gen

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, options: LoadOptions, hooks: Optional[Hooks] = None,
             make_room: Optional[Callable[[int, torch.device], None]] = None,
             residency: Optional[Residency] = None) -> "SelvaPipeline":
        """A pipeline for ``options``: weights are fetched now (``hooks`` sees each file), networks
        load on first use. ``residency`` replaces the built-in offload policy (a host
        application's memory manager, see selva/residency.py); it must run on the same device."""
        spec = get_variant(options.variant)
        device = pick_device(options.device)
        dtype = resolve_dtype(options.precision, device)
        offload = resolve_offload(options.offload, device)
        models_dir = Path(options.models_dir) if options.models_dir else default_models_dir()
        options = replace(options, models_dir=models_dir)
        prefetch(spec, models_dir, options.allow_download, or_default(hooks))
        if residency is not None and residency.device != device:
            raise SelvaError(f"The residency backend runs on {residency.device} but the pipeline "
                             f"was asked to run on {device}.")
        # A host's memory manager decides residency itself; release-after-use is ours only.
        release = residency is None and releases_after_use(options.offload, device)
        manager = OffloadManager(device=device, offload=offload, make_room=make_room,
                                 residency=residency, release_after_use=release,
                                 return_idle_memory=returns_idle_memory(device))
        pipe = cls(spec, options, manager, dtype)
        pipe._builders = StageBuilders(spec, models_dir, options.allow_download, options.clip_frames)
        register_stages(manager, pipe._builders, dtype)
        log.info("SelVA %s ready on %s (%s, %s)", spec.name, device, options.precision,
                 type(residency).__name__ if residency is not None
                 else "release after use" if release
                 else "offload_to_cpu" if offload else "keep_in_vram")
        return pipe

    def preload(self, stages: Optional[tuple[str, ...]] = None, hooks: Optional[Hooks] = None) -> None:
        """Load stages now instead of on first use (all of them by default)."""
        hooks = or_default(hooks)
        names = stages or tuple(self.manager.stages)
        for i, name in enumerate(names, 1):
            self.manager.get(name)
            hooks.step("loading", i, len(names))

    @property
    def sample_rate(self) -> int:
        return self.variant.sample_rate

    @property
    def device(self) -> torch.device:
        return self.manager.device

    def stage_dtype(self, stage: str) -> torch.dtype:
        return self.manager.dtype(stage)

    def release(self) -> None:
        self.manager.release()
        self._backbone.clear()

    # ---------------------------------------------------------------------------- features
    def prepare(self, frames: Optional[Frames] = None, fps: Optional[float] = None, *,
                video_path: Optional[Union[str, Path, BinaryIO]] = None, duration: Optional[float] = None,
                mask: Optional[torch.Tensor] = None, mask_strength: float = 1.0,
                mask_clip: bool = True, mask_sync: bool = True,
                hooks: Optional[Hooks] = None, start: float = 0.0) -> PreparedInput:
        """Pick and resize frames (from memory or streamed from a file): no network runs.

        ``start`` seconds of the video are skipped (``duration`` counts from there); ``hooks``
        sees the decoding / resizing progress and can cancel it.
        """
        hooks = or_default(hooks)
        if not 0.0 <= mask_strength <= 1.0:
            raise SelvaError(f"mask_strength must be within [0, 1], got {mask_strength}.")
        if (frames is None) == (video_path is None):
            raise SelvaError("Give exactly one source: frames (with their fps) or a video file.")
        if video_path is not None:
            # progress in tenths of a second of video; the end is unknown without a duration
            span = int(round(10 * duration)) if duration else 0
            # Only a per-frame mask needs the whole file's frame count (reading to its end).
            per_frame_mask = mask is not None and mask_strength > 0 and video_ops.mask_frames(mask) > 1
            prepared = video_ops.decode_video(
                video_path, duration=duration or None, start=start, count_frames=per_frame_mask,
                on_frame=lambda sec: hooks.step("decode", min(max(int(10 * (sec - start)), 0), span), span))
        else:
            if fps is None or fps <= 0:
                raise SelvaError(f"The video's frame rate must be positive, got {fps}. Connect the "
                                 f"loader's video_info or set fps.")
            n = len(frames)
            prepared = video_ops.prepare_frames(frames, fps=fps, duration=duration or None, start=start,
                                                on_frame=lambda done: hooks.step("resize", done, n))
        sync_mask, clip_mask = _masks_for(prepared, mask, mask_strength,
                                          mask_clip and self.options.clip_frames, mask_sync)
        return PreparedInput(prepared, sync_mask, clip_mask, float(mask_strength))

    def encoder_identity(self) -> list:
        """What makes the encoders' output: their weight files (path, size, mtime) and the
        dtypes they really run in (bf16 that fell back to fp16 is fp16), plus the view's
        ``feature_key_extra``."""
        files = self._builders.feature_encoder_files() if self._builders is not None else []
        dtypes = [str(self.stage_dtype(name)) for name in ("t5", "clip", "text_synch")]
        return ["encoders", files, dtypes, *self.feature_key_extra]

    def feature_cache_key(self, prepared: PreparedInput, prompt: str, extra_key: Sequence = ()) -> str:
        """Digest of everything that changes the features: every pixel and mask value, the
        prompt, the encoders' weights and dtypes, and ``extra_key`` (JSON-able values or tensors
        of an adapter that changes the features, e.g. a textual-inversion embedding's digest)."""
        fr = prepared.frames
        use_clip = self.options.clip_frames
        return content_hash([
            "features", FORMAT_VERSION, self.variant.name, use_clip, *self.encoder_identity(),
            prompt, fr.duration, fr.fps, fr.sync_u8, fr.clip_u8 if use_clip else None,
            prepared.sync_mask, prepared.clip_mask if use_clip else None, prepared.mask_strength,
            *([fr.start] if fr.start else []),  # keys of features from 0 s stay as they were
            "extra", *extra_key,  # last: its length varies
        ])

    def encode(self, prepared: PreparedInput, prompt: str, hooks: Optional[Hooks] = None) -> Features:
        """Run the encoders: T5 and CLIP on the prompt, TextSynchformer (and CLIP) on the frames."""
        hooks = or_default(hooks)
        with accel.tf32(self.device, self.options.tf32):
            return self._encode(prepared, prompt, hooks)

    def _encode(self, prepared: PreparedInput, prompt: str, hooks: Hooks) -> Features:
        text = self.encode_text(prompt, hooks)
        sync_features = self.encode_sync(prepared.frames.sync_u8, prepared.sync_mask,
                                          prepared.mask_strength, text, hooks)
        clip_features = None
        if self.options.clip_frames:  # the clip mask is already one frame per clip frame (or 1)
            with self.manager.use("clip") as clip:
                clip_features = streamed_encode.encode_clip(
                    clip, prepared.frames.clip_u8, prepared.clip_mask, prepared.mask_strength,
                    self.stage_dtype("clip"), on_batch=lambda d, n: hooks.step("clip", d, n))
        return Features(variant=self.variant.name, prompt=prompt, duration=prepared.duration,
                        fps=float(prepared.frames.fps or 0.0), text_t5=text.t5.float().cpu(),
                        text_t5_mask=text.t5_mask.cpu(), text_clip=text.clip.float().cpu(),
                        sync_features=sync_features.float().cpu(),
                        sync_frames_u8=prepared.frames.sync_u8.permute(0, 2, 3, 1).contiguous(),
                        clip_features=None if clip_features is None else clip_features.float().cpu(),
                        sync_mask=prepared.sync_mask, mask_strength=prepared.mask_strength,
                        start=prepared.frames.start)

    def extract_features(self, frames: Frames, fps: float, prompt: str, *,
                         duration: Optional[float] = None, mask: Optional[torch.Tensor] = None,
                         mask_strength: float = 1.0, mask_clip: bool = True, mask_sync: bool = True,
                         cache: Optional[FeatureCache] = None, hooks: Optional[Hooks] = None,
                         start: float = 0.0) -> Features:
        prepared = self.prepare(frames, fps, duration=duration, mask=mask, mask_strength=mask_strength,
                                mask_clip=mask_clip, mask_sync=mask_sync, hooks=hooks, start=start)
        return self.encode_cached(prepared, prompt, cache, hooks)

    def extract_features_from_video(self, path: Union[str, Path, BinaryIO], prompt: str, *,
                                    duration: Optional[float] = None, mask: Optional[torch.Tensor] = None,
                                    mask_strength: float = 1.0, mask_clip: bool = True,
                                    mask_sync: bool = True, cache: Optional[FeatureCache] = None,
                                    hooks: Optional[Hooks] = None, start: float = 0.0) -> Features:
        prepared = self.prepare(video_path=path, duration=duration, mask=mask, mask_strength=mask_strength,
                                mask_clip=mask_clip, mask_sync=mask_sync, hooks=hooks, start=start)
        return self.encode_cached(prepared, prompt, cache, hooks)

    def encode_cached(self, prepared: PreparedInput, prompt: str, cache: Optional[FeatureCache],
                      hooks: Optional[Hooks] = None, extra_key: Sequence = ()) -> Features:
        """:meth:`encode`, skipped when ``cache`` already holds features for exactly this input
        (``extra_key``: see :meth:`feature_cache_key`)."""
        if cache is None:
            return self.encode(prepared, prompt, hooks)
        key = self.feature_cache_key(prepared, prompt, extra_key)
        hit = cache.get(key)
        if hit is not None:
            log.info("Features loaded from cache %s", cache.path(key))
            return hit
        features = self.encode(prepared, prompt, hooks)
        cache.put(key, features)
        return features

    # ----------------------------------------------------------------------------- encoders
    def encode_text(self, prompt: str, hooks: Hooks = NO_HOOKS) -> TextFeatures:
        # Each network is used in a function of its own: a released one (offload_to_cpu on the
        # CPU) is freed when that function returns, not only after the next stage ran.
        t5_f, t5_mask = self._encode_t5(prompt)
        hooks.step("text", 1, 2)
        clip_text = self.encode_clip_text([prompt])
        hooks.step("text", 2, 2)
        return TextFeatures(t5_f, t5_mask, clip_text)

    def _encode_t5(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        with self.manager.use("t5") as t5:
            return t5.encode([prompt])

    def encode_clip_text(self, texts: list[str]) -> torch.Tensor:
        """Per-token CLIP text features (B, 77, D), unit length, as the generator takes them."""
        with self.manager.use("clip") as clip:
            return clip.encode_text(texts)

    def encode_sync(self, sync_u8_tchw: torch.Tensor, sync_mask: Optional[torch.Tensor],
                    mask_strength: float, text: TextFeatures, hooks: Hooks = NO_HOOKS) -> torch.Tensor:
        """Text-conditioned sync features (1, S * 8, D) of 25 fps uint8 frames (T, 3, 224, 224).

        A clip of one chunk (up to ~8 s, selva/streamed_encode.py) is encoded in one piece, and
        its backbone tokens -- they do not depend on the prompt -- are kept, so another prompt on
        the same frames runs only the text cross-attention and the pooling. A longer clip is
        converted and encoded a chunk at a time so that memory stays bounded whatever its
        length; its tokens (hundreds of MB per minute) are not kept.
        """
        on_batch = lambda d, n: hooks.step("sync encoder", d, n)  # noqa: E731
        with self.manager.use("text_synch") as net:
            net: TextSynchformer
            text_f = text.t5.to(self.device, net.dtype)
            text_f, text_mask = net.prepend_sup_tokens(text_f, text.t5_mask.to(self.device))
            if not streamed_encode.fits_one_chunk(sync_u8_tchw.shape[0]):
                return streamed_encode.encode_sync(net, sync_u8_tchw, sync_mask, mask_strength, text_f,
                                                   text_mask, on_batch=on_batch)
            key = content_hash(["sync backbone", self.variant.name, *self.encoder_identity()[:3],
                                sync_u8_tchw, sync_mask, float(mask_strength)])
            tokens = self._backbone.get(key)
            if tokens is None:
                frames = streamed_encode.sync_input(net, sync_u8_tchw, sync_mask, mask_strength)
                tokens = net.backbone_tokens(frames, on_batch=on_batch)
                del frames
                self._backbone.put(key, tokens)
            else:
                log.info("Sync encoder: reusing the video's backbone tokens (only the prompt changed)")
                hooks.step("sync encoder", 1, 1)
            return net.encode_tokens(tokens, text_f, text_mask)

    def sync_features_for_text(self, features: Features, text_t5: torch.Tensor, text_t5_mask: torch.Tensor,
                               hooks: Optional[Hooks] = None) -> torch.Tensor:
        """Sync features (1, S * 8, D), float32 on the CPU, of the frames kept in ``features``
        (with their sync mask and mask strength, as extracted) conditioned on the T5 sequence
        ``text_t5`` (1, L, 768) / ``text_t5_mask`` (1, L) instead of the features' own.

        For callers that change the T5 sequence itself (textual inversion's ``clip_t5`` path
        appends learned tokens). The supplementary tokens are put in front here, as for a
        prompt. The result is remembered in memory keyed by the sequence's content, and the
        backbone tokens of the frames are reused (:meth:`encode_sync`), so a re-run costs nothing.
        """
        hooks = or_default(hooks)
        if features.variant != self.variant.name:
            raise SelvaError(f"These features were extracted with {features.variant!r}, the model is "
                             f"{self.variant.name!r}; extract them again with this model.")
        t5 = text_t5.detach().float().cpu()
        mask = text_t5_mask.detach().cpu()
        key = content_hash(["sync for text", self.variant.name, *self.encoder_identity(),
                            features.sync_frames_u8, features.sync_mask, float(features.mask_strength),
                            t5, mask])
        hit = self._encodings.get(key)
        if hit is not None:
            log.info("Using the cached sync features for this T5 sequence")
            return hit["sync_features"]
        frames_tchw = features.sync_frames_u8.permute(0, 3, 1, 2)
        # only the T5 side is read by encode_sync; the CLIP sequence is carried along unchanged
        text = TextFeatures(t5, mask, features.text_clip)
        with accel.tf32(self.device, self.options.tf32):
            sync = self.encode_sync(frames_tchw, features.sync_mask, features.mask_strength, text, hooks)
        sync = sync.float().cpu()
        self._encodings.put(key, {"sync_features": sync})
        return sync

    def encode_clip_frames(self, frames01: torch.Tensor, hooks: Hooks = NO_HOOKS) -> torch.Tensor:
        """CLIP image features (1, T, D) of 8 fps frames (T, 3, 384, 384) in [0, 1]."""
        with self.manager.use("clip") as clip:
            return clip.encode_frames(frames01[None].to(self.device, self.stage_dtype("clip")),
                                      batch_size=40, on_batch=lambda d, n: hooks.step("clip", d, n))

    def features_for_prompt(self, features: Features, prompt: Optional[str],
                            hooks: Optional[Hooks] = None) -> Features:
        """``features`` as if extracted with ``prompt`` (text and sync features re-encoded from the
        stored frames; the same object when the prompt is unchanged)."""
        return self._features_for_prompt(features, prompt, or_default(hooks))

    def _features_for_prompt(self, features: Features, prompt: Optional[str], hooks: Hooks) -> Features:
        """``features`` re-encoded for another prompt (SelVA's sync features depend on the text).

        The result is remembered (a few entries, in memory), so re-running a Sampler whose prompt
        differs from the features' prompt does not run T5, CLIP and the sync encoder again.
        """
        if not prompt or prompt == features.prompt:
            return features
        key = content_hash(["prompt features", self.variant.name, *self.encoder_identity(), prompt,
                            features.variant, features.sync_frames_u8, features.sync_mask,
                            features.mask_strength])
        hit = self._encodings.get(key)
        if hit is not None:
            log.info("Using the cached encoding of prompt %r", prompt)
            return replace(features, prompt=prompt, **hit)
        log.info("Prompt differs from the one the features were extracted with: re-encoding text "
                 "and sync features for %r", prompt)
        text = self.encode_text(prompt, hooks)
        frames_tchw = features.sync_frames_u8.permute(0, 3, 1, 2)
        sync = self.encode_sync(frames_tchw, features.sync_mask, features.mask_strength, text, hooks)
        encoded = dict(text_t5=text.t5.float().cpu(), text_t5_mask=text.t5_mask.cpu(),
                       text_clip=text.clip.float().cpu(), sync_features=sync.float().cpu())
        self._encodings.put(key, encoded)
        return replace(features, prompt=prompt, **encoded)

    def _negative_text(self, negative_prompt: str) -> torch.Tensor:
        """CLIP text features of the negative prompt, remembered like re-encoded prompts."""
        key = content_hash(["negative", self.variant.name, *self.encoder_identity(), negative_prompt])
        hit = self._encodings.get(key)
        if hit is None:
            hit = {"clip": self.encode_clip_text([negative_prompt]).cpu()}
            self._encodings.put(key, hit)
        return hit["clip"]

    # ---------------------------------------------------------------------------- generation
    def generate(self, features: Features, *, prompt: Optional[str] = None, negative_prompt: str = "",
                 duration: Optional[float] = None, steps: int = 25, cfg_strength: float = 4.5,
                 seed: int = 0, batch_size: int = 1, hooks: Optional[Hooks] = None,
                 extra_patches: Sequence[GeneratorPatch] = (),
                 noise: Optional[torch.Tensor] = None,
                 windows: Optional[WindowOptions] = None) -> torch.Tensor:
        """Audio for ``features``: (batch_size, 1, samples) float32 on the CPU at ``sample_rate``.

        Variation ``i`` of a batch equals a single run with ``seed + i``. ``extra_patches`` are
        attached for this call only (a Sampler's steering vectors); ``noise`` replaces the
        seeded initial noise (DITTO's optimised x0, shaped like it). Clips longer than one
        window (``windows``, default 8 s) are sampled in overlapping windows and decoded in tiles
        (see selva/long_video.py).
        """
        hooks = or_default(hooks)
        plan = self.plan(features, duration, windows)
        latent = self.sample_latent(features, prompt=prompt, negative_prompt=negative_prompt,
                                    duration=plan.total.duration, steps=steps,
                                    cfg_strength=cfg_strength, seed=seed, batch_size=batch_size,
                                    hooks=hooks, extra_patches=extra_patches, noise=noise,
                                    windows=windows)
        wave = self.decode(latent, hooks, spans=[w.latent for w in plan.windows])
        audio_ops.assert_finite(wave, {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.dtype, "fp32"))
        return wave

    def sample_latent(self, features: Features, *, prompt: Optional[str] = None,
                      negative_prompt: str = "", duration: Optional[float] = None, steps: int = 25,
                      cfg_strength: float = 4.5, seed: int = 0, batch_size: int = 1,
                      hooks: Optional[Hooks] = None, extra_patches: Sequence[GeneratorPatch] = (),
                      noise: Optional[torch.Tensor] = None,
                      windows: Optional[WindowOptions] = None) -> torch.Tensor:
        """The generator's output latent (batch_size, L, C), un-normalised, before the VAE.

        The noise is ``initial_noise(batch_size, L, C, seed)`` for the whole duration's L latent
        frames, however many windows sample it (``noise`` replaces it, shaped like it).
        """
        hooks = or_default(hooks)
        if steps < 1:
            raise SelvaError(f"steps must be at least 1, got {steps}.")
        if batch_size < 1:
            raise SelvaError(f"batch_size must be at least 1, got {batch_size}.")
        with accel.tf32(self.device, self.options.tf32):
            features = self._features_for_prompt(features, prompt, hooks)
            plan = self.plan(features, duration, windows)
            neg_clip = self._negative_text(negative_prompt)
            return self._sample(features, neg_clip, plan, steps, cfg_strength, seed, batch_size, hooks,
                                extra_patches, noise)

    def plan(self, features: Features, duration: Optional[float] = None,
             windows: Optional[WindowOptions] = None) -> WindowPlan:
        """The sampling windows for ``duration`` seconds of ``features`` (one when it fits)."""
        return plan_windows(self.variant, self._duration_for(features, duration), windows)

    def _duration_for(self, features: Features, duration: Optional[float]) -> float:
        if not duration:
            return features.duration
        if duration > features.duration + 1e-9:
            log.warning("Duration %.2f s is longer than the %.2f s the features cover; using %.2f s.",
                        duration, features.duration, features.duration)
            return features.duration
        return float(duration)

    def _conditions_inputs(self, features: Features, seq):
        """The clip's condition sequences for ``seq``, batch 1 (projected once, for any batch)."""
        gen_dtype = self.stage_dtype("generator")
        sync = features.sync_features[:, :seq.sync]
        if sync.shape[1] != seq.sync:
            raise SelvaError(f"The features hold {features.sync_features.shape[1]} sync tokens but "
                             f"{seq.duration:.2f} s needs {seq.sync}: extract the features again.")
        clip = None
        if features.clip_features is not None:
            clip = features.clip_features[:, :seq.clip].to(self.device, gen_dtype)
        return (clip, sync.to(self.device, gen_dtype), features.text_clip.to(self.device, gen_dtype))

    def _sample(self, features: Features, neg_clip: torch.Tensor, plan: WindowPlan, steps: int,
                cfg_strength: float, seed: int, batch: int, hooks: Hooks,
                extra_patches: Sequence[GeneratorPatch] = (),
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        seq = plan.total
        with self.use_generator(extra_patches) as gen:
            dtype = self.stage_dtype("generator")
            # One clip: the conditions are batch 1, projected once and shared by every batch item.
            clip_f, sync_f, text_clip = self._conditions_inputs(features, seq)
            neg_clip = neg_clip.to(self.device, dtype)
            if noise is None:
                x0 = initial_noise(batch, seq.latent, gen.latent_dim, seed=seed, device=self.device, dtype=dtype)
            else:
                if tuple(noise.shape) != (batch, seq.latent, gen.latent_dim):
                    raise SelvaError(f"The initial noise has shape {tuple(noise.shape)}, expected "
                                     f"{(batch, seq.latent, gen.latent_dim)} for this duration.")
                x0 = noise.to(self.device, dtype)
            velocity = accel.compiled_velocity(gen) if self.options.compile else None
            if not plan.single:
                x1 = sample_windows(gen, plan, x0, clip_f, sync_f, text_clip, neg_clip, steps,
                                    cfg_strength, hooks, velocity=velocity)
                return gen.unnormalize(x1)
            gen.set_seq_lengths(seq.latent, seq.clip, seq.sync)
            if clip_f is None:
                clip_f = gen.empty_clip_sequence(1)
            cond: Conditions = gen.preprocess_conditions(clip_f, sync_f, text_clip)
            uncond: Conditions = gen.empty_conditions(1, negative_text_clip_f=neg_clip)
            x1 = euler_sample(lambda t, x: gen.cfg_velocity(t, x, cond, uncond, cfg_strength, velocity=velocity),
                              x0, steps, on_step=lambda d, n: hooks.step("sampling", d, n))
            return gen.unnormalize(x1)

    def decode(self, latent: torch.Tensor, hooks: Optional[Hooks] = None,
               spans: Optional[Sequence[tuple[int, int]]] = None) -> torch.Tensor:
        """Latent (B, L, C) -> waveform (B, 1, T) float32 on the CPU.

        ``spans`` are overlapping tiles in latent frames (default: 8 s ones for a latent longer
        than one default window); the VAE and the vocoder decode one tile at a time and the
        results are crossfaded (selva/tiled_decode.py). One tile = one piece, as always.
        """
        hooks = or_default(hooks)
        if spans is None:
            spans = default_decode_spans(self.variant, latent.shape[1])
        with accel.tf32(self.device, self.options.tf32):
            return self._decode(latent, spans, hooks)

    def _decode(self, latent: torch.Tensor, spans: Sequence[tuple[int, int]], hooks: Hooks) -> torch.Tensor:
        # one function per network: see encode_text
        n = len(spans)
        mel = self._decode_mel(latent, spans, lambda d: hooks.step("decode", d, 2 * n))
        mel_spans = [(a * LATENT_DOWNSAMPLE, b * LATENT_DOWNSAMPLE) for a, b in spans]
        return self._vocode(mel, mel_spans, lambda d: hooks.step("decode", n + d, 2 * n))

    def _decode_mel(self, latent: torch.Tensor, spans: Sequence[tuple[int, int]],
                    on_tile: Callable[[int], None]) -> torch.Tensor:
        with self.manager.use("vae") as vae:
            return decode_tiles(vae.decode, latent.to(self.device, self.stage_dtype("vae")).transpose(1, 2),
                                spans, LATENT_DOWNSAMPLE, on_tile=lambda d, _: on_tile(d))

    def _vocode(self, mel: torch.Tensor, spans: Sequence[tuple[int, int]],
                on_tile: Callable[[int], None]) -> torch.Tensor:
        with self.manager.use(self.stage_name("vocoder")) as vocoder:
            wave = decode_tiles(vocoder, mel.to(self.device, self.stage_dtype("vocoder")), spans,
                                self.variant.hop, out_device=torch.device("cpu"),
                                on_tile=lambda d, _: on_tile(d))
        return wave.float().cpu()

    # ---------------------------------------------------------------------- audio utilities
    def log_mel(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """(B, C, T) any rate -> log-mel (B * C, n_mels, frames) as the VAE sees it."""
        wave = audio_ops.resample(audio_ops.check_waveform(waveform), sample_rate, self.sample_rate)
        b, c, t = wave.shape
        with self.manager.use("mel") as mel:
            return mel(wave.reshape(b * c, t).to(self.device)).float().cpu()

    def vae_roundtrip(self, waveform: torch.Tensor, sample_rate: int,
                      hooks: Optional[Hooks] = None) -> torch.Tensor:
        """Encode audio with the VAE and decode it again: hear what the VAE + vocoder keep.

        Any rate and channel count in; (B, C, T') at the model's rate out, channel by channel.
        """
        hooks = or_default(hooks)
        wave = audio_ops.resample(audio_ops.check_waveform(waveform), sample_rate, self.sample_rate)
        b, c, t = wave.shape
        # The VAE works on whole latent frames: pad to a multiple of them (reflect-padding the
        # mel needs a little signal too), then cut the result back to the input's length.
        unit = self.variant.hop * LATENT_DOWNSAMPLE
        if t < self.variant.mel.n_fft:
            raise SelvaError(f"The audio is too short for the VAE: {t} samples at {self.sample_rate} Hz; "
                             f"it needs at least {self.variant.mel.n_fft}.")
        padded = torch.nn.functional.pad(wave, (0, -t % unit))
        mel = self.log_mel(padded, self.sample_rate)
        self._ensure_vae_encoder()
        with self.manager.use("vae") as vae:
            latent = vae.encode(mel.to(self.device, self.stage_dtype("vae"))).mode()
        hooks.step("vae encode", 1, 1)
        out = self.decode(latent.transpose(1, 2), hooks)
        return out.reshape(b, c, -1)[..., :t]

    def vae_encode(self, mel: torch.Tensor):
        """The VAE posterior (a ``GaussianPosterior``, [B, C, L]) of log-mels [B, n_mels, T]; the
        encoder is loaded on first use."""
        self._ensure_vae_encoder()
        with torch.no_grad(), self.manager.use("vae") as vae:
            return vae.encode(mel.to(self.device, self.stage_dtype("vae")))

    def _ensure_vae_encoder(self) -> None:
        """Swap in the VAE with its encoder (generation only needs the decoder)."""
        vae = self.manager.get("vae") if self.manager.is_loaded("vae") else None
        if vae is not None and vae.encoder is not None:
            return
        if self._builders is None:
            raise SelvaError("This pipeline's VAE has no encoder, so it cannot encode audio.")
        log.info("Loading the VAE encoder for the round trip")
        self.manager.add_lazy("vae", lambda: self._builders.vae(need_encoder=True), self.stage_dtype("vae"))

    def _vae_data_mean(self) -> torch.Tensor:
        """The VAE's per-band mel mean (data_dim,) on the CPU: from the loaded VAE if it is
        loaded, else read from its file alone (the network is neither built nor moved)."""
        if self.manager.is_loaded("vae"):
            return self.manager.get("vae").data_mean.detach().float().cpu().reshape(-1)
        if self._builders is None:
            raise SelvaError("This pipeline has no VAE file to read the spectral profile from.")
        if self._vae_stats is None:
            self._vae_stats = self._builders.vae_statistics()
        return self._vae_stats[0]

    def spectral_match(self, waveform: torch.Tensor, sample_rate: int, strength: float,
                       max_gain_db: float = 12.0) -> torch.Tensor:
        """Per-band EQ toward the spectral profile the VAE was trained on (its data mean).

        Works at the model's rate (other rates are resampled first); returns (B, C, T).
        """
        wave = audio_ops.resample(audio_ops.check_waveform(waveform), sample_rate, self.sample_rate)
        b, c, _ = wave.shape
        mel = self.manager.get("mel")
        cfg = self.variant.mel
        profile = self.log_mel(wave, self.sample_rate).reshape(b, c, cfg.num_mels, -1).mean(dim=1)
        target = self._vae_data_mean()
        log_to_db = 20.0 if cfg.log == "log10" else 20.0 / math.log(10.0)
        return audio_ops.spectral_match(wave, profile, target, mel.mel_basis.detach().float().cpu(),
                                        cfg.n_fft, strength, log_to_db=log_to_db, max_gain_db=max_gain_db)
