"""The small public API shared by the ComfyUI nodes and the CLI.

    pipe = SelvaPipeline.load(LoadOptions(variant="small_16k"))  # precision "auto"
    feats = pipe.extract_features("clip.mp4", None, "a dog barking")
    audio = pipe.generate(feats, negative_prompt="music", seed=42)   # (1, 1, T) at pipe.sample_rate

Generation follows the official demo step by step (same encoders, same order, same noise), so the
same weights, inputs and seed give the official audio. The pipeline loads the networks, makes
views of itself (``with_patches``), prepares frames and samples; the encoders live in
``pipe.encoding`` (selva/encoding.py), the VAE and vocoder in ``pipe.decoding``
(selva/decoding.py) and the generator's conditions are built by selva/conditioning.py.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from . import accel
from . import audio as audio_ops
from . import conditioning
from . import editing
from . import video as video_ops
from .decoding import Decoders
from .encoding import CacheKeys, Encoders, PreparedInput
from .errors import SelvaError
from .features import FeatureCache, Features
from .hooks import Hooks, or_default
from .loading import StageBuilders, prefetch, register_stages
from .long_video import WindowOptions, WindowPlan, plan_windows, sample_windows
from .models.generator import SelvaGenerator
from .offload import (OffloadManager, pick_device, releases_after_use, resolve_dtype, resolve_offload,
                      returns_idle_memory)
from .options import MaskOptions, SamplingOptions
from .patches import GeneratorPatch, attached
from .residency import Residency
from .sampling import euler_sample, initial_noise
from .variants import VariantSpec, get_variant
from .weights import default_models_dir

log = logging.getLogger(__name__)

Frames = Union[torch.Tensor, np.ndarray]  # (T, H, W, 3) uint8, or float in [0, 1]
VideoSource = Union[Frames, str, Path, BinaryIO]  # in-memory frames, or a video file


@dataclass
class LoadOptions:
    variant: str = "small_16k"
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (selva/precision.py)
    offload: str = "auto"  # auto | keep_in_vram | offload_to_cpu
    device: Optional[str] = None  # None: CUDA, then MPS, then CPU
    models_dir: Optional[Path] = None  # None: $SELVA_MODELS_DIR or ./models/selva
    clip_frames: bool = False  # official demo: False (the generator's learned empty CLIP sequence)
    allow_download: bool = True
    tf32: bool = True  # CUDA only: TF32 matmuls while SelVA runs, as the official demo (selva/accel.py)
    compile: bool = False  # torch.compile the generator (selva/accel.py: when it recompiles)


def _masks_for(frames: video_ops.PreparedFrames, options: MaskOptions,
               clip_frames: bool) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The mask frames that go with the chosen sync / clip frames, at the encoders' sizes.

    ``mask_clip`` is only honoured by pipelines that feed CLIP frames at all.
    """
    if not options.active:
        return None, None
    mask = options.mask
    video_ops.warn_if_mask_stretched(mask, frames.source_size)
    # Selecting validates the mask against the video even when the sync path is switched off.
    sync = video_ops.mask_for_indices(mask, frames.sync_indices, frames.n_source_frames)
    clip = None
    if options.mask_clip and clip_frames:
        picked = video_ops.mask_for_indices(mask, frames.clip_indices, frames.n_source_frames)
        clip = video_ops.resize_mask(picked, video_ops.CLIP_SIZE)
    return (video_ops.resize_mask(sync, video_ops.SYNC_SIZE) if options.mask_sync else None, clip)


class SelvaPipeline:
    """All SelVA networks for one variant, with their device policy."""

    def __init__(self, variant: VariantSpec, options: LoadOptions, manager: OffloadManager,
                 dtype: torch.dtype, builders: Optional[StageBuilders] = None):
        self.variant = variant
        self.options = options
        self.manager = manager
        self.dtype = dtype
        self._builders: Optional[StageBuilders] = builders
        # What loaders attached (see selva/patches.py): shared networks, per-view additions.
        self.generator_patches: tuple[GeneratorPatch, ...] = ()
        self.stage_overrides: dict[str, str] = {}
        files = builders.feature_encoder_files if builders is not None else list
        self.encoding = Encoders(manager, CacheKeys(variant.name, options.clip_frames, files, manager.dtype),
                                 tf32=options.tf32)
        self.decoding = Decoders(variant, manager, builders, tf32=options.tf32)

    # ------------------------------------------------------------------------------- views
    def with_patches(self, generator: Sequence[GeneratorPatch] = (),
                     stages: Optional[dict[str, str]] = None) -> "SelvaPipeline":
        """A view of this pipeline with more generator patches and/or stage overrides.

        The view shares every network (and the offload manager, and the encoders with their
        caches) with ``self``; ``self`` is not changed, so other branches of a graph keep the base
        behaviour.
        """
        view = copy.copy(self)
        view.generator_patches = self.generator_patches + tuple(generator)
        view.stage_overrides = {**self.stage_overrides, **(stages or {})}
        for logical, actual in view.stage_overrides.items():
            if not self.manager.has(actual):
                raise SelvaError(f"Stage override {logical!r} -> {actual!r}: no such stage.")
        view.decoding = self.decoding.with_vocoder(view.stage_name("vocoder"))
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
        builders = StageBuilders(spec, models_dir, options.allow_download, options.clip_frames)
        register_stages(manager, builders, dtype)
        pipe = cls(spec, options, manager, dtype, builders)
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
        self.encoding.clear()

    # ---------------------------------------------------------------------------- features
    def prepare(self, source: VideoSource, fps: Optional[float] = None, *, duration: Optional[float] = None,
                start: float = 0.0, mask: Optional[MaskOptions] = None,
                hooks: Optional[Hooks] = None) -> PreparedInput:
        """Pick and resize frames: no network runs.

        ``source`` is either frames in memory ((T, H, W, 3) uint8 or float in [0, 1], with their
        ``fps``) or a video file (a path or a binary file object; decoded in a stream by its own
        timestamps, ``fps`` must then be None). ``start`` seconds of the video are skipped
        (``duration`` counts from there); ``hooks`` sees the decoding / resizing progress and
        can cancel it.
        """
        hooks = or_default(hooks)
        mask = mask if mask is not None else MaskOptions()
        if not isinstance(mask, MaskOptions):
            raise SelvaError(f"mask must be a MaskOptions (the mask tensor with its strength and where "
                             f"it applies), got {type(mask).__name__}.")
        mask.validate()
        if isinstance(source, (torch.Tensor, np.ndarray)):
            if fps is None or fps <= 0:
                raise SelvaError(f"The video's frame rate must be positive, got {fps}. Connect the "
                                 f"loader's video_info or set fps.")
            n = len(source)
            prepared = video_ops.prepare_frames(source, fps=fps, duration=duration or None, start=start,
                                                on_frame=lambda done: hooks.step("resize", done, n))
        else:
            if fps is not None:
                raise SelvaError("A video file is read by its own timestamps: give fps only with "
                                 "frames in memory.")
            # progress in tenths of a second of video; the end is unknown without a duration
            span = int(round(10 * duration)) if duration else 0
            # Only a per-frame mask needs the whole file's frame count (reading to its end).
            per_frame_mask = mask.active and video_ops.mask_frames(mask.mask) > 1
            prepared = video_ops.decode_video(
                source, duration=duration or None, start=start, count_frames=per_frame_mask,
                on_frame=lambda sec: hooks.step("decode", min(max(int(10 * (sec - start)), 0), span), span))
        sync_mask, clip_mask = _masks_for(prepared, mask, self.options.clip_frames)
        return PreparedInput(prepared, sync_mask, clip_mask, float(mask.mask_strength))

    def extract_features(self, source: VideoSource, fps: Optional[float], prompt: str, *,
                         duration: Optional[float] = None, start: float = 0.0,
                         mask: Optional[MaskOptions] = None, cache: Optional[FeatureCache] = None,
                         hooks: Optional[Hooks] = None) -> Features:
        """The one feature-extraction entry point: :meth:`prepare` (frames with their ``fps``, or
        a video file with ``fps`` None), then :meth:`encode` (from ``cache`` when it holds them)."""
        prepared = self.prepare(source, fps, duration=duration, start=start, mask=mask, hooks=hooks)
        return self.encode(prepared, prompt, hooks, cache=cache)

    def encode(self, prepared: PreparedInput, prompt: str, hooks: Optional[Hooks] = None,
               cache: Optional[FeatureCache] = None) -> Features:
        """Run the encoders on prepared frames (see :meth:`Encoders.encode`)."""
        return self.encoding.encode(prepared, prompt, hooks, cache)

    # ---------------------------------------------------------------------------- generation
    def generate(self, features: Features, options: Optional[SamplingOptions] = None, *,
                 hooks: Optional[Hooks] = None, extra_patches: Sequence[GeneratorPatch] = (),
                 noise: Optional[torch.Tensor] = None, edit: Optional[editing.EditOptions] = None,
                 **changes: Any) -> torch.Tensor:
        """Audio for ``features``: (batch_size, 1, samples) float32 on the CPU at ``sample_rate``.

        ``options`` (or its fields as keywords, ``changes``) say how to sample. Variation ``i``
        of a batch equals a single run with ``seed + i``. ``extra_patches`` are attached for
        this call only (a Sampler's steering vectors); ``noise`` replaces the seeded initial
        noise (DITTO's optimised x0, shaped like it). Clips longer than one window are sampled
        in overlapping windows and decoded in tiles (see selva/long_video.py). ``edit`` starts
        from audio: audio-to-audio, a range regenerated, a continuation (selva/editing.py).
        Text-only features (``pipe.encoding.text_features``) make text to audio.
        """
        options = SamplingOptions.of(options, **changes)
        hooks = or_default(hooks)
        plan = self.plan(features, options.duration, options.windows)
        todo = None if edit is None else editing.plan_edit(self.decoding, edit, plan.total.latent,
                                                           plan.total.duration, options.batch_size)
        latent = self.sample_latent(features, replace(options, duration=plan.total.duration), hooks=hooks,
                                    extra_patches=extra_patches, noise=noise, edit=todo)
        wave = self.decode(latent, hooks, spans=[w.latent for w in plan.windows])
        audio_ops.assert_finite(wave, {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.dtype, "fp32"))
        return wave if todo is None else todo.compose(wave)

    def sample_latent(self, features: Features, options: Optional[SamplingOptions] = None, *,
                      hooks: Optional[Hooks] = None, extra_patches: Sequence[GeneratorPatch] = (),
                      noise: Optional[torch.Tensor] = None, edit: Optional[editing.EditPlan] = None,
                      **changes: Any) -> torch.Tensor:
        """The generator's output latent (batch_size, L, C), un-normalised, before the VAE.

        The noise is ``initial_noise(batch_size, L, C, seed)`` for the whole duration's L latent
        frames, however many windows sample it (``noise`` replaces it, shaped like it). ``edit``
        starts part-way along the flow and/or holds the input's latent frames.
        """
        options = SamplingOptions.of(options, **changes)
        options.validate()
        if edit is not None and edit.start >= 1.0:  # denoise 0: the input's latent, no sampling
            return edit.known.expand(options.batch_size, -1, -1).clone()
        hooks = or_default(hooks)
        features = self.encoding.features_for_prompt(features, options.prompt, hooks)
        plan = self.plan(features, options.duration, options.windows)
        neg_clip = self.encoding.clip_text(options.negative_prompt)
        with accel.tf32(self.device, self.options.tf32):
            return self._sample(features, neg_clip, plan, options, hooks, extra_patches, noise, edit)

    def plan(self, features: Features, duration: Optional[float] = None,
             windows: Optional[WindowOptions] = None) -> WindowPlan:
        """The sampling windows for ``duration`` seconds of ``features`` (one when it fits; none
        given = the features' duration, more is clamped to it)."""
        if not duration:
            duration = features.duration
        elif duration > features.duration + 1e-9:
            log.warning("Duration %.2f s is longer than the %.2f s the features cover; using %.2f s.",
                        duration, features.duration, features.duration)
            duration = features.duration
        return plan_windows(self.variant, float(duration), windows)

    def _sample(self, features: Features, neg_clip: torch.Tensor, plan: WindowPlan, options: SamplingOptions,
                hooks: Hooks, extra_patches: Sequence[GeneratorPatch] = (),
                noise: Optional[torch.Tensor] = None, edit: Optional[editing.EditPlan] = None) -> torch.Tensor:
        seq, batch = plan.total, options.batch_size
        with self.use_generator(extra_patches) as gen:
            dtype = self.stage_dtype("generator")
            # One clip: the conditions are batch 1, projected once and shared by every batch item.
            inputs = conditioning.condition_inputs(features, seq, self.device, dtype)
            if noise is None:
                x0 = initial_noise(batch, seq.latent, gen.latent_dim, seed=options.seed, device=self.device,
                                   dtype=dtype)
            else:
                if tuple(noise.shape) != (batch, seq.latent, gen.latent_dim):
                    raise SelvaError(f"The initial noise has shape {tuple(noise.shape)}, expected "
                                     f"{(batch, seq.latent, gen.latent_dim)} for this duration.")
                x0 = noise.to(self.device, dtype)
            schedule = None
            if edit is not None:
                x0, schedule = edit.start_state(gen, x0)
            velocity = accel.compiled_velocity(gen) if self.options.compile else None
            if not plan.single:
                x1 = sample_windows(gen, plan, x0, inputs, neg_clip, options.steps, options.cfg_strength,
                                    hooks, velocity=velocity, schedule=schedule)
                return gen.unnormalize(x1)
            gen.set_seq_lengths(seq.latent, seq.clip, seq.sync)
            cond, uncond = conditioning.guided(gen, inputs, neg_clip, self.device, dtype)
            x1 = euler_sample(lambda t, x: gen.cfg_velocity(t, x, cond, uncond, options.cfg_strength,
                                                            velocity=velocity),
                              x0, options.steps, on_step=lambda d, n: hooks.step("sampling", d, n),
                              schedule=schedule)
            return gen.unnormalize(x1)

    def decode(self, latent: torch.Tensor, hooks: Optional[Hooks] = None,
               spans: Optional[Sequence[tuple[int, int]]] = None) -> torch.Tensor:
        """Latent (B, L, C) -> waveform (B, 1, T) float32 on the CPU (see :meth:`Decoders.decode`)."""
        return self.decoding.decode(latent, hooks, spans)
