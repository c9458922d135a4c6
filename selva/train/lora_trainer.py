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
from dataclasses import asdict, dataclass
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
from ..distributed import SINGLE, DistContext
from .loop import LR_SCHEDULES, Batch, LoopConfig, StepInfo, TrainResult, TrainTask, run_training
from .loss import TIMESTEP_SAMPLING, draw_noise, flow_matching_loss, timestep_mode_at
from .memory import checkpointed_blocks
from .options import check_limits, from_dict, setting
from .sampling import sample_latent_with

log = logging.getLogger(__name__)

RUN_NAME = "lora"


@dataclass
class LoraTrainOptions:
    """Every setting of a LoRA run, each written once: the node's inputs, the CLI's options and
    the keys of a sweep file come from these fields (``selva/train/options.py``)."""

    steps: int = setting(2000, "Optimizer steps in total. Aim for 50-100 passes over the dataset: steps x batch_size x "
                         "grad_accum / clips.", min=1, max=1_000_000)
    rank: int = setting(16, "LoRA rank: capacity of the adapter. 4-8 for one sound, 16-32 for a varied set; "
                        "start at 16.", min=1, max=1024)
    alpha: float = setting(16.0, "LoRA alpha: the update is scaled by alpha / rank.", min=0.01, max=4096.0,
                           step=0.5)
    target: str = setting("attn.qkv", "Layer-name suffixes to adapt, space/comma separated (e.g. 'attn.qkv "
                          "linear1 ffn.w1'). A suffix that matches nothing lists the valid ones.")
    lr: float = setting(1e-4, "Learning rate (AdamW). 1e-4 is safe at rank 16; halve it on loss spikes or noisy "
                          "samples, raise it (up to ~5e-4) when nothing changes.", min=1e-7, max=1.0, step=1e-5, round=1e-7)
    warmup_steps: int = setting(100, "Linear learning-rate warm-up steps.", min=0, max=100_000)
    batch_size: int = setting(1, "Clips per micro-step (per process).", min=1, max=256)
    grad_accum: int = setting(4, "Micro-steps per optimizer step (effective batch = batch_size x "
                              "grad_accum).", min=1, max=256)
    save_every: int = setting(500, "Checkpoint + adapter + eval sample every N steps (0 = only at the "
                              "end).", min=0, max=1_000_000)
    timestep_sampling: str = setting("logit_normal", "Flow-time distribution: logit_normal (as the model "
                                     "was trained), uniform, or curriculum (logit_normal for the first "
                                     "curriculum_switch of the steps, then uniform).", choices=TIMESTEP_SAMPLING)
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
    # --- issue 23 (node inputs in this order, after the ones above)
    lora_dropout: float = setting(0.0, "Dropout on the adapter's input while training (the frozen base "
                                  "path never drops). 0 = off; 0.05-0.1 regularises small datasets. Not "
                                  "used with init pissa (its adapter holds the weight's main part).",
                                  min=0.0, max=0.5, step=0.01)
    lora_plus_ratio: float = setting(1.0, "LoRA+: the up (B) matrices learn at this many times lr, the "
                                     "down (A) matrices at lr. 1 = plain LoRA; ~16 is LoRA+'s suggestion.",
                                     min=1.0, max=64.0, step=0.5)
    lr_schedule: str = setting("constant", "Learning rate after the warm-up: constant, or cosine (falls "
                               "along half a cosine to ~0 at the last step; calms a run whose lr is a "
                               "little high).", choices=LR_SCHEDULES)
    logit_normal_sigma: float = setting(1.0, "Spread of logit_normal flow times: sigmoid(sigma * N(0,1)). 1 "
                                        "= as the model was trained; larger moves toward uniform.",
                                        min=0.1, max=3.0, step=0.1)
    curriculum_switch: float = setting(0.6, "timestep_sampling curriculum: the fraction of the steps drawn "
                                       "logit_normal before switching to uniform.", min=0.0, max=1.0,
                                       step=0.05)
    latent_mixup_alpha: float = setting(0.0, "Mixup of the clean latents within a micro-batch: "
                                        "lambda ~ Beta(a, a) blends each clip with another (needs "
                                        "batch_size > 1; 0 = off; ~0.4 against memorising tiny datasets).",
                                        min=0.0, max=10.0, step=0.05)
    latent_noise_sigma: float = setting(0.0, "Gaussian noise added to the clean latents, times each "
                                        "latent's own standard deviation (0 = off; 0.01-0.03 mild "
                                        "regularisation).", min=0.0, max=1.0, step=0.005)
    spectral_surgery: bool = setting(False, "After the last step, re-weight each adapter's singular "
                                     "components by the training loss's gradient (shrinks those that "
                                     "hurt). Changes the final adapter; off by default.")

    def lora_config(self) -> LoraConfig:
        return LoraConfig(rank=int(self.rank), alpha=float(self.alpha), targets=parse_targets(self.target),
                          init=self.init, rslora=bool(self.rslora))

    def loop_config(self) -> LoopConfig:
        return LoopConfig(steps=int(self.steps), lr=float(self.lr), warmup_steps=int(self.warmup_steps),
                          batch_size=int(self.batch_size), grad_accum=int(self.grad_accum),
                          save_every=int(self.save_every), seed=int(self.seed),
                          max_grad_norm=float(self.max_grad_norm), weight_decay=float(self.weight_decay),
                          run_name=RUN_NAME, eval_samples=bool(self.eval_samples),
                          lr_schedule=str(self.lr_schedule))

    def validate(self) -> None:
        check_limits(self)
        self.lora_config()
        self.loop_config().validate()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "LoraTrainOptions":
        return from_dict(cls, values, "LoRA training")


def mixup(x1: torch.Tensor, alpha: float, seed: int) -> torch.Tensor:
    """Each of the B latents blended with another of the batch: ``lam * x + (1 - lam) * x[perm]``,
    ``lam ~ Beta(alpha, alpha)`` (one per batch) and ``perm`` a random permutation, both from ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lam = float(rng.beta(alpha, alpha))
    perm = torch.as_tensor(rng.permutation(x1.shape[0]), device=x1.device)
    return lam * x1 + (1.0 - lam) * x1[perm]


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


SURGERY_SAMPLES = 128  # calibration batches of spectral surgery (at most 4 per clip)


class LoraTask(TrainTask):
    # lora_plus_ratio: its parameter groups are in the optimizer state (recorded only when not 1)
    resume_keys = ("variant", "rank", "alpha", "targets", "init", "rslora", "lora_plus_ratio")

    def __init__(self, pipe, dataset: TrainDataset, options: LoraTrainOptions,
                 eval_features: Optional[Features] = None):
        self.pipe = pipe
        self.dataset = dataset
        self.options = options
        self.config = options.lora_config()
        self.work = clone_generator(pipe)
        self.lora: Optional[LoraSet] = None
        self.last_adapter: Optional[LoraAdapter] = None
        self._eval_given = eval_features is not None
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
        if self.options.lora_dropout > 0:
            if self.config.init == "pissa":
                log.warning("lora_dropout %.3g is not used with init pissa: its adapter holds the main "
                            "part of each weight, which must not drop.", self.options.lora_dropout)
            else:
                self.lora.set_dropout(self.options.lora_dropout)

    def param_groups(self, lr: float) -> list[dict]:
        ratio = float(self.options.lora_plus_ratio)
        if ratio == 1.0:
            return super().param_groups(lr)
        # LoRA+: B (up) learns ratio x faster than A (down)
        downs = [layer.down for _, layer in self.lora.items() if layer.down.requires_grad]
        ups = [layer.up for _, layer in self.lora.items() if layer.up.requires_grad]
        return [{"params": downs, "lr": lr}, {"params": ups, "lr": lr * ratio}]

    def close(self) -> None:
        self._attached.close()  # the loop calls close only after setup

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
                "precision": self.pipe.options.precision,
                **({"lora_plus_ratio": float(self.options.lora_plus_ratio)}
                   if self.options.lora_plus_ratio != 1.0 else {})}

    def train_mode(self, training: bool) -> None:
        self.work.train(training)
        if self.lora is not None:
            self.lora.train(training)  # the adapters' dropout

    def loss(self, batch: Batch) -> torch.Tensor:
        o = self.options
        mode = timestep_mode_at(o.timestep_sampling, batch.step, int(o.steps), float(o.curriculum_switch))
        clips = self.dataset.clips
        out = [None] * len(batch)
        for group in group_by_length(clips, batch.indices):
            items = [clips[batch.indices[pos]] for pos in group]
            self.work.set_seq_lengths(*items[0].seq_key)
            noises = [draw_noise(item.latent_mean.shape, mode, batch.generator(pos),
                                 sigma=float(o.logit_normal_sigma))
                      for item, pos in zip(items, group)]
            mean = torch.stack([item.latent_mean for item in items])
            std = torch.stack([item.latent_std for item in items])
            losses = flow_matching_loss(self.work, mean, std, [item.conditions for item in items], noises,
                                        target_transform=self._augmentation(batch, group))
            for pos, value in zip(group, losses):
                out[pos] = value
        return torch.stack(out)

    def _augmentation(self, batch: Batch, group: list[int]) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """Latent mixup and latent noise for one group of same-length clips, or None (both off).
        Their random numbers come from the items' own "mixup"/"latent_noise" streams, so the
        draws of everything else stay as they were."""
        o = self.options
        mix = float(o.latent_mixup_alpha) > 0 and len(group) > 1
        noise = float(o.latent_noise_sigma) > 0
        if not (mix or noise):
            return None

        def augment(x1: torch.Tensor) -> torch.Tensor:
            if mix:
                x1 = mixup(x1, float(o.latent_mixup_alpha), batch.item_seed(group[0], "mixup"))
            if noise:
                draws = torch.stack([torch.randn(x1.shape[1:], generator=batch.generator(pos, "latent_noise"))
                                     for pos in group]).to(x1.device, x1.dtype)
                spread = x1.detach().flatten(1).std(dim=1)[:, None, None]
                x1 = x1 + float(o.latent_noise_sigma) * spread * draws
            return x1
        return augment

    def finish(self) -> None:
        if not self.options.spectral_surgery:
            return
        from .spectral_surgery import spectral_surgery

        n = len(self.dataset)
        samples = min(SURGERY_SAMPLES, 4 * n)
        seed = int(self.options.seed)

        def calibrate(i: int) -> torch.Tensor:
            # one clip per batch, drawn like training draws (after the last step's numbers)
            batch = Batch(step=int(self.options.steps) + 1 + i, micro=0, indices=[i % n], slots=[0], seed=seed)
            return self.loss(batch).sum()

        layers = [(name, layer.up, layer.down, layer.scale) for name, layer in self.lora.items()]
        self.train_mode(False)  # no dropout while measuring
        try:
            spectral_surgery(layers, calibrate, samples)
        finally:
            self.train_mode(True)

    def reference_audio(self):
        """The eval clip's own recording (the first dataset clip, when no eval_features were given)."""
        if self._eval_given:
            return None
        from .audio_files import read_audio

        try:
            return read_audio(self.dataset.clips[0].audio_path)
        except SelvaError as e:
            log.warning("No reference metrics: %s", e)
            return None

    def eval_sample(self):
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
            from ..artifacts import next_numbered_path

            path = next_numbered_path(run_dir, path.stem, ".safetensors")
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
        # free the accelerator of all but the working generator copy: pipelines that keep their stages
        # on the GPU drop them (they reload on next use); offloading ones already keep them on the CPU
        if pipe.device.type != "cpu" and not pipe.manager.offload:
            pipe.release()
        extra = {"kind": "lora", "data_dir": str(dataset.data_dir), "dataset_digest": dataset.digest,
                 "options": asdict(options)}
        result = run_training(task, options.loop_config(), Path(output_dir), resume=resume, hooks=hooks,
                              ctx=ctx, should_stop=should_stop, on_step=on_step, run_dir=run_dir,
                              extra_meta=extra)
    adapter = task.last_adapter if task.last_adapter is not None else task.adapter()
    return LoraRun(result=result, adapter=adapter, dataset=dataset)
