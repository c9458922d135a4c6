"""Activation steering: vectors added to the generator's blocks' latent stream while sampling.

Extraction (:func:`extract_steering`) samples each clip of a feature dataset along an ordinary
CFG trajectory and, at every step, runs the generator once under the clip's conditions and
once under empty conditions (the learned "no video, no text" features) at the same noisy
latent. Per block, the difference of the two latent-stream outputs, averaged over tokens,
clips and steps, is that block's vector: the direction in which "sounding like this dataset"
moves the block's hidden state.

Sampling (:class:`SteeringPatch`) adds ``strength * vector`` to the chosen blocks' latent-stream
output through forward hooks. The hook acts on every generator pass, so on BOTH classifier-free
guidance branches alike (conditional and unconditional, also when they run as one batch): the
guidance difference still points where the video and prompt say, while the whole prediction is
shifted toward the dataset. Strength 0 attaches no hook at all, so the output is bit-identical.

Two modes (:data:`MODES`), chosen at extraction and carried by the file:

* ``per_block`` (the default, above): one vector per block, averaged over latent positions, added
  on both guidance branches.
* ``per_position`` (the earlier SelVA pack's steering): one vector per block AND latent position
  (the differences are not averaged over tokens), added to the conditional guidance branch only,
  so the guidance multiplies it by ``cfg_strength`` instead of cancelling it. A generation of
  another length gets the vectors resampled linearly along the positions (as that pack did).
  Its ``.pt`` files load into this mode (:mod:`..compat.pt_files`).
"""
from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import torch
from torch import nn

from ..artifacts import load_safetensors, meta_value, save_safetensors, write_atomic
from ..errors import SelvaError
from ..features import Features
from ..hooks import Hooks, NO_HOOKS
from ..sampling import initial_noise, time_grid
from .. import conditioning

if TYPE_CHECKING:
    import numpy as np

    from ..pipeline import SelvaPipeline

log = logging.getLogger(__name__)

FORMAT = "selva-steering"
FORMAT_VERSION = 1  # per-block files; per-position ones are v2 so older readers refuse them clearly
PER_POSITION_VERSION = 2
MODES = ("per_block", "per_position")


def generator_blocks(generator: nn.Module) -> list[nn.Module]:
    """Joint blocks then fused blocks: the numbering users pick blocks by."""
    return list(generator.joint_blocks) + list(generator.fused_blocks)


def block_names(generator: nn.Module) -> list[str]:
    return ([f"joint_{i}" for i in range(len(generator.joint_blocks))] +
            [f"fused_{i}" for i in range(len(generator.fused_blocks))])


def _latent_stream(output):
    """The latent-stream tensor of a block's output (joint blocks also return CLIP/text streams)."""
    return output[0] if isinstance(output, tuple) else output


def _with_latent_stream(output, latent: torch.Tensor):
    return (latent, *output[1:]) if isinstance(output, tuple) else latent


@dataclass
class SteeringVectors:
    """One vector per generator block (or per block and latent position), with what is needed to
    check and pick them."""

    vectors: torch.Tensor  # (n_blocks, hidden), or (n_blocks, positions, hidden) per position; float32
    magnitudes: torch.Tensor  # (n_blocks,) L2 norm of each vector (per position: mean over positions)
    hidden_norms: torch.Tensor  # (n_blocks,) mean L2 norm of the block's hidden state per token (NaN: unknown)
    variant: str
    block_names: list[str]
    info: dict = field(default_factory=dict)  # how they were made (dataset, samples, steps, seed)

    @property
    def mode(self) -> str:
        return "per_position" if self.vectors.dim() == 3 else "per_block"

    @property
    def n_blocks(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def hidden_dim(self) -> int:
        return int(self.vectors.shape[-1])

    @property
    def relative_magnitudes(self) -> torch.Tensor:
        """Vector norm over hidden-state norm: how strongly strength 1 pushes each block."""
        return self.magnitudes / self.hidden_norms.clamp_min(1e-12)

    def save(self, path: Path) -> Path:
        version = PER_POSITION_VERSION if self.mode == "per_position" else FORMAT_VERSION
        meta = {"format": FORMAT, "version": version, "mode": self.mode, "variant": self.variant,
                "block_names": self.block_names, **{f"info.{k}": v for k, v in self.info.items()}}
        return save_safetensors(path, {"vectors": self.vectors.float(), "magnitudes": self.magnitudes.float(),
                                       "hidden_norms": self.hidden_norms.float()}, meta)

    @classmethod
    def load(cls, path: Path) -> "SteeringVectors":
        from ..compat.pt_files import is_pt, read_steering  # the earlier pack's .pt (per position)

        if is_pt(path):
            vectors, names, variant, info = read_steering(path)
            # the earlier file records no hidden-state norms: NaN says "unknown" (only the chart uses them)
            return cls(vectors, vector_magnitudes(vectors), torch.full((len(names),), float("nan")), variant,
                       names, info)
        tensors, meta = load_safetensors(path, "steering vectors")
        if meta_value(meta, "format") != FORMAT:
            raise SelvaError(f"{path} is not a SelVA steering-vector file (format "
                             f"{meta_value(meta, 'format')!r}); make one with SelVA Activation "
                             f"Steering Extractor.")
        version = meta_value(meta, "version")
        if version not in (FORMAT_VERSION, PER_POSITION_VERSION):
            raise SelvaError(f"{path} is steering-vector format v{version}; this version reads "
                             f"v{FORMAT_VERSION} and v{PER_POSITION_VERSION}. Extract the vectors again.")
        missing = {"vectors", "magnitudes", "hidden_norms"} - set(tensors)
        if missing:
            raise SelvaError(f"{path} lacks {', '.join(sorted(missing))}; extract the vectors again.")
        info = {k[len("info."):]: meta_value(meta, k) for k in meta if k.startswith("info.")}
        names = meta_value(meta, "block_names", [])
        vectors = tensors["vectors"].float()
        want_dim = 3 if meta_value(meta, "mode", "per_block") == "per_position" else 2
        if vectors.dim() != want_dim or len(names) != vectors.shape[0]:
            raise SelvaError(f"{path} is damaged: {len(names)} block names for vectors of shape "
                             f"{tuple(vectors.shape)}.")
        return cls(vectors, tensors["magnitudes"].float(), tensors["hidden_norms"].float(),
                   str(meta_value(meta, "variant")), list(names), info)


# ----------------------------------------------------------------------------- block choice
def parse_blocks(spec: str, steering: SteeringVectors) -> tuple[int, ...]:
    """``all``, ``topK`` (the K largest vectors) or a comma list of block numbers like ``0,3,7``."""
    text = (spec or "").strip().lower().replace(" ", "")
    n = steering.n_blocks
    if text in ("", "all"):
        return tuple(range(n))
    if text.startswith("top"):
        try:
            k = int(text[3:])
        except ValueError:
            raise SelvaError(f"steering_blocks {spec!r}: write topK with a number, e.g. top3.") from None
        if not 1 <= k <= n:
            raise SelvaError(f"steering_blocks {spec!r}: K must be between 1 and {n} (the blocks "
                             f"these vectors have).")
        order = torch.argsort(steering.magnitudes, descending=True)[:k]
        return tuple(sorted(int(i) for i in order))
    try:
        picked = sorted({int(part) for part in text.split(",") if part != ""})
    except ValueError:
        raise SelvaError(f"steering_blocks {spec!r}: use 'all', 'topK' (e.g. top3) or block numbers "
                         f"like 0,3,7.") from None
    bad = [i for i in picked if not 0 <= i < n]
    if bad or not picked:
        raise SelvaError(f"steering_blocks {spec!r}: block numbers must lie in 0..{n - 1} "
                         f"({', '.join(steering.block_names)}).")
    return tuple(picked)


# --------------------------------------------------------------------------------- the patch
class SteeringPatch:
    """Adds ``strength * vector`` to the chosen blocks' latent stream (a generator patch): on both
    guidance branches for per-block vectors, on the conditional branch only for per-position ones."""

    def __init__(self, steering: SteeringVectors, strength: float, blocks: Sequence[int]):
        self.steering = steering
        self.strength = float(strength)
        self.blocks = tuple(blocks)

    def check(self, generator: nn.Module) -> None:
        names = block_names(generator)
        hidden = generator.cfg.hidden_dim
        if len(names) != self.steering.n_blocks or hidden != self.steering.hidden_dim:
            made_with = self.steering.variant or "a model the file does not name"  # earlier .pt files
            raise SelvaError(
                f"These steering vectors were made with {made_with} ({self.steering.n_blocks} "
                f"blocks of width {self.steering.hidden_dim}), but the model's generator has "
                f"{len(names)} blocks of width {hidden}. Extract vectors with this model.")

    @contextlib.contextmanager
    def attach(self, generator: nn.Module) -> Iterator[None]:
        if self.strength == 0.0 or not self.blocks:  # nothing attached: the output stays bit-identical
            yield
            return
        self.check(generator)
        blocks = generator_blocks(generator)
        with contextlib.ExitStack() as stack:  # hooks removed first, then the branch tracking
            branches = None
            if self.steering.mode == "per_position":  # steers the conditional branch only
                branches = stack.enter_context(_GuidanceBranches.tracking(generator))
            for i in self.blocks:
                stack.enter_context(blocks[i].register_forward_hook(
                    _adder(self.steering.vectors[i], self.strength, branches)))
            yield


@dataclass
class _GuidanceBranches:
    """Which leading rows of the generator pass now running belong to the conditional branch.

    Every sampler here guides through :meth:`SelvaGenerator.cfg_velocity`, which runs the
    conditional branch alone (strength < 1), both branches as one batch of ``2 B`` with the
    conditional first, or the conditional then the unconditional pass. While attached, the
    generator's ``cfg_velocity`` is wrapped to note the batch and strength of each call, and a
    pre-hook on the first block counts the passes within it. A pass outside a guided call (none
    is made while sampling) has no conditional branch and is left alone."""

    batch: Optional[int] = None  # rows of the guided call now running (None: outside one)
    cfg_strength: float = 0.0
    passes: int = 0  # generator passes made so far within that call

    @classmethod
    @contextlib.contextmanager
    def tracking(cls, generator: nn.Module) -> Iterator["_GuidanceBranches"]:
        branches = cls()
        inner = generator.cfg_velocity
        had_own = "cfg_velocity" in vars(generator)

        def cfg_velocity(t, x, cond, uncond, cfg_strength, **kw):
            outer = (branches.batch, branches.cfg_strength, branches.passes)
            branches.batch, branches.cfg_strength, branches.passes = len(x), float(cfg_strength), 0
            try:
                return inner(t, x, cond, uncond, cfg_strength, **kw)
            finally:
                branches.batch, branches.cfg_strength, branches.passes = outer

        def count_pass(module, inputs):
            if branches.batch is not None:
                branches.passes += 1

        generator.cfg_velocity = cfg_velocity
        try:
            with generator_blocks(generator)[0].register_forward_pre_hook(count_pass):
                yield branches
        finally:
            if had_own:
                generator.cfg_velocity = inner
            else:
                del generator.cfg_velocity

    def conditional_rows(self, rows: int) -> int:
        """How many leading rows of a pass of ``rows`` rows are conditional."""
        if self.batch is None:
            return 0
        if self.cfg_strength < 1.0:  # one pass, conditional only
            return rows
        if rows == 2 * self.batch:  # both branches in one batch, conditional first
            return self.batch
        return rows if self.passes == 1 else 0  # separate passes: the first is the conditional


def fit_positions(vectors: torch.Tensor, positions: int) -> torch.Tensor:
    """(P, D) per-position vectors resampled linearly to ``positions`` rows (unchanged if equal)."""
    if vectors.shape[0] == positions:
        return vectors
    resized = torch.nn.functional.interpolate(vectors.T[None], size=positions, mode="linear",
                                              align_corners=False)
    return resized[0].T


def _adder(vectors: torch.Tensor, strength: float, branches: Optional[_GuidanceBranches]):
    """A block's forward hook adding ``strength * vectors`` to its latent stream: a per-block
    vector (D,) to every row; with ``branches``, per-position vectors (P, D), resampled to the
    pass's length, to the conditional rows only."""
    cast: dict = {}

    def hook(module, inputs, output):
        latent = _latent_stream(output)
        n_cond = latent.shape[0] if branches is None else branches.conditional_rows(latent.shape[0])
        if n_cond == 0:
            return output
        key = (latent.shape[1], latent.device, latent.dtype)
        if key not in cast:
            fitted = fit_positions(vectors.float(), latent.shape[1]) if vectors.dim() == 2 else vectors
            cast[key] = (strength * fitted).to(latent.device, latent.dtype)
        delta = cast[key]
        if n_cond == latent.shape[0]:
            return _with_latent_stream(output, latent + delta)
        steered = torch.cat([latent[:n_cond] + delta, latent[n_cond:]])
        return _with_latent_stream(output, steered)

    return hook


# ---------------------------------------------------------------------------- extraction
@dataclass(frozen=True)
class SteeringConfig:
    n_samples: int = 16  # clips drawn from the dataset (repeated with new noise if it has fewer)
    n_timesteps: int = 10  # sampling steps per clip, each giving one difference per block
    seed: int = 0
    cfg_strength: float = 4.5  # guidance of the trajectory the hidden states are taken along
    mode: str = "per_block"  # per_block | per_position (see the module docstring)


class _Recorder:
    """A generator patch that keeps each block's latent stream averaged over tokens (B, D), or
    whole (B, L, D) when ``per_position``."""

    def __init__(self, per_position: bool = False):
        self.per_position = per_position
        self.outputs: dict[int, torch.Tensor] = {}
        self.norms: dict[int, torch.Tensor] = {}

    @contextlib.contextmanager
    def attach(self, generator: nn.Module) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for i, block in enumerate(generator_blocks(generator)):
                stack.enter_context(block.register_forward_hook(self._hook(i)))
            yield

    def _hook(self, index: int):
        def hook(module, inputs, output):
            latent = _latent_stream(output).float()
            self.outputs[index] = latent if self.per_position else latent.mean(dim=1)
            self.norms[index] = latent.norm(dim=-1).mean(dim=1)
        return hook

    def take(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        out, norms = self.outputs, self.norms
        self.outputs, self.norms = {}, {}
        return out, norms


def find_feature_files(directory: Path) -> list[Path]:
    """The features of a dataset folder, read by the one dataset reader (never its hidden cache)."""
    from ..datasets import read_dataset

    directory = Path(directory)
    if not directory.is_dir():
        raise SelvaError(f"Feature folder {directory} does not exist or is not a folder.")
    return [clip.features_path for clip in read_dataset(directory, need_audio=False)]


def extract_steering(pipe: "SelvaPipeline", feature_files: Sequence[Path], config: SteeringConfig,
                     hooks: Hooks = NO_HOOKS) -> SteeringVectors:
    """Mean (conditioned - unconditioned) latent-stream output per block over the dataset (per
    position: kept per latent position, each clip's differences resampled to the positions of the
    first clip drawn)."""
    if config.mode not in MODES:
        raise SelvaError(f"Steering mode {config.mode!r} is not one of {', '.join(MODES)}.")
    if config.n_samples < 1 or config.n_timesteps < 1:
        raise SelvaError(f"n_samples and n_timesteps must be at least 1, got {config.n_samples} "
                         f"and {config.n_timesteps}.")
    if not feature_files:
        raise SelvaError("No feature files to extract steering vectors from.")
    rng = random.Random(config.seed)
    order = list(feature_files)
    rng.shuffle(order)
    picks = [order[i % len(order)] for i in range(config.n_samples)]
    per_position = config.mode == "per_position"
    recorder = _Recorder(per_position)
    positions: Optional[int] = None
    sums = norms = 0  # summed over every (clip, step); divided by their number at the end
    total = config.n_samples * config.n_timesteps
    with torch.no_grad(), pipe.use_generator(extra_patches=[recorder]) as gen:
        names = block_names(gen)
        grid = time_grid(config.n_timesteps)
        for sample, path in enumerate(picks):
            feats = _load_features(path, pipe)
            seq, dtype = pipe.variant.seq_lengths(feats.duration), pipe.stage_dtype("generator")
            # no negative prompt: the unconditional branch is the learned empty one
            cond, uncond = conditioning.clip_conditions(gen, feats, seq, None, pipe.device, dtype)
            x = initial_noise(1, seq.latent, gen.latent_dim, seed=config.seed + sample, device=pipe.device,
                              dtype=dtype)
            for step in range(config.n_timesteps):
                t = float(grid[step])
                t_batch = torch.full((1,), t, device=pipe.device).to(x.dtype)
                v_c = gen.predict_flow(x, t_batch, cond)
                h_c, n_c = recorder.take()
                v_u = gen.predict_flow(x, t_batch, uncond)
                h_u, n_u = recorder.take()
                diff = torch.stack([(h_c[i] - h_u[i]).mean(dim=0) for i in range(len(names))]).cpu()
                if per_position:  # (blocks, L, D): one length for all clips, the first clip's
                    positions = positions or int(diff.shape[1])
                    diff = torch.stack([fit_positions(d, positions) for d in diff])
                norm = torch.stack([0.5 * (n_c[i] + n_u[i]).mean() for i in range(len(names))]).cpu()
                sums += diff.double()
                norms += norm.double()
                v = config.cfg_strength * v_c + (1 - config.cfg_strength) * v_u
                x = x + (grid[step + 1] - grid[step]) * v
                hooks.step("steering", sample * config.n_timesteps + step + 1, total)
    vectors = (sums / total).float()
    info = {"n_samples": config.n_samples, "n_timesteps": config.n_timesteps, "seed": config.seed,
            "cfg_strength": config.cfg_strength, "clips": len(set(picks))}
    return SteeringVectors(vectors, vector_magnitudes(vectors), (norms / total).float(), pipe.variant.name,
                           names, info)


def vector_magnitudes(vectors: torch.Tensor) -> torch.Tensor:
    """(n_blocks,) size of each block's vector; per-position vectors: the mean over positions."""
    norms = vectors.norm(dim=-1)
    return norms.mean(dim=-1) if vectors.dim() == 3 else norms


def _load_features(path: Path, pipe: "SelvaPipeline") -> Features:
    feats = Features.load(path)
    if feats.variant != pipe.variant.name:
        raise SelvaError(f"{path} holds features for {feats.variant}, but the model is "
                         f"{pipe.variant.name}; extract the dataset's features with this model.")
    return feats


# --------------------------------------------------------------------------------- chart
def magnitude_chart(steering: SteeringVectors, path: Optional[Path] = None) -> "np.ndarray":
    """A bar chart of each block's relative vector magnitude: (H, W, 3) uint8; written as PNG if
    ``path`` is given."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 0.45 * steering.n_blocks + 1.5), 3.2), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rel = steering.relative_magnitudes.numpy()
    labels = [f"{i}\n{name}" for i, name in enumerate(steering.block_names)]
    ax.bar(range(len(rel)), rel, color="#3b7dd8")
    ax.set_xticks(range(len(rel)), labels, fontsize=7)
    ax.set_ylabel("|vector| / |hidden state|")
    ax.set_title(f"Steering vector magnitude per block ({steering.variant})", fontsize=9)
    fig.tight_layout()
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    if path is not None:
        write_atomic(Path(path), lambda tmp: fig.savefig(str(tmp), format="png"))
    return image
