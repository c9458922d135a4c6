"""Build every network a pipeline needs and fill it from the released files.

Networks are built on the meta device and take the checkpoint's tensors as they are
(``assign=True``): no time is spent on a random initialisation that would be overwritten, and
memory holds one copy of the weights.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from torch import nn

from . import weights as W
from .errors import SelvaError
from .hooks import NO_HOOKS, Hooks
from .models.generator import SelvaGenerator, load_generator_weights
from .models.mel import MelConverter
from .models.state_dicts import (drop_mapped_pages, file_mapping_span, memory_span, release_file_pages,
                                  unset_tensors)
from .models.text_synch import TextSynchformer, load_text_synch_weights
from .models.vae import load_vae, load_vae_statistics

try:
    from ..bigvgan.errors import BigVGANError
    from ..bigvgan.loading import V2_WEIGHTS_NAME, load_bigvgan_v1, load_bigvgan_v2_state, read_bigvgan_v2_config
except ImportError:  # selva imported as a top-level package (python -m selva)
    from bigvgan.errors import BigVGANError
    from bigvgan.loading import V2_WEIGHTS_NAME, load_bigvgan_v1, load_bigvgan_v2_state, read_bigvgan_v2_config

if TYPE_CHECKING:
    from .offload import OffloadManager
    from .variants import VariantSpec

log = logging.getLogger(__name__)

# Generator sequence lengths at construction; every generation sets its own.
_DEFAULT_DURATION = 8.0


def stage_dtypes(precision_dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Every stage a pipeline registers (in this order), with its compute dtype.

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
    keys = (spec.video_enc_file, spec.generator_file, spec.vae_file, spec.vocoder_file)
    return [W.FILES[key] for key in keys if key]  # a v2 vocoder is a snapshot, not a file


def required_snapshots(spec: "VariantSpec") -> list[W.HubSnapshot]:
    return [W.HUB[key] for key in ("t5", "clip", spec.vocoder_snapshot) if key]


def resolve_all(spec: "VariantSpec", models_dir: Path, allow_download: bool,
                hooks: Hooks = NO_HOOKS) -> dict[str, Path]:
    """Paths of every file and snapshot the variant needs (downloading what is missing).

    Without downloads, one error lists everything missing.
    """
    files, snaps = required_files(spec), required_snapshots(spec)
    if not allow_download or W.downloads_disabled():
        missing = W.check_available(files, snaps, models_dir)
        if missing:
            raise W.missing_error(missing)
    paths: dict[str, Path] = {}
    total = len(files) + len(snaps)
    for wf in files:
        paths[wf.key] = W.resolve_file(wf, models_dir, allow_download=allow_download)
        hooks.step("weights", len(paths), total)
    for snap in snaps:
        paths[snap.key] = W.resolve_snapshot(snap, models_dir, allow_download=allow_download)
        hooks.step("weights", len(paths), total)
    return paths


def prefetch(spec: "VariantSpec", models_dir: Path, allow_download: bool,
             hooks: Hooks = NO_HOOKS) -> None:
    """Download what the variant needs, or, with downloads off, warn about what is missing.

    A stage whose files are missing fails when it is first used, with the list of what to get and
    where to put it; so e.g. the VAE round trip runs with just the VAE and vocoder files.
    """
    if allow_download and not W.downloads_disabled():
        try:
            resolve_all(spec, models_dir, allow_download=True, hooks=hooks)
        except W.MissingWeightsError as e:  # no network: stages with their files may still run
            log.warning("%s", e)
        return
    missing = W.check_available(required_files(spec), required_snapshots(spec), models_dir)
    if missing:
        log.warning("Some SelVA weights are missing; the stages that need them will fail:\n%s",
                    "\n".join(missing))


def _load_file_into(build: Callable[[], nn.Module], load: Callable[..., None], path: Path,
                    **kwargs) -> nn.Module:
    with torch.device("meta"):
        net = build()
    load(net, W.load_checkpoint(path), source=str(path), **kwargs)
    leftover = unset_tensors(net)
    if leftover:  # a loader that forgot a derived buffer: fail loudly rather than compute on air
        raise SelvaError(f"Internal error: {path} left {len(leftover)} tensors unset ({leftover[:3]}).")
    return net


def _identity(path: Path) -> tuple[str, int, int]:
    st = path.stat()  # follows the Hugging Face cache's symlinks to the real blob
    return (str(path.resolve()), int(st.st_size), int(st.st_mtime_ns))


class StageBuilders:
    """How to build each stage of one pipeline from the files (each resolved when first needed)."""

    def __init__(self, spec: "VariantSpec", models_dir: Path, allow_download: bool, clip_frames: bool):
        self.spec = spec
        self.models_dir = Path(models_dir)
        self.allow_download = allow_download
        self.clip_frames = clip_frames

    def _file(self, key: str) -> Path:
        return self._resolve(W.resolve_file, W.FILES[key])

    def _snapshot(self, key: str) -> Path:
        return self._resolve(W.resolve_snapshot, W.HUB[key])

    def _resolve(self, resolve: Callable[..., Path], item) -> Path:
        try:
            return resolve(item, self.models_dir, allow_download=self.allow_download)
        except W.MissingWeightsError:
            # One message with every missing file of the variant, so that one trip fixes them all.
            raise W.missing_error(W.check_available(required_files(self.spec), required_snapshots(self.spec),
                                                    self.models_dir)) from None

    def feature_encoder_files(self) -> list[tuple[str, int, int]]:
        """(path, size, modification time in ns) of every file the feature encoders read.

        T5, CLIP (text; image tower too when ``clip_frames``) and the TextSynchformer: the
        identity of the weights that make a clip's features, for the feature cache key. A file
        that is missing appears as its name with size -1 (it cannot have made any features).
        Nothing is downloaded here.
        """
        found: list[tuple[str, int, int]] = []
        wf = W.FILES[self.spec.video_enc_file]
        path = W.local_path(wf, self.models_dir)
        found.append(_identity(path) if path is not None else (wf.path, -1, -1))
        for key in ("t5", "clip"):
            snap = W.HUB[key]
            try:
                folder = W.resolve_snapshot(snap, self.models_dir, allow_download=False)
            except W.MissingWeightsError:
                found += [(f"{snap.repo_id}/{name}", -1, -1) for name in snap.files]
                continue
            found += [_identity(folder / name) for name in snap.files]
        return found

    def t5(self) -> nn.Module:
        from .encoders.t5 import T5TextEncoder

        return T5TextEncoder.from_pretrained(self._snapshot("t5"))

    def clip(self) -> nn.Module:
        from .encoders.clip import ClipEncoder

        return ClipEncoder.from_pretrained(self._snapshot("clip"), image=self.clip_frames)

    def text_synch(self) -> nn.Module:
        return _load_file_into(lambda: TextSynchformer(self.spec.text_synch), load_text_synch_weights,
                               self._file(self.spec.video_enc_file))

    def generator(self) -> nn.Module:
        seq = self.spec.seq_lengths(_DEFAULT_DURATION)
        return _load_file_into(
            lambda: SelvaGenerator(self.spec.generator, latent_seq_len=seq.latent, clip_seq_len=seq.clip,
                                   sync_seq_len=seq.sync),
            load_generator_weights, self._file(self.spec.generator_file))

    def vae(self, need_encoder: bool = False) -> nn.Module:
        # The encoder is only needed for the VAE round trip: leave it out unless asked for.
        return load_vae(self._file(self.spec.vae_file), self.spec.vae, need_encoder=need_encoder)

    def vae_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's mel statistics, read from its file without loading the network."""
        return load_vae_statistics(self._file(self.spec.vae_file), self.spec.vae)

    def vocoder(self) -> nn.Module:
        with bigvgan_errors():
            if self.spec.vocoder != "bigvgan_v1":
                snapshot = self._snapshot(self.spec.vocoder_snapshot)
                cfg = read_bigvgan_v2_config(snapshot)
                return _vocoder_from_file(snapshot / V2_WEIGHTS_NAME, lambda obj, source, done:
                                          load_bigvgan_v2_state(obj, cfg, source=source, done=done))
            path = self._file(self.spec.vocoder_file)
            extra = {} if self.spec.vocoder_config is None else {"cfg": self.spec.vocoder_config}
            return _vocoder_from_file(path, lambda obj, source, done:
                                      load_bigvgan_v1(obj, source=source, done=done, **extra))

    def mel(self) -> nn.Module:
        return MelConverter(self.spec.mel)


@contextlib.contextmanager
def bigvgan_errors() -> Iterator[None]:
    """The standalone BigVGAN package's errors as SelvaError, with the same message."""
    try:
        yield
    except BigVGANError as e:
        raise SelvaError(str(e)) from e


def _vocoder_from_file(path: Path, load: Callable[..., nn.Module]) -> nn.Module:
    """Read a vocoder file once and load it, letting its pages go as the weights are folded
    (``load(obj, source, done)`` calls one of bigvgan's loaders); the folded weights are new
    tensors, so the few left viewing the memory-mapped file are copied and the mapping can go."""
    obj = W.load_checkpoint(path)
    span, mapped = memory_span(obj), file_mapping_span(obj)
    model = load(obj, str(path), lambda t: drop_mapped_pages(t, mapped))
    del obj
    release_file_pages(model, span)
    return model


def register_stages(manager: "OffloadManager", builders: StageBuilders,
                    precision_dtype: torch.dtype) -> None:
    """Register every stage ``builders`` can make with ``manager``, to be built on first use.

    This module knows nothing of the pipeline (the pipeline imports it, never the reverse).
    """
    for name, dtype in stage_dtypes(precision_dtype).items():
        manager.add_lazy(name, getattr(builders, name), dtype)
