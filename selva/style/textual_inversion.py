"""Textual inversion: a few learned tokens in the CLIP text sequence the generator attends to.

The generator reads the prompt as 77 per-token CLIP text features: it attends to all of them
(joint attention) and mean-pools them into its global condition. Textual inversion here learns
``n_tokens`` vectors in that feature space that take the place of the LAST ``n_tokens`` positions
of the sequence (padding for any prompt shorter than ``77 - n_tokens`` tokens, so the prompt's own
words stay intact). Every weight stays frozen; the loss is the generator's own flow-matching loss
on a LoRA-style dataset (``selva.train``), run by the shared training loop.

At sampling time ``ti_strength`` blends those positions from the prompt's own features (0) to the
learned ones (1); strength 0 leaves the features untouched (the plain Sampler output).

Path ``clip`` only: the T5 path into the TextSynchformer (``clip_t5``) is not implemented yet, so
the sync features, and with them the feature cache, are never changed by an embedding.
"""
from __future__ import annotations

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

log = logging.getLogger(__name__)

FORMAT = "selva-textual-inversion"
FORMAT_VERSION = 1
PATHS = ("clip",)
RUN_NAME = "textual_inversion"


@dataclass
class TextualInversion:
    """Learned CLIP-text-feature tokens: (n_tokens, text_dim) float32."""

    embeddings: torch.Tensor
    variant: str
    path_kind: str = "clip"
    info: dict = field(default_factory=dict)
    path: Optional[Path] = None

    @property
    def n_tokens(self) -> int:
        return int(self.embeddings.shape[0])

    def save(self, path: Path) -> Path:
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "variant": self.variant,
                "path": self.path_kind, "n_tokens": self.n_tokens,
                **{f"info.{k}": v for k, v in self.info.items()}}
        out = save_safetensors(path, {"embeddings": self.embeddings.float()}, meta)
        self.path = out
        return out

    @classmethod
    def load(cls, path: Path) -> "TextualInversion":
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
        info = {k[len("info."):]: meta_value(meta, k) for k in meta if k.startswith("info.")}
        return cls(emb.float(), str(meta_value(meta, "variant")), kind, info, Path(path))


def check_compatible(ti: TextualInversion, variant: str, text_shape: torch.Size) -> None:
    seq_len, dim = int(text_shape[-2]), int(text_shape[-1])
    if ti.variant != variant or ti.embeddings.shape[1] != dim:
        raise SelvaError(f"This textual inversion was trained on {ti.variant} (token width "
                         f"{ti.embeddings.shape[1]}), but the model is {variant} (width {dim}). "
                         f"Train one for this model.")
    if not 1 <= ti.n_tokens < seq_len:
        raise SelvaError(f"The textual inversion holds {ti.n_tokens} tokens; at most {seq_len - 1} fit.")


def with_tokens(text_clip: torch.Tensor, tokens: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """``text_clip`` (..., 77, D) with its last ``len(tokens)`` positions blended toward ``tokens``."""
    n = tokens.shape[0]
    head, tail = text_clip[..., :-n, :], text_clip[..., -n:, :]
    tokens = tokens.to(tail.device, tail.dtype).expand_as(tail)
    new_tail = tokens if strength == 1.0 else tail + strength * (tokens - tail)
    return torch.cat([head, new_tail], dim=-2)


def apply_to_features(features: Features, ti: Optional[TextualInversion], strength: float) -> Features:
    """Features whose CLIP text sequence carries the learned tokens; unchanged at strength 0."""
    if ti is None or strength == 0:
        return features
    check_compatible(ti, features.variant, features.text_clip.shape)
    return replace(features, text_clip=with_tokens(features.text_clip.float(), ti.embeddings, float(strength)))


# ------------------------------------------------------------------------------- training
@dataclass
class TiTrainOptions:
    """Every setting of a textual-inversion run (the node's inputs, same names and defaults)."""

    n_tokens: int = 4
    init_text: str = ""  # empty: the dataset's first prompt
    steps: int = 1000
    lr: float = 5e-4
    batch_size: int = 1
    save_every: int = 250
    seed: int = 0
    path: str = "clip"
    warmup_steps: int = 0
    grad_accum: int = 1
    timestep_sampling: str = "logit_normal"
    eval_samples: bool = True
    eval_steps: int = 25

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TiTrainOptions":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise SelvaError(f"Unknown textual-inversion option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}.")
        return cls(**values)

    def validate(self) -> None:
        if self.path not in PATHS:
            raise SelvaError(f"Textual inversion path {self.path!r} is not available; choose "
                             f"{', '.join(PATHS)}.")
        if not 1 <= self.n_tokens <= 32:
            raise SelvaError(f"n_tokens must be between 1 and 32, got {self.n_tokens}.")
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
        feats = pipe.encode_clip_text([text])[0].float().cpu()  # (77, D)
    return feats[1:1 + n_tokens].clone()


class TiTask(TrainTask):
    """The shared loop's task: one trainable (n_tokens, D) tensor, the generator frozen."""

    resume_keys = ("variant", "n_tokens", "path")

    def __init__(self, pipe, gen, dataset, options: TiTrainOptions, init: torch.Tensor,
                 eval_features: Optional[Features] = None):
        self.pipe, self.gen, self.dataset, self.options = pipe, gen, dataset, options
        self.eval_features = eval_features if eval_features is not None else dataset.clips[0].features
        if self.eval_features.variant != pipe.variant.name:
            raise SelvaError(f"eval_features were extracted for {self.eval_features.variant!r}, the "
                             f"model is {pipe.variant.name!r}.")
        self.embedding = nn.Parameter(init.to(pipe.device, torch.float32).clone())
        self.init_text = ""
        self.last_export: Optional[TextualInversion] = None
        self._negative = None
        if options.eval_samples:
            with torch.no_grad():
                self._negative = pipe.encode_clip_text([""]).float().cpu()

    def trainable_parameters(self):
        return [self.embedding]

    def num_items(self) -> int:
        return len(self.dataset)

    def describe(self) -> dict[str, Any]:
        return {"variant": self.pipe.variant.name, "n_tokens": self.options.n_tokens,
                "path": self.options.path, "init_text": self.init_text,
                "timestep_sampling": self.options.timestep_sampling,
                "dataset_digest": self.dataset.digest, "clips": len(self.dataset),
                "precision": self.pipe.options.precision}

    def loss(self, batch) -> torch.Tensor:
        from ..train.dataset import group_by_length
        from ..train.loss import ClipConditions, draw_noise, flow_matching_loss

        clips = self.dataset.clips
        out: list = [None] * len(batch)
        for group in group_by_length(clips, batch.indices):
            items = [clips[batch.indices[pos]] for pos in group]
            self.gen.set_seq_lengths(*items[0].seq_key)
            make_differentiable(self.gen)  # the rotary tables were just rebuilt
            # null_probability 0: a dropped text condition would teach the tokens nothing
            noises = [draw_noise(item.latent_mean.shape, self.options.timestep_sampling,
                                 batch.generator(pos), null_probability=0.0)
                      for item, pos in zip(items, group)]
            conds = [ClipConditions(item.conditions.clip_f, item.conditions.sync_f,
                                    with_tokens(item.conditions.text_clip.to(self.embedding.device),
                                                self.embedding))
                     for item in items]
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
        feats = self.eval_features
        feats = replace(feats, text_clip=with_tokens(feats.text_clip.float(), self.embedding.detach().cpu()))
        seq = self.pipe.variant.seq_lengths(feats.duration)
        with torch.no_grad():
            latent = sample_latent_with(self.gen, feats, self._negative, steps=self.options.eval_steps,
                                        cfg_strength=4.5, seed=self.options.seed, seq=seq)
        wave = self.pipe.decode(latent)
        return wave[0], self.pipe.sample_rate

    def current(self) -> TextualInversion:
        info = {"steps": self.step, "init_text": self.init_text, "dataset_digest": self.dataset.digest,
                "clips": len(self.dataset), "options": asdict(self.options)}
        return TextualInversion(self.embedding.detach().float().cpu().clone(), self.pipe.variant.name,
                                self.options.path, info)

    def export(self, run_dir: Path, tag: str) -> Optional[Path]:
        from ..artifacts import unique_path

        ti = self.current()
        name = "embeddings_final.safetensors" if tag == "final" else f"embeddings_{tag}.safetensors"
        ti.save(unique_path(Path(run_dir) / name))
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
    with torch.inference_mode(False):
        if dataset is None:
            dataset = load_dataset(pipe, data_dir, cache_dir=cache_dir, hooks=hooks)
        text = options.init_text.strip() or dataset.clips[0].prompt
        init = initial_tokens(pipe, text, options.n_tokens)
        # The pipeline's own generator (this view's LoRA patches included), frozen: only the
        # tokens train, so no private copy of the network is needed.
        with pipe.use_generator() as gen:
            make_differentiable(gen)
            make_patches_differentiable(pipe.generator_patches)
            task = TiTask(pipe, gen, dataset, options, init, eval_features)
            task.init_text = text
            extra = {"kind": "textual_inversion", "data_dir": str(dataset.data_dir),
                     "dataset_digest": dataset.digest, "options": asdict(options)}
            result = run_training(task, options.loop_config(), Path(output_dir), resume=resume, hooks=hooks,
                                  run_dir=run_dir, should_stop=should_stop, extra_meta=extra)
    embedding = task.last_export if task.last_export is not None else task.current()
    return TiRun(result, embedding)


def run_ti_sweep(pipe, experiments_file: Path, output_dir: Path, *, hooks: Optional[Hooks] = None):
    """Several textual-inversion runs from one experiments file (the LoRA sweep's JSON shape:
    ``{"base": {...}, "experiments": [{"name": ..., <overrides>}, ...]}``), dataset encoded once."""
    from ..train.sweep import run_sweep

    return run_sweep(pipe, experiments_file, output_dir, hooks=hooks, train=train_textual_inversion,
                     options_cls=TiTrainOptions)
