"""Textual inversion: a few learned tokens in the prompt sequences SelVA conditions on.

Two paths (``path``, stored in the file's metadata):

``clip`` (default)
    The generator reads the prompt as 77 per-token CLIP text features: it attends to all of them
    (joint attention) and mean-pools them into its global condition. ``n_tokens`` vectors in that
    feature space take the place of the LAST ``n_tokens`` positions of the sequence (padding for
    any prompt shorter than ``77 - n_tokens`` tokens, so the prompt's own words stay intact). The
    sync features are untouched.

``clip_t5``
    The ``clip`` tokens, plus ``n_tokens`` learned T5 vectors (``embeddings_t5``, 768 wide) in the
    T5 sequence the TextSynchformer conditions the sync features on: SelVA's selectivity (which
    sound in the video the sync features follow) comes through that path. The T5 sequence holds
    only the prompt's real tokens (incl. EOS, padded only in batches), so the learned tokens are
    APPENDED after it with mask 1, not put in place of anything. The cross-attention has no
    position encoding on the text side, so where they are appended (after padding in a batch)
    does not matter. The sync features are then re-encoded from the frames the features keep
    (their sync mask and mask strength as extracted): only the text cross-attention and the
    pooling run again, the MotionFormer backbone's tokens are reused (the pipeline's memo at
    sampling time, a bounded per-clip cache while training).

Every weight stays frozen; the loss is the generator's own flow-matching loss on a LoRA-style
dataset (``selva.train``), run by the shared training loop. With ``clip_t5`` each step recomputes
each clip's sync features with the learned T5 tokens, so gradients reach them through the frozen
TextSynch cross-attention.

At sampling time ``ti_strength`` s blends from the prompt (0) to the learned tokens (1): the
CLIP positions go from the prompt's own features to the learned ones; the appended T5 tokens go
from the prompt's last real T5 token (EOS) to the learned ones, ``eos + s * (learned - eos)``.
Strength 0 returns the features object itself (the plain Sampler output, bit for bit); note that
a small s > 0 on ``clip_t5`` still appends tokens (near-copies of EOS), so it is close to, not
equal to, off.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..artifacts import load_safetensors, meta_value, save_safetensors
from ..errors import SelvaError
from ..features import Features
from ..grad import make_differentiable, make_patches_differentiable
from ..hooks import Hooks, or_default
from ..train.loop import LoopConfig, TrainTask
from ..train.loss import TIMESTEP_SAMPLING
from ..train.options import check_limits, from_dict, setting

log = logging.getLogger(__name__)

FORMAT = "selva-textual-inversion"
FORMAT_VERSION = 1
PATHS = ("clip", "clip_t5")
# Where the learned CLIP tokens sit in the 77-token sequence: "suffix" = the last n positions
# (padding for most prompts, the prompt stays whole), "prefix" = right after the start token
# (positions 1..n: attended more strongly, but they take the place of the prompt's first words).
INJECT_MODES = ("suffix", "prefix")
RUN_NAME = "textual_inversion"
# Default budget for the backbone tokens kept while training on clip_t5 (an 8 s clip's are about
# 110 MB in fp32); clips beyond it are recomputed each time they come up.
DEFAULT_BACKBONE_CACHE_MB = 2048


@dataclass
class TextualInversion:
    """Learned tokens: CLIP-text-feature ones (n_tokens, clip_dim) float32, and for path
    ``clip_t5`` T5 ones (n_tokens, t5_dim) as well."""

    embeddings: torch.Tensor
    variant: str
    path_kind: str = "clip"
    info: dict = field(default_factory=dict)
    path: Optional[Path] = None
    embeddings_t5: Optional[torch.Tensor] = None  # path clip_t5 only
    inject_mode: str = "suffix"

    def __post_init__(self) -> None:
        if self.inject_mode not in INJECT_MODES:
            raise SelvaError(f"Unknown textual-inversion inject_mode {self.inject_mode!r}; known: "
                             f"{', '.join(INJECT_MODES)}.")
        if self.path_kind not in PATHS:
            raise SelvaError(f"Unknown textual-inversion path {self.path_kind!r}; known: {', '.join(PATHS)}.")
        if self.path_kind == "clip_t5":
            t5 = self.embeddings_t5
            if t5 is None or t5.dim() != 2 or t5.shape[0] != self.embeddings.shape[0]:
                shape = None if t5 is None else tuple(t5.shape)
                raise SelvaError(f"A clip_t5 textual inversion needs (n_tokens={self.n_tokens}, t5_dim) "
                                 f"T5 tokens, got {shape}; train it again.")
        elif self.embeddings_t5 is not None:
            raise SelvaError("A clip-path textual inversion holds no T5 tokens; use path clip_t5 for those.")

    @property
    def n_tokens(self) -> int:
        return int(self.embeddings.shape[0])

    def save(self, path: Path) -> Path:
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "variant": self.variant,
                "path": self.path_kind, "n_tokens": self.n_tokens, "inject_mode": self.inject_mode,
                **{f"info.{k}": v for k, v in self.info.items()}}
        tensors = {"embeddings": self.embeddings.float()}
        if self.embeddings_t5 is not None:
            tensors["embeddings_t5"] = self.embeddings_t5.float()
            meta["t5_dim"] = int(self.embeddings_t5.shape[1])
        self.path = save_safetensors(path, tensors, meta)
        return self.path

    @classmethod
    def load(cls, path: Path) -> "TextualInversion":
        from ..compat.pt_files import is_pt, read_textual_inversion  # the earlier pack's .pt files

        if is_pt(path):  # no variant recorded: its tokens fit every variant's 1024-wide CLIP text
            emb, kind, inject_mode, info = read_textual_inversion(path)
            return cls(emb, "", kind, info, Path(path), inject_mode=inject_mode)
        tensors, meta = load_safetensors(path, "textual inversion")
        if meta_value(meta, "format") != FORMAT:
            raise SelvaError(f"{path} is not a SelVA textual-inversion file (format "
                             f"{meta_value(meta, 'format')!r}); train one with SelVA Textual "
                             f"Inversion Trainer.")
        if meta_value(meta, "version") != FORMAT_VERSION:
            raise SelvaError(f"{path} is textual-inversion format v{meta_value(meta, 'version')}; "
                             f"this version reads v{FORMAT_VERSION}.")
        emb = tensors.get("embeddings")
        if emb is None or emb.dim() != 2:
            raise SelvaError(f"{path} holds no (n_tokens, dim) 'embeddings' tensor; train it again.")
        kind = str(meta_value(meta, "path", "clip"))
        if kind not in PATHS:
            raise SelvaError(f"{path} was trained for path {kind!r}, which this version cannot apply "
                             f"(it knows {', '.join(PATHS)}).")
        t5 = None
        if kind == "clip_t5":
            t5 = tensors.get("embeddings_t5")
            if t5 is None or t5.dim() != 2 or t5.shape[0] != emb.shape[0]:
                raise SelvaError(f"{path} is a clip_t5 textual inversion but holds no ({emb.shape[0]}, "
                                 f"t5_dim) 'embeddings_t5' tensor; train it again.")
            t5 = t5.float()
        info = {k[len("info."):]: meta_value(meta, k) for k in meta if k.startswith("info.")}
        inject = str(meta_value(meta, "inject_mode", "suffix"))  # files from before: suffix
        return cls(emb.float(), str(meta_value(meta, "variant")), kind, info, Path(path), t5, inject)


def check_compatible(ti: TextualInversion, variant: str, text_shape: torch.Size) -> None:
    seq_len, dim = int(text_shape[-2]), int(text_shape[-1])
    if (ti.variant and ti.variant != variant) or ti.embeddings.shape[1] != dim:
        trained_on = ti.variant or "a model the file does not name"  # earlier .pt files
        raise SelvaError(f"This textual inversion was trained on {trained_on} (token width "
                         f"{ti.embeddings.shape[1]}), but the model is {variant} (width {dim}). "
                         f"Train one for this model.")
    if not 1 <= ti.n_tokens < seq_len - 1:
        raise SelvaError(f"The textual inversion holds {ti.n_tokens} tokens; at most {seq_len - 2} fit.")


def with_tokens(text_clip: torch.Tensor, tokens: torch.Tensor, strength: float = 1.0,
                inject_mode: str = "suffix") -> torch.Tensor:
    """``text_clip`` (..., 77, D) with ``len(tokens)`` positions blended toward ``tokens``: the
    last ones (``suffix``) or those right after the start token (``prefix``, see INJECT_MODES)."""
    n = tokens.shape[0]
    start = 1 if inject_mode == "prefix" else text_clip.shape[-2] - n
    head, part, tail = text_clip[..., :start, :], text_clip[..., start:start + n, :], text_clip[..., start + n:, :]
    tokens = tokens.to(part.device, part.dtype).expand_as(part)
    new_part = tokens if strength == 1.0 else part + strength * (tokens - part)
    return torch.cat([head, new_part, tail], dim=-2)


def check_t5_compatible(ti: TextualInversion, t5_dim: int) -> None:
    """The T5 tokens of a clip_t5 embedding must be as wide as the model's T5 features."""
    width = int(ti.embeddings_t5.shape[1])
    if width != int(t5_dim):
        raise SelvaError(f"This textual inversion's T5 tokens are {width} wide, but the model's "
                         f"TextSynch reads T5 features of width {t5_dim}. Train one for this model.")


def with_t5_tokens(text_t5: torch.Tensor, text_t5_mask: torch.Tensor, tokens: torch.Tensor,
                   strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The T5 sequence (B, L, D) / mask (B, L) with ``len(tokens)`` positions appended (mask 1).

    At ``strength`` s the appended vectors are each row's last real token (EOS) + s * (tokens -
    EOS); s == 1 gives ``tokens`` exactly (what training sees). Differentiable in ``tokens``.
    """
    if text_t5.dim() != 3 or tuple(text_t5_mask.shape) != tuple(text_t5.shape[:2]):
        raise SelvaError(f"T5 features {tuple(text_t5.shape)} and mask {tuple(text_t5_mask.shape)} do "
                         f"not match; extract the features again.")
    b, length, _ = text_t5.shape
    n = tokens.shape[0]
    tokens = tokens.to(text_t5.device, text_t5.dtype).unsqueeze(0).expand(b, -1, -1)
    if strength == 1.0:
        extra = tokens
    else:
        real = text_t5_mask != 0
        if not bool(real.any(dim=1).all()):
            raise SelvaError("The features' T5 sequence holds no real token; extract the features again.")
        positions = torch.arange(length, device=real.device).expand(b, -1)
        last = torch.where(real, positions, -1).max(dim=1).values
        anchor = text_t5[torch.arange(b, device=text_t5.device), last.to(text_t5.device)].unsqueeze(1)  # (B, 1, D)
        extra = anchor + strength * (tokens - anchor)
    ones = torch.ones(b, n, dtype=text_t5_mask.dtype, device=text_t5_mask.device)
    return torch.cat([text_t5, extra], dim=1), torch.cat([text_t5_mask, ones], dim=1)


def apply_to_features(features: Features, ti: Optional[TextualInversion], strength: float,
                      pipe=None, hooks: Optional[Hooks] = None) -> Features:
    """Features carrying the learned tokens; the same object at strength 0.

    Path ``clip`` changes only the CLIP text sequence. Path ``clip_t5`` also appends the T5
    tokens and re-encodes the sync features from the features' frames, so it needs ``pipe``
    (the SelvaPipeline; the result is remembered there, a re-run does not encode again).
    """
    if ti is None or strength == 0:
        return features
    check_compatible(ti, features.variant, features.text_clip.shape)
    strength = float(strength)
    text_clip = with_tokens(features.text_clip.float(), ti.embeddings, strength, ti.inject_mode)
    if ti.path_kind == "clip":
        return replace(features, text_clip=text_clip)
    if pipe is None:
        raise SelvaError("A clip_t5 textual inversion re-encodes the sync features, which needs the "
                         "model: pass the pipeline.")
    if not features.has_video:
        raise SelvaError("This textual inversion (path clip_t5) changes the video's sync features, and "
                         "text to audio has no video: use an embedding trained on path clip.")
    check_t5_compatible(ti, pipe.variant.text_synch.text_dim)
    check_t5_compatible(ti, features.text_t5.shape[-1])
    t5, mask = with_t5_tokens(features.text_t5.float(), features.text_t5_mask, ti.embeddings_t5, strength)
    with torch.no_grad():
        sync = pipe.encoding.sync_features_for_text(features, t5, mask, hooks)
    return replace(features, text_clip=text_clip, text_t5=t5, text_t5_mask=mask, sync_features=sync)


# ------------------------------------------------------------------------------- training
@dataclass
class TiTrainOptions:
    """Every setting of a textual-inversion run, each written once: the node's inputs, the CLI's
    options and a sweep file's keys come from these fields (``selva/train/options.py``)."""

    n_tokens: int = setting(4, "Learned tokens. 4 is plenty for a timbre.", min=1, max=32)
    init_text: str = setting("", "Words the tokens start from (e.g. 'metal clang'). Empty = the dataset's "
                             "first prompt.")
    steps: int = setting(1000, "Optimizer steps. 500-2000 for a timbre; on 20-50 clips the loss flattens "
                                        "after a few hundred.", min=1, max=100000)
    lr: float = setting(5e-4, "AdamW learning rate on the tokens (default 5e-4; lower it if the loss jumps).", min=1e-6, max=1.0, step=1e-5)
    batch_size: int = setting(1, "Clips per step (clips of one duration batch together).", min=1, max=64)
    save_every: int = setting(250, "Steps between resumable checkpoints and token files.", min=1, max=100000)
    seed: int = setting(0, "Draws the noise, times and clip order; same seed = same run.", min=0,
                        max=2**63 - 1, seed=True)
    path: str = setting("clip", "clip: tokens in the CLIP text sequence the generator attends to and pools. "
                        "clip_t5: also tokens appended to the T5 sequence the TextSynchformer conditions "
                        "the sync features on (SelVA's selectivity); slower per step and keeps the clips' "
                        "video-encoder tokens in memory.", choices=PATHS)
    warmup_steps: int = setting(0, "Linear learning-rate warm-up steps.", min=0, max=100000)
    grad_accum: int = setting(1, "Micro-steps per optimizer step.", min=1, max=256)
    timestep_sampling: str = setting("logit_normal", "Flow-time distribution.", choices=TIMESTEP_SAMPLING[:2])
    eval_samples: bool = setting(True, "Write eval samples at each save.")
    eval_steps: int = setting(25, "Sampling steps of the eval samples.", min=1, max=1000)
    # clip_t5: host memory for the clips' backbone tokens (0 = recompute them at every step)
    backbone_cache_mb: int = setting(DEFAULT_BACKBONE_CACHE_MB, "clip_t5: host memory (MB) for the clips' "
                                     "video-encoder tokens, recomputed when they do not fit (0 = keep none).",
                                     min=0)
    # --- issue 23 (node inputs in this order, after the ones above)
    inject_mode: str = setting("suffix", "Where the learned tokens go in the 77-token CLIP sequence: suffix = "
                               "the last positions (the prompt stays whole), prefix = right after the start "
                               "token (attended more strongly; they take the place of the prompt's first "
                               "words).", choices=INJECT_MODES)
    token_norm_clamp: float = setting(0.0, "After every step, shrink each learned CLIP token whose norm "
                                      "exceeds this many times the dataset prompts' mean token norm (keeps "
                                      "them near real words; 0 = off, the earlier pack used 1.5).",
                                      min=0.0, max=10.0, step=0.1)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TiTrainOptions":
        return from_dict(cls, values, "textual-inversion")

    def validate(self) -> None:
        check_limits(self)
        self.loop_config().validate()

    def loop_config(self) -> LoopConfig:
        # No weight decay (it would pull the tokens toward zero, not toward the text manifold) and
        # no gradient clipping (a few hundred numbers; Adam already normalises their scale).
        return LoopConfig(steps=int(self.steps), lr=float(self.lr), warmup_steps=int(self.warmup_steps),
                          batch_size=int(self.batch_size), grad_accum=int(self.grad_accum),
                          save_every=int(self.save_every), seed=int(self.seed), weight_decay=0.0,
                          max_grad_norm=0.0, run_name=RUN_NAME, eval_samples=bool(self.eval_samples))


def initial_tokens(pipe, text: str, n_tokens: int) -> torch.Tensor:
    """CLIP text features of ``text``'s first ``n_tokens`` tokens (after the start token)."""
    with torch.no_grad():
        feats = pipe.encoding.encode_clip_text([text])[0].float().cpu()  # (77, D)
    return feats[1:1 + n_tokens].clone()


def initial_t5_tokens(pipe, text: str, n_tokens: int) -> torch.Tensor:
    """T5 features of ``text``'s first ``n_tokens`` tokens (T5 has no start token); a text with
    fewer tokens repeats its last one (EOS), where the appended tokens start at strength 0."""
    with torch.no_grad(), pipe.manager.use("t5") as t5:
        feats, mask = t5.encode([text])
    real = feats[0][mask[0].to(feats.device) != 0].float().cpu()  # (L, D), EOS included
    if real.shape[0] < n_tokens:
        real = torch.cat([real, real[-1:].expand(n_tokens - real.shape[0], -1)])
    return real[:n_tokens].clone()


class TiTask(TrainTask):
    """The shared loop's task: the (n_tokens, D) CLIP tokens (and for clip_t5 the (n_tokens,
    768) T5 tokens) train; the generator and the TextSynchformer stay frozen.

    With clip_t5 each step re-encodes each clip's sync features: the MotionFormer backbone's
    tokens do not depend on the text, so they are computed once per clip without gradients and
    kept in a bounded cache (recomputed when evicted); only the cross-attention and the pooling
    run with gradients, from the learned T5 tokens. ``text_synch`` is the TextSynchformer on the
    compute device for the whole run (the caller holds its stage).
    """

    resume_keys = ("variant", "n_tokens", "path", "inject_mode")

    def __init__(self, pipe, gen, dataset, options: TiTrainOptions, init: torch.Tensor,
                 eval_features: Optional[Features] = None, init_t5: Optional[torch.Tensor] = None,
                 text_synch=None):
        from ..memo import LruCache

        self.pipe, self.gen, self.dataset, self.options = pipe, gen, dataset, options
        self.eval_features = eval_features if eval_features is not None else dataset.clips[0].features
        if self.eval_features.variant != pipe.variant.name:
            raise SelvaError(f"eval_features were extracted for {self.eval_features.variant!r}, the "
                             f"model is {pipe.variant.name!r}.")
        self.embedding = nn.Parameter(init.to(pipe.device, torch.float32).clone())
        self.embedding_t5: Optional[nn.Parameter] = None
        self.text_synch = text_synch
        self.backbone = LruCache(max_bytes=int(options.backbone_cache_mb) * 1024**2)
        if options.path == "clip_t5":
            if init_t5 is None or text_synch is None:
                raise SelvaError("Path clip_t5 needs the initial T5 tokens and the TextSynchformer.")
            self.embedding_t5 = nn.Parameter(init_t5.to(pipe.device, torch.float32).clone())
        self.init_text = ""
        self.last_export: Optional[TextualInversion] = None
        self.norm_limit: Optional[float] = None
        if options.token_norm_clamp > 0:  # the mean norm of the prompts' real CLIP tokens (1..20)
            norms = torch.cat([c.conditions.text_clip[1:21].float().norm(dim=-1) for c in dataset.clips])
            self.norm_limit = float(options.token_norm_clamp) * float(norms.mean())
        self._negative = None
        if options.eval_samples:
            with torch.no_grad():
                self._negative = pipe.encoding.encode_clip_text([""]).float().cpu()

    def trainable_parameters(self):
        return [self.embedding] if self.embedding_t5 is None else [self.embedding, self.embedding_t5]

    def after_step(self) -> None:
        if self.norm_limit is not None:  # back toward the norm of real words
            norms = self.embedding.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            self.embedding.mul_((self.norm_limit / norms).clamp(max=1.0))

    def num_items(self) -> int:
        return len(self.dataset)

    def describe(self) -> dict[str, Any]:
        return {"variant": self.pipe.variant.name, "n_tokens": self.options.n_tokens,
                "path": self.options.path, "init_text": self.init_text,
                **({"inject_mode": self.options.inject_mode} if self.options.inject_mode != "suffix" else {}),
                "timestep_sampling": self.options.timestep_sampling,
                "dataset_digest": self.dataset.digest, "clips": len(self.dataset),
                "precision": self.pipe.options.precision}

    def backbone_tokens(self, index: int) -> torch.Tensor:
        """Clip ``index``'s backbone tokens (S, slots * patches, D): cached, or computed now."""
        from ..streamed_encode import sync_backbone_tokens

        tokens = self.backbone.get(index)
        if tokens is None:
            features = self.dataset.clips[index].features
            with torch.no_grad():  # text-independent: nothing here needs a gradient
                tokens = sync_backbone_tokens(self.text_synch, features.sync_frames_u8.permute(0, 3, 1, 2),
                                              features.sync_mask, features.mask_strength)
            self.backbone.put(index, tokens)
        return tokens

    def sync_features(self, index: int) -> torch.Tensor:
        """Clip ``index``'s sync features (S_seq, D) with the learned T5 tokens appended to its
        prompt's T5 sequence, differentiable w.r.t. those tokens."""
        net = self.text_synch
        item = self.dataset.clips[index]
        tokens = self.backbone_tokens(index).to(net.device)
        t5, mask = with_t5_tokens(item.features.text_t5.to(net.device, torch.float32),
                                  item.features.text_t5_mask.to(net.device), self.embedding_t5)
        text_f, text_mask = net.prepend_sup_tokens(t5.to(net.dtype), mask)
        sync = net.encode_tokens(tokens, text_f, text_mask)[0]
        if sync.shape[0] < item.seq.sync:
            raise SelvaError(f"Clip {item.name}: the sync encoder made {sync.shape[0]} tokens but "
                             f"{item.seq.duration:.2f} s needs {item.seq.sync}; extract the features again.")
        return sync[:item.seq.sync]

    def loss(self, batch) -> torch.Tensor:
        from ..train.dataset import group_by_length
        from ..train.loss import ClipConditions, draw_noise, flow_matching_loss

        clips = self.dataset.clips
        out: list = [None] * len(batch)
        for group in group_by_length(clips, batch.indices):
            indices = [batch.indices[pos] for pos in group]
            items = [clips[i] for i in indices]
            self.gen.set_seq_lengths(*items[0].seq_key)
            make_differentiable(self.gen)  # the rotary tables were just rebuilt
            # null_probability 0: a dropped text condition would teach the tokens nothing
            noises = [draw_noise(item.latent_mean.shape, self.options.timestep_sampling,
                                 batch.generator(pos), null_probability=0.0)
                      for item, pos in zip(items, group)]
            conds = []
            for index, item in zip(indices, items):
                sync = item.conditions.sync_f if self.embedding_t5 is None else self.sync_features(index)
                conds.append(ClipConditions(item.conditions.clip_f, sync,
                                            with_tokens(item.conditions.text_clip.to(self.embedding.device),
                                                        self.embedding, inject_mode=self.options.inject_mode)))
            mean = torch.stack([item.latent_mean for item in items])
            std = torch.stack([item.latent_std for item in items])
            losses = flow_matching_loss(self.gen, mean, std, conds, noises)
            for pos, value in zip(group, losses):
                out[pos] = value
        return torch.stack(out)

    def eval_sample(self):
        from ..train.sampling import sample_latent_with

        if self._negative is None:
            return None
        # The Sampler's own path (clip_t5: sync features re-encoded through the pipeline).
        feats = apply_to_features(self.eval_features, self.current(with_info=False), 1.0, pipe=self.pipe)
        seq = self.pipe.variant.seq_lengths(feats.duration)
        with torch.no_grad():
            latent = sample_latent_with(self.gen, feats, self._negative, steps=self.options.eval_steps,
                                        cfg_strength=4.5, seed=self.options.seed, seq=seq)
        wave = self.pipe.decode(latent)
        return wave[0], self.pipe.sample_rate

    def current(self, with_info: bool = True) -> TextualInversion:
        info = {"steps": self.step, "init_text": self.init_text, "dataset_digest": self.dataset.digest,
                "clips": len(self.dataset), "options": asdict(self.options)} if with_info else {}
        t5 = None if self.embedding_t5 is None else self.embedding_t5.detach().float().cpu().clone()
        return TextualInversion(self.embedding.detach().float().cpu().clone(), self.pipe.variant.name,
                                self.options.path, info, embeddings_t5=t5, inject_mode=self.options.inject_mode)

    def export(self, run_dir: Path, tag: str) -> Optional[Path]:
        from ..artifacts import unique_path

        ti = self.current()
        ti.save(unique_path(Path(run_dir) / f"embeddings_{tag}.safetensors"))
        self.last_export = ti
        return ti.path


@dataclass
class TiRun:
    result: Any  # selva.train.loop.TrainResult
    embedding: TextualInversion


def train_textual_inversion(pipe, data_dir: Path, output_dir: Path, options: TiTrainOptions, *,
                            resume: Optional[str] = None, hooks: Optional[Hooks] = None,
                            cache_dir: Optional[Path] = None, dataset=None, run_dir: Optional[Path] = None,
                            should_stop=None, eval_features: Optional[Features] = None) -> TiRun:
    """Learn ``n_tokens`` tokens on the clips of ``data_dir`` with the shared training loop."""
    from ..train.dataset import load_dataset
    from ..train.loop import run_training

    hooks = or_default(hooks)
    options.validate()
    t5_path = options.path == "clip_t5"
    with torch.inference_mode(False):
        if dataset is None:
            dataset = load_dataset(pipe, data_dir, cache_dir=cache_dir, hooks=hooks)
        text = options.init_text.strip() or dataset.clips[0].prompt
        init = initial_tokens(pipe, text, options.n_tokens)
        init_t5 = initial_t5_tokens(pipe, text, options.n_tokens) if t5_path else None
        # The pipeline's own generator (this view's LoRA patches included), frozen: only the
        # tokens train, so no private copy of the network is needed. clip_t5 holds the
        # TextSynchformer's stage for the whole run too: the backward pass of a step runs after
        # its loss returned, through the weights on the compute device.
        with pipe.use_generator() as gen, \
                (pipe.manager.use("text_synch") if t5_path else contextlib.nullcontext()) as text_synch:
            make_differentiable(gen)
            make_patches_differentiable(pipe.generator_patches)
            if text_synch is not None:
                make_differentiable(text_synch)
            task = TiTask(pipe, gen, dataset, options, init, eval_features, init_t5=init_t5,
                          text_synch=text_synch)
            task.init_text = text
            extra = {"kind": "textual_inversion", "data_dir": str(dataset.data_dir),
                     "dataset_digest": dataset.digest, "options": asdict(options)}
            result = run_training(task, options.loop_config(), Path(output_dir), resume=resume, hooks=hooks,
                                  run_dir=run_dir, should_stop=should_stop, extra_meta=extra)
    return TiRun(result, task.last_export or task.current())


def run_ti_sweep(pipe, experiments_file: Path, output_dir: Path, *, hooks: Optional[Hooks] = None,
                 resolve_data_dir=None):
    """Several textual-inversion runs from one experiments file (the LoRA sweep's JSON shape:
    ``{"base": {...}, "experiments": [{"name": ..., <overrides>}, ...]}``), dataset encoded once."""
    from ..train.sweep import run_sweep

    return run_sweep(pipe, experiments_file, output_dir, hooks=hooks, train=train_textual_inversion,
                     options_cls=TiTrainOptions, resolve_data_dir=resolve_data_dir)
