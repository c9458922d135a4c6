"""LoRA fine-tuning of the generator: the one core behind the SelvaLoraTrainer node, the
``training/train_lora.py`` CLI and the sweep scheduler.

The trainer never touches the pipeline's generator: it trains its own working copy (built outside
inference mode, so ComfyUI's inference tensors are never differentiated through) with the LoRA
hooked onto it. Only that copy, the adapters, the optimizer state and activations live on the GPU
while training; the encoders and the VAE encoder are only used while the dataset is prepared.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..adapters import LoraAdapter, LoraConfig, LoraSet, parse_targets, save_adapter
from ..adapters.format import INITS
from ..errors import SelvaError
from ..features import Features
from ..hooks import Hooks, or_default
from ..models.generator import SelvaGenerator
from .dataset import TrainDataset, group_by_length, load_dataset
from .distributed import SINGLE, DistContext
from .loop import Batch, LoopConfig, StepInfo, TrainResult, TrainTask, run_training
from .loss import TIMESTEP_SAMPLING, draw_noise, flow_matching_loss
from .memory import checkpointed_blocks
from .options import check_limits, setting
from .sampling import sample_latent_with

log = logging.getLogger(__name__)

RUN_NAME = "lora"


@dataclass
class LoraTrainOptions:
    """Every setting of a LoRA run, each written once: the node's inputs, the CLI's options and
    the keys of a sweep file come from these fields (``selva/train/options.py``)."""

    steps: int = setting(2000, "Optimizer steps in total.", min=1, max=1_000_000)
    rank: int = setting(16, "LoRA rank: capacity of the adapter.", min=1, max=1024)
    alpha: float = setting(16.0, "LoRA alpha: the update is scaled by alpha / rank.", min=0.01, max=4096.0,
                           step=0.5)
    target: str = setting("attn.qkv", "Layer-name suffixes to adapt, space/comma separated (e.g. 'attn.qkv "
                          "linear1 ffn.w1'). A suffix that matches nothing lists the valid ones.")
    lr: float = setting(1e-4, "Learning rate (AdamW).", min=1e-7, max=1.0, step=1e-5, round=1e-7)
    warmup_steps: int = setting(100, "Linear learning-rate warm-up steps.", min=0, max=100_000)
    batch_size: int = setting(1, "Clips per micro-step (per process).", min=1, max=256)
    grad_accum: int = setting(4, "Micro-steps per optimizer step (effective batch = batch_size x "
                              "grad_accum).", min=1, max=256)
    save_every: int = setting(500, "Checkpoint + adapter + eval sample every N steps (0 = only at the "
                              "end).", min=0, max=1_000_000)
    timestep_sampling: str = setting("logit_normal", "Flow-time distribution: logit_normal (as the model "
                                     "was trained) or uniform.", choices=TIMESTEP_SAMPLING)
    seed: int = setting(42, "Seed of the adapter init, noise and data order (on the node, set the control "
                        "below it to 'fixed' to repeat a run).", min=0, max=0xFFFFFFFFFFFFFFFF, seed=True)
    init: str = setting("default", "default: the adapter starts at zero. pissa: starts from the weight's "
                        "top singular vectors (faster, fewer intruder dimensions).", choices=INITS)
    rslora: bool = setting(False, "rsLoRA scaling alpha / sqrt(rank): keeps high ranks learning.")
    gradient_checkpointing: bool = setting(False, "Recompute each transformer block in the backward pass: "
                                           "much less VRAM, ~30% slower.")
    eval_steps: int = setting(25, "Sampling steps of the eval samples.", min=1, max=1000)
    eval_cfg_strength: float = setting(4.5, "Guidance strength of the eval samples.", min=0.0, max=100.0)
    eval_samples: bool = setting(True, "Write eval samples (baseline, each save, the end).")
    max_grad_norm: float = setting(1.0, "Gradient-norm clipping bound (0 = no clipping).", min=0.0)
    weight_decay: float = setting(0.0, "AdamW weight decay.", min=0.0)

    def lora_config(self) -> LoraConfig:
        return LoraConfig(rank=int(self.rank), alpha=float(self.alpha), targets=parse_targets(self.target),
                          init=self.init, rslora=bool(self.rslora))

    def loop_config(self) -> LoopConfig:
        return LoopConfig(steps=int(self.steps), lr=float(self.lr), warmup_steps=int(self.warmup_steps),
                          batch_size=int(self.batch_size), grad_accum=int(self.grad_accum),
                          save_every=int(self.save_every), seed=int(self.seed),
                          max_grad_norm=float(self.max_grad_norm), weight_decay=float(self.weight_decay),
                          run_name=RUN_NAME, eval_samples=bool(self.eval_samples))

    def validate(self) -> None:
        check_limits(self)
        self.lora_config()
        self.loop_config().validate()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "LoraTrainOptions":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise SelvaError(f"Unknown LoRA training option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}.")
        return cls(**values)


def clone_generator(pipe) -> SelvaGenerator:
    """A private, trainable-ready copy of the pipeline's generator on the compute device.

    Built on the meta device and filled with clones made outside inference mode, so it holds
    ordinary tensors even when the pipeline was loaded inside ComfyUI's inference mode.
    """
    with torch.inference_mode(False):
        base = pipe.manager.get("generator")
        with torch.device("meta"):
            work = SelvaGenerator(base.cfg, latent_seq_len=base.latent_seq_len,
                                  clip_seq_len=base.clip_seq_len, sync_seq_len=base.sync_seq_len)
        state = {k: v.detach().to(pipe.device).clone() for k, v in base.state_dict().items()}
        work.load_state_dict(state, strict=True, assign=True)
        work.refresh_derived_buffers()
    return work.requires_grad_(False).eval()


class LoraTask(TrainTask):
    resume_keys = ("variant", "rank", "alpha", "targets", "init", "rslora")

    def __init__(self, pipe, dataset: TrainDataset, options: LoraTrainOptions,
                 eval_features: Optional[Features] = None):
        self.pipe = pipe
        self.dataset = dataset
        self.options = options
        self.config = options.lora_config()
        self.work = clone_generator(pipe)
        self.lora: Optional[LoraSet] = None
        self.last_adapter: Optional[LoraAdapter] = None
        self.eval_features = eval_features if eval_features is not None else dataset.clips[0].features
        if self.eval_features.variant != pipe.variant.name:
            raise SelvaError(f"eval_features were extracted for {self.eval_features.variant!r}, the "
                             f"model is {pipe.variant.name!r}.")

    # ---- TrainTask
    def setup(self, state: Optional[dict]) -> None:
        rng = torch.Generator().manual_seed(int(self.options.seed))
        self.lora = LoraSet.create(self.work, self.config, state=state, rng=rng)
        # Attached for the whole run, not per loss call: the backward pass runs after loss()
        # returned, and gradient checkpointing recomputes the blocks (LoRA included) there.
        self._attached = contextlib.ExitStack()
        self._attached.enter_context(self.lora.attach(self.work))
        self._attached.enter_context(checkpointed_blocks(self.work, self.options.gradient_checkpointing))

    def close(self) -> None:
        if getattr(self, "_attached", None) is not None:
            self._attached.close()
            self._attached = None

    def trainable_parameters(self):
        return self.lora.trainable_parameters()

    def state_dict(self):
        return {k: v.detach().cpu().clone() for k, v in self.lora.state_dict().items()}

    def num_items(self) -> int:
        return len(self.dataset)

    def describe(self) -> dict[str, Any]:
        return {"variant": self.pipe.variant.name, "rank": self.config.rank, "alpha": self.config.alpha,
                "targets": list(self.config.targets), "init": self.config.init,
                "rslora": self.config.rslora, "timestep_sampling": self.options.timestep_sampling,
                "gradient_checkpointing": self.options.gradient_checkpointing,
                "dataset_digest": self.dataset.digest, "clips": len(self.dataset),
                "precision": self.pipe.options.precision}

    def train_mode(self, training: bool) -> None:
        self.work.train(training)

    def loss(self, batch: Batch) -> torch.Tensor:
        clips = self.dataset.clips
        out = [None] * len(batch)
        for group in group_by_length(clips, batch.indices):
            items = [clips[batch.indices[pos]] for pos in group]
            self.work.set_seq_lengths(*items[0].seq_key)
            noises = [draw_noise(item.latent_mean.shape, self.options.timestep_sampling, batch.generator(pos))
                      for item, pos in zip(items, group)]
            mean = torch.stack([item.latent_mean for item in items])
            std = torch.stack([item.latent_std for item in items])
            losses = flow_matching_loss(self.work, mean, std, [item.conditions for item in items], noises)
            for pos, value in zip(group, losses):
                out[pos] = value
        return torch.stack(out)

    def eval_sample(self):
        if not self.options.eval_samples:
            return None
        feats = self.eval_features
        seq = self.pipe.variant.seq_lengths(feats.duration)
        latent = sample_latent_with(self.work, feats, None, steps=self.options.eval_steps,
                                    cfg_strength=self.options.eval_cfg_strength,
                                    seed=self.options.seed, seq=seq)  # the LoRA is attached (setup)
        wave = self.pipe.decode(latent)
        return wave[0], self.pipe.sample_rate

    def adapter(self) -> LoraAdapter:
        return self.lora.to_adapter(variant=self.pipe.variant.name, steps=self.step,
                                    dataset_digest=self.dataset.digest,
                                    extra={"timestep_sampling": self.options.timestep_sampling,
                                           "clips": str(len(self.dataset))})

    def export(self, run_dir: Path, tag: str) -> Optional[Path]:
        adapter = self.adapter()
        name = "adapter_final.safetensors" if tag == "final" else f"adapter_{tag}.safetensors"
        path = Path(run_dir) / name
        if path.exists():  # never replace what a user may already use; keep both
            from .files import numbered_file

            path = numbered_file(run_dir, path.stem, ".safetensors")
        save_adapter(adapter, path)
        adapter.path = path
        self.last_adapter = adapter
        return path


@dataclass
class LoraRun:
    result: TrainResult
    adapter: LoraAdapter
    dataset: TrainDataset

    @property
    def summary_path(self) -> Path:
        return self.result.run_dir / "meta.json"


def prepare_for_training(pipe) -> None:
    """Free the accelerator of everything but what training needs (the working generator copy).

    Pipelines that keep their stages on the GPU drop them (they reload on next use); offloading
    pipelines already keep them on the CPU.
    """
    if pipe.device.type != "cpu" and not pipe.manager.offload:
        pipe.release()


def train_lora(pipe, data_dir: Path, output_dir: Path, options: LoraTrainOptions, *,
               resume: Optional[str] = None, eval_features: Optional[Features] = None,
               dataset: Optional[TrainDataset] = None, hooks: Optional[Hooks] = None,
               ctx: DistContext = SINGLE, should_stop: Optional[Callable[[], bool]] = None,
               on_step: Optional[Callable[[StepInfo], None]] = None, run_dir: Optional[Path] = None,
               cache_dir: Optional[Path] = None) -> LoraRun:
    """Train a LoRA on the clips of ``data_dir``; returns the run and the final adapter."""
    hooks = or_default(hooks)
    options.validate()
    with torch.inference_mode(False):
        if dataset is None:
            dataset = load_dataset(pipe, data_dir, cache_dir=cache_dir, hooks=hooks)
        task = LoraTask(pipe, dataset, options, eval_features)
        prepare_for_training(pipe)
        extra = {"kind": "lora", "data_dir": str(dataset.data_dir), "dataset_digest": dataset.digest,
                 "options": asdict(options)}
        result = run_training(task, options.loop_config(), Path(output_dir), resume=resume, hooks=hooks,
                              ctx=ctx, should_stop=should_stop, on_step=on_step, run_dir=run_dir,
                              extra_meta=extra)
    adapter = task.last_adapter if task.last_adapter is not None else task.adapter()
    return LoraRun(result=result, adapter=adapter, dataset=dataset)
