"""The feature encoders: T5 and CLIP on the prompt, the TextSynchformer (and CLIP) on the frames.

:class:`Encoders` runs them with their in-memory caches (re-encoded prompts, negative prompts,
the sync backbone's tokens of the last clip); :class:`CacheKeys` builds every cache key, each
from exactly what changes that result. A pipeline and all its views share the encoders and
their caches.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

from . import accel
from . import streamed_encode
from . import video as video_ops
from .errors import SelvaError
from .features import FORMAT_VERSION, FeatureCache, Features, content_hash
from .hooks import NO_HOOKS, Hooks, or_default
from .memo import LruCache
from .models.text_synch import TextSynchformer
from .offload import OffloadManager

log = logging.getLogger(__name__)

ENCODER_STAGES = ("t5", "clip", "text_synch")


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


@dataclass
class TextFeatures:
    """One prompt, encoded: T5 per-token features with their mask, CLIP per-token features."""

    t5: torch.Tensor
    t5_mask: torch.Tensor
    clip: torch.Tensor


@dataclass(frozen=True)
class CacheKeys:
    """Every cache key of the encoders, each built from exactly the inputs its result depends on.

    The encoders' identity is their weight files (path, size, mtime) and the dtypes they really
    run in (bf16 that fell back to fp16 is fp16), read when a key is built.
    """

    variant: str
    clip_frames: bool
    files: Callable[[], list]
    dtype: Callable[[str], torch.dtype]

    def identity(self) -> list:
        """The encoders' weights and dtypes."""
        return ["encoders", self.files(), [str(self.dtype(name)) for name in ENCODER_STAGES]]

    def features(self, prepared: PreparedInput, prompt: str) -> str:
        """The on-disk feature cache key: every pixel and mask value, the prompt and the encoders.
        (Unchanged from earlier releases: caches stay valid.)"""
        fr = prepared.frames
        use_clip = self.clip_frames
        return content_hash([
            "features", FORMAT_VERSION, self.variant, use_clip, *self.identity(),
            prompt, fr.duration, fr.fps, fr.sync_u8, fr.clip_u8 if use_clip else None,
            prepared.sync_mask, prepared.clip_mask if use_clip else None, prepared.mask_strength,
            *([fr.start] if fr.start else []),  # keys of features from 0 s stay as they were
            "extra",  # ended the parts an adapter could add (none does now); kept: caches stay valid
        ])

    def prompt_features(self, features: Features, prompt: str) -> str:
        """Text and sync features of stored frames re-encoded for ``prompt``."""
        return content_hash(["prompt features", self.variant, *self.identity(), prompt, features.variant,
                             features.sync_frames_u8, features.sync_mask, features.mask_strength])

    def clip_text(self, text: str) -> str:
        """CLIP text features of a (negative) prompt: only CLIP reads it."""
        return content_hash(["clip text", self.variant, self.files(), str(self.dtype("clip")), text])

    def sync_backbone(self, frames: torch.Tensor, mask: Optional[torch.Tensor], strength: float) -> str:
        """The sync encoder's text-independent backbone tokens: frames, mask and its weights only."""
        return content_hash(["sync backbone", self.variant, self.files(), str(self.dtype("text_synch")),
                             frames, mask, float(strength)])

    def sync_for_text(self, features: Features, t5: torch.Tensor, t5_mask: torch.Tensor) -> str:
        """Sync features of stored frames conditioned on a given T5 sequence."""
        return content_hash(["sync for text", self.variant, *self.identity(), features.sync_frames_u8,
                             features.sync_mask, float(features.mask_strength), t5, t5_mask])


class Encoders:
    """T5, CLIP and the TextSynchformer of one pipeline and its views, with their memo caches."""

    def __init__(self, manager: OffloadManager, keys: CacheKeys, *, tf32: bool):
        # ``keys`` also hold the variant and whether CLIP sees frames (every key depends on them)
        self.manager, self.keys, self.tf32 = manager, keys, tf32
        # Re-encodings for Sampler prompts (and negative prompts), shared with every view.
        self._encodings = LruCache(max_items=8)
        # the last clip's backbone tokens, if not too large
        self._backbone = LruCache(max_items=1, max_bytes=1024**3)

    @property
    def device(self) -> torch.device:
        return self.manager.device

    def clear(self) -> None:
        self._backbone.clear()

    # ------------------------------------------------------------------------------ features
    def encode(self, prepared: PreparedInput, prompt: str, hooks: Optional[Hooks] = None,
               cache: Optional[FeatureCache] = None) -> Features:
        """T5 and CLIP on the prompt, TextSynchformer (and CLIP) on the frames; skipped when
        ``cache`` already holds features for exactly this input (see :meth:`CacheKeys.features`)."""
        hooks = or_default(hooks)
        if cache is None:
            return self._encode(prepared, prompt, hooks)
        key = self.keys.features(prepared, prompt)
        hit = cache.get(key)
        if hit is not None:
            log.info("Features loaded from cache %s", cache.path(key))
            return hit
        features = self._encode(prepared, prompt, hooks)
        cache.put(key, features)
        return features

    def _encode(self, prepared: PreparedInput, prompt: str, hooks: Hooks) -> Features:
        with accel.tf32(self.device, self.tf32):
            text = self.encode_text(prompt, hooks)
            sync_features = self.encode_sync(prepared.frames.sync_u8, prepared.sync_mask,
                                             prepared.mask_strength, text, hooks)
            clip_features = None
            if self.keys.clip_frames:  # the clip mask is already one frame per clip frame (or 1)
                with self.manager.use("clip") as clip:
                    clip_features = streamed_encode.encode_clip(
                        clip, prepared.frames.clip_u8, prepared.clip_mask, prepared.mask_strength,
                        self.manager.dtype("clip"), on_batch=lambda d, n: hooks.step("clip", d, n))
        return Features(variant=self.keys.variant, prompt=prompt, duration=prepared.duration,
                        fps=float(prepared.frames.fps or 0.0), text_t5=text.t5.float().cpu(),
                        text_t5_mask=text.t5_mask.cpu(), text_clip=text.clip.float().cpu(),
                        sync_features=sync_features.float().cpu(),
                        sync_frames_u8=prepared.frames.sync_u8.permute(0, 2, 3, 1).contiguous(),
                        clip_features=None if clip_features is None else clip_features.float().cpu(),
                        sync_mask=prepared.sync_mask, mask_strength=prepared.mask_strength,
                        start=prepared.frames.start)

    def features_for_prompt(self, features: Features, prompt: Optional[str],
                            hooks: Optional[Hooks] = None) -> Features:
        """``features`` as if extracted with ``prompt`` (SelVA's sync features depend on the text):
        text and sync features re-encoded from the stored frames; the same object when the prompt
        is unchanged. The result is remembered (a few entries, in memory), so re-running a Sampler
        whose prompt differs from the features' prompt runs no encoder again."""
        if not prompt or prompt == features.prompt:
            return features
        if not features.has_video:  # text to audio: only the CLIP text is read
            return replace(features, prompt=prompt, text_clip=self.clip_text(prompt))
        hooks = or_default(hooks)
        key = self.keys.prompt_features(features, prompt)
        hit = self._encodings.get(key)
        if hit is not None:
            log.info("Using the cached encoding of prompt %r", prompt)
            return replace(features, prompt=prompt, **hit)
        log.info("Prompt differs from the one the features were extracted with: re-encoding text "
                 "and sync features for %r", prompt)
        with accel.tf32(self.device, self.tf32):
            text = self.encode_text(prompt, hooks)
            frames_tchw = features.sync_frames_u8.permute(0, 3, 1, 2)
            sync = self.encode_sync(frames_tchw, features.sync_mask, features.mask_strength, text, hooks)
        encoded = dict(text_t5=text.t5.float().cpu(), text_t5_mask=text.t5_mask.cpu(),
                       text_clip=text.clip.float().cpu(), sync_features=sync.float().cpu())
        self._encodings.put(key, encoded)
        return replace(features, prompt=prompt, **encoded)

    def clip_text(self, text: str) -> torch.Tensor:
        """CLIP text features (1, 77, D) of a (negative) prompt on the CPU, remembered."""
        key = self.keys.clip_text(text)
        hit = self._encodings.get(key)
        if hit is None:
            with accel.tf32(self.device, self.tf32):
                hit = {"clip": self.encode_clip_text([text]).cpu()}
            self._encodings.put(key, hit)
        return hit["clip"]

    def text_features(self, prompt: str, duration: float) -> Features:
        """Text-only features for text to audio: the prompt's CLIP text and no video, so the
        generator gets its learned empty CLIP and sync sequences (as MMAudio's text to audio).
        No T5 runs: without frames nothing reads it."""
        if not duration or duration <= 0:
            raise SelvaError(f"Text to audio needs a positive duration in seconds, got {duration}.")
        return Features(variant=self.keys.variant, prompt=prompt, duration=float(duration), fps=0.0,
                        text_t5=torch.zeros(1, 0, 0), text_t5_mask=torch.zeros(1, 0),
                        text_clip=self.clip_text(prompt).float(), sync_features=torch.zeros(1, 0, 0),
                        sync_frames_u8=torch.zeros(0, 224, 224, 3, dtype=torch.uint8))

    # ------------------------------------------------------------------------------ networks
    def encode_text(self, prompt: str, hooks: Hooks = NO_HOOKS) -> TextFeatures:
        # Each network is used in a function of its own: a released one (offload_to_cpu on the
        # CPU) is freed when that function returns, not only after the next stage ran.
        t5_f, t5_mask = self.encode_t5([prompt])
        hooks.step("text", 1, 2)
        clip_text = self.encode_clip_text([prompt])
        hooks.step("text", 2, 2)
        return TextFeatures(t5_f, t5_mask, clip_text)

    def encode_t5(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 per-token features (B, L, 768) and their mask (B, L)."""
        with self.manager.use("t5") as t5:
            return t5.encode(texts)

    def encode_clip_text(self, texts: list[str]) -> torch.Tensor:
        """Per-token CLIP text features (B, 77, D), unit length, as the generator takes them."""
        with self.manager.use("clip") as clip:
            return clip.encode_text(texts)

    def encode_clip_frames(self, frames01: torch.Tensor, hooks: Hooks = NO_HOOKS) -> torch.Tensor:
        """CLIP image features (1, T, D) of 8 fps frames (T, 3, 384, 384) in [0, 1]."""
        with self.manager.use("clip") as clip:
            return clip.encode_frames(frames01[None].to(self.device, self.manager.dtype("clip")),
                                      batch_size=40, on_batch=lambda d, n: hooks.step("clip", d, n))

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
            key = self.keys.sync_backbone(sync_u8_tchw, sync_mask, mask_strength)
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
        if features.variant != self.keys.variant:
            raise SelvaError(f"These features were extracted with {features.variant!r}, the model is "
                             f"{self.keys.variant!r}; extract them again with this model.")
        t5 = text_t5.detach().float().cpu()
        mask = text_t5_mask.detach().cpu()
        key = self.keys.sync_for_text(features, t5, mask)
        hit = self._encodings.get(key)
        if hit is not None:
            log.info("Using the cached sync features for this T5 sequence")
            return hit["sync_features"]
        frames_tchw = features.sync_frames_u8.permute(0, 3, 1, 2)
        # only the T5 side is read by encode_sync; the CLIP sequence is carried along unchanged
        text = TextFeatures(t5, mask, features.text_clip)
        with accel.tf32(self.device, self.tf32):
            sync = self.encode_sync(frames_tchw, features.sync_mask, features.mask_strength, text, hooks)
        sync = sync.float().cpu()
        self._encodings.put(key, {"sync_features": sync})
        return sync
