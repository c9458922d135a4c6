"""The one training loop every trainer reuses (LoRA, vocoder tuning, textual inversion).

A trainer describes *what* is trained by subclassing :class:`TrainTask` (trainable parameters,
the per-item loss of a batch, what to save, how to make an eval sample, what to export); the
loop does the rest, identically for everyone:

* AdamW with linear warm-up, gradient accumulation, gradient clipping;
* a deterministic data order and one random generator per batch item derived from
  (seed, step, micro-step, slot), so resuming and data-parallel runs reproduce a single
  uninterrupted run (bit for bit on the CPU in fp32 for resume);
* step checkpoints (task state + optimizer + LR schedule + every RNG state + data position),
  written atomically into ``<run>/checkpoints/step_NNNNNN.pt`` and read with ``weights_only``;
* a fresh numbered run folder per new run (``<output_dir>/<run_name>_NNN``), never reused;
  resuming continues in the checkpoint's folder when it is that folder's newest state, else in
  a fresh one (nothing written later is replaced);
* raw and smoothed loss curves (PNG) and ``losses.csv``, ``meta.json``;
* eval samples (``samples/step_NNNNNN.wav`` + spectrogram PNG) at baseline, each save, the end;
* progress through :class:`~selva.hooks.Hooks` with the live loss curve as preview image;
  a cancel (ComfyUI's button, Ctrl-C) saves a checkpoint at the current step, then stops;
* a NaN/inf loss stops before the optimizer step: the last good checkpoint stays, the error
  says what to change;
* ``should_stop()`` (a sweep's skip) ends the run early as if finished: final export written.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..artifacts import read_pt
from ..errors import SelvaError
from ..hooks import Hooks, Interrupted, or_default
from . import plots
from ..distributed import SINGLE, DistContext
from .files import atomic_write, fresh_run_dir, run_dirs, save_torch, write_json, write_wav

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "selva-train-checkpoint"
CHECKPOINT_VERSION = 1
STAGE = "training"
LR_SCHEDULES = ("constant", "cosine")
COSINE_FLOOR_LR = 1e-6  # where a cosine schedule ends (absolute; a lower lr just stays flat)


class TrainingDiverged(SelvaError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


# ------------------------------------------------------------------------------------ config
@dataclass
class LoopConfig:
    steps: int = 2000  # optimizer steps in total (a resumed run continues up to this number)
    lr: float = 1e-4
    warmup_steps: int = 100  # linear warm-up from lr / warmup_steps to lr
    batch_size: int = 1  # items per micro-step *per process*
    grad_accum: int = 1  # micro-steps per optimizer step
    save_every: int = 500  # checkpoint + export + eval sample every N steps (0 = only at the end)
    seed: int = 42
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0  # 0 = no clipping
    run_name: str = "run"  # run folders are <output_dir>/<run_name>_NNN
    eval_samples: bool = True  # baseline / each save / end
    preview_every_s: float = 2.0  # re-render the progress preview at most this often
    lr_schedule: str = "constant"  # after warm-up: constant | cosine (down to COSINE_FLOOR_LR at the last step)

    def validate(self) -> None:
        checks = [("steps", self.steps >= 1, "at least 1"), ("lr", self.lr > 0, "positive"),
                  ("warmup_steps", self.warmup_steps >= 0, "0 or more"),
                  ("batch_size", self.batch_size >= 1, "at least 1"),
                  ("grad_accum", self.grad_accum >= 1, "at least 1"),
                  ("save_every", self.save_every >= 0, "0 (only at the end) or more"),
                  ("max_grad_norm", self.max_grad_norm >= 0, "0 (off) or more"),
                  ("lr_schedule", self.lr_schedule in LR_SCHEDULES, "one of " + ", ".join(LR_SCHEDULES))]
        for name, ok, what in checks:
            if not ok:
                raise SelvaError(f"{name} must be {what}, got {getattr(self, name)}.")


def lr_factor(cfg: LoopConfig, done: int) -> float:
    """The learning-rate multiplier of optimizer step ``done + 1`` (``done`` steps taken before).

    Linear warm-up to 1 over ``warmup_steps``; then ``constant`` stays at 1 and ``cosine`` falls
    along half a cosine to ``COSINE_FLOOR_LR / lr``, reached exactly at the last step.
    """
    k = done + 1
    warm = cfg.warmup_steps
    if cfg.lr_schedule == "constant" or k <= warm:
        return min(1.0, k / warm) if warm else 1.0
    floor = min(1.0, COSINE_FLOOR_LR / cfg.lr)
    progress = min(1.0, (k - warm) / max(1, cfg.steps - warm))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------ batches
def item_seed(seed: int, step: int, micro: int, slot: int, stream: str = "") -> int:
    """A 63-bit seed for one batch item, a pure function of where it sits in the run.
    ``stream`` names a further, independent sequence of draws for the same item."""
    key = f"{seed}:{step}:{micro}:{slot}" + (f":{stream}" if stream else "")
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class Batch:
    """This process's share of one micro-step."""

    step: int  # the optimizer step being computed, 1-based
    micro: int  # 0 .. grad_accum - 1
    indices: list[int]  # dataset items (into TrainTask.num_items())
    slots: list[int]  # each item's position in the global micro-batch
    seed: int

    def generator(self, i: int, stream: str = "") -> torch.Generator:
        """A fresh CPU generator for local item ``i``: same numbers however the batch is split.
        ``stream``: another independent generator of the same item (e.g. for augmentations)."""
        return torch.Generator().manual_seed(self.item_seed(i, stream))

    def item_seed(self, i: int, stream: str = "") -> int:
        return item_seed(self.seed, self.step, self.micro, self.slots[i], stream)

    def __len__(self) -> int:
        return len(self.indices)


class DataOrder:
    """Epoch-wise shuffled item order; the position (epoch, cursor) is all its state."""

    def __init__(self, num_items: int, seed: int, epoch: int = 0, cursor: int = 0):
        if num_items < 1:
            raise SelvaError("There is nothing to train on: the dataset is empty.")
        self.num_items, self.seed, self.epoch, self.cursor = num_items, seed, epoch, cursor
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(item_seed(self.seed, -1, epoch, 0))
        return torch.randperm(self.num_items, generator=g).tolist()

    def take(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if self.cursor >= self.num_items:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            out.append(self._perm[self.cursor])
            self.cursor += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "num_items": self.num_items}


# ------------------------------------------------------------------------------------ task
class TrainTask:
    """What a trainer supplies. Override the methods marked *required*."""

    #: settings that must be equal to resume a checkpoint (keys of :meth:`describe`)
    resume_keys: tuple[str, ...] = ()
    #: optimizer steps done so far; the loop keeps it current before every callback
    step: int = 0

    def setup(self, state: Optional[dict[str, torch.Tensor]]) -> None:
        """Called once before the optimizer is built, with the checkpoint's task state when
        resuming (else None). Trainers that must build their parameters from the saved state
        (e.g. PiSSA's residual) override this; the default loads ``state`` into the parameters."""
        if state is not None:
            self.load_state_dict(state)

    def trainable_parameters(self) -> list[nn.Parameter]:  # required
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups at base learning rate ``lr`` (default: one group).
        A trainer that learns some tensors faster (LoRA+) returns several, each with its lr."""
        return [{"params": self.trainable_parameters()}]

    def after_step(self) -> None:
        """Called after every optimizer step (no gradients): e.g. project the trained tensors
        back into an allowed set."""

    def finish(self) -> None:
        """Called once when the run reached its last step, before the final export (a post-
        training step such as spectral surgery). Gradients are enabled."""

    def reference_audio(self) -> Optional[tuple[torch.Tensor, int]]:
        """The (C, T) recording the eval samples imitate, and its rate, or None: when given,
        each eval sample is measured against it (``samples/metrics.json``)."""
        return None

    def num_items(self) -> int:  # required
        raise NotImplementedError

    def loss(self, batch: Batch) -> torch.Tensor:  # required
        """Per-item losses, shape ``(len(batch),)``, differentiable w.r.t. the parameters."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds of the trained state (default: the trainable parameters)."""
        return {f"param.{i}": p.detach().clone() for i, p in enumerate(self.trainable_parameters())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = self.trainable_parameters()
        if len(state) != len(params):
            raise SelvaError(f"The checkpoint holds {len(state)} trained tensors, this run trains "
                             f"{len(params)}: it belongs to another configuration.")
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(state[f"param.{i}"])

    def describe(self) -> dict[str, Any]:
        """Settings recorded in meta.json and the checkpoints (JSON-serialisable)."""
        return {}

    def train_mode(self, training: bool) -> None:
        """Switch the trained networks between training and eval behaviour."""

    def close(self) -> None:
        """Called once when the run ends (finished, cancelled or failed) after :meth:`setup`:
        remove hooks installed for the run. Note the backward pass runs after :meth:`loss`
        returned, so hooks the forward needs again (gradient checkpointing recomputes it) must
        stay installed from :meth:`setup` to here, not only inside :meth:`loss`."""

    def eval_sample(self) -> Optional[tuple[torch.Tensor, int]]:
        """A (C, T) waveform and its rate made with the current weights, or None."""
        return None

    def export(self, run_dir: Path, tag: str) -> Optional[Path]:
        """Write the user-facing result (e.g. ``adapter_final.safetensors``) atomically; ``tag`` is
        ``step_NNNNNN`` at saves and ``final`` at the end."""
        return None


# ------------------------------------------------------------------------------------ results
@dataclass
class StepInfo:
    step: int
    steps: int
    loss: float
    lr: float
    steps_per_s: float


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # "finished" | "stopped" (should_stop) -- cancels and NaN raise instead
    steps_done: int
    losses: list[float]
    exported: Optional[Path]
    checkpoint: Optional[Path]
    seconds: float
    loss_curve: Any = None  # PIL image of the raw + smoothed curve

    @property
    def final_loss(self) -> Optional[float]:
        return self.losses[-1] if self.losses else None

    @property
    def best_loss(self) -> Optional[float]:
        return min(self.losses) if self.losses else None


# ------------------------------------------------------------------------------------ rng
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                       "cached": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])  # weights_only loading keeps its tuples
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------ checkpoints
def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A step checkpoint, read with ``weights_only=True``; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise SelvaError(f"Resume checkpoint {path} does not exist.")
    if _is_safetensors(path):
        raise SelvaError(_exported_file_message(path))
    ckpt = read_pt(path, "training checkpoint", fix="it may be cut off (a crash while saving): resume "
                   "from the checkpoint before it")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SelvaError(f"{path} is not a SelVA training checkpoint (resume takes a "
                         f"checkpoints/step_NNNNNN.pt file of a run folder, or 'latest').")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise SelvaError(f"{path} is a checkpoint of format version {ckpt.get('version')}; this "
                         f"version reads {CHECKPOINT_VERSION}.")
    return ckpt


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: 8 bytes of header length, then the JSON header's "{"."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _exported_file_message(path: Path) -> str:
    # adapter_step_000500.safetensors sits beside checkpoints/ in the run folder and is an easy
    # pick; it holds the exported weights only, not the optimizer and data order a resume needs.
    match = re.search(r"step_(\d+)", path.stem)
    step_file = checkpoint_path(path.parent, int(match.group(1))) if match else None
    if step_file is not None and step_file.is_file():
        use = f"its training checkpoint {step_file}, or the run folder {path.parent} (its newest checkpoint)"
    elif list_checkpoints(path.parent):
        use = f"the run folder {path.parent} (its newest checkpoint) or one of its checkpoints/step_NNNNNN.pt"
    else:
        use = "a run folder or its checkpoints/step_NNNNNN.pt file, or 'latest'"
    what = "an exported adapter" if path.stem.startswith("adapter") else "an exported weights file"
    loader = " To use the adapter itself, load it with the SelVA LoRA Loader." if what.endswith("adapter") else ""
    return (f"{path} is {what} (safetensors: the trained weights only), not a training checkpoint: "
            f"resuming needs the optimizer state and data order saved in checkpoints/. Resume from "
            f"{use}.{loader}")


def resolve_resume(resume: Optional[str], output_dir: Path, run_name: str) -> Optional[Path]:
    """``None``/"" -> no resume; "latest" -> newest checkpoint of the newest run folder that has
    one (a run that failed before its first save has none); a run folder -> its newest
    checkpoint; else the checkpoint file itself."""
    text = (resume or "").strip()
    if not text:
        return None
    if text == "latest":
        found = [ckpt for run in run_dirs(output_dir, run_name) for ckpt in list_checkpoints(run)]
        if not found:
            raise SelvaError(f"resume=latest: no checkpoint found under {output_dir} "
                             f"({run_name}_NNN/checkpoints/step_*.pt). Start without resume.")
        return found[-1]
    path = Path(text).expanduser()
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise SelvaError(f"resume: the folder {path} holds no checkpoints/step_*.pt.")
        return found[-1]
    return path


def check_compatible(saved: dict[str, Any], current: dict[str, Any], keys: Sequence[str],
                     source: Path) -> None:
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, this run {current.get(k)!r}"
             for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        raise SelvaError(f"Cannot resume from {source}: its settings differ from this run's ("
                         + "; ".join(diffs) + "). Use the checkpoint's settings or start a new run.")


# ------------------------------------------------------------------------------------ the loop
class _Run:
    """State of one call of :func:`run_training` (kept in one place for the save paths)."""

    def __init__(self, task: TrainTask, cfg: LoopConfig, run_dir: Path, ctx: DistContext,
                 hooks: Hooks, extra_meta: dict):
        self.task, self.cfg, self.run_dir, self.ctx, self.hooks = task, cfg, run_dir, ctx, hooks
        self.extra_meta = extra_meta
        self.params = task.trainable_parameters()
        if not self.params:
            raise SelvaError("Nothing to train: the trainer has no trainable parameters.")
        for p in self.params:
            if p.is_inference():
                raise SelvaError("A trainable tensor was created inside torch.inference_mode(); "
                                 "the trainer must build or clone it outside (a bug in the trainer).")
        self.optimizer = torch.optim.AdamW(task.param_groups(cfg.lr), lr=cfg.lr, betas=cfg.betas,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(cfg, s))
        self.order = DataOrder(task.num_items(), cfg.seed)
        self.step = task.step = 0
        self.losses: list[float] = []
        self.last_checkpoint: Optional[Path] = None
        self.started = time.monotonic()
        self.seconds_before = 0.0
        self._last_preview = -math.inf
        self.eval_metrics: dict[str, dict[str, float]] = {}
        self._reference: Any = False  # False = not read yet; None = the task has none

    # ---- persistence
    def checkpoint(self) -> Optional[Path]:
        if self.ctx.is_main:
            state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": self.step,
                     "task": self.task.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                     "data": self.order.state(), "losses": list(self.losses),
                     "config": _jsonable(asdict(self.cfg)), "describe": _jsonable(self.task.describe()),
                     "seconds": self.elapsed()}
            self.last_checkpoint = save_torch(checkpoint_path(self.run_dir, self.step), state)
        self.ctx.barrier()
        return self.last_checkpoint

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Everything but the task's own state (given to :meth:`TrainTask.setup` before)."""
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        data = ckpt["data"]
        if data["num_items"] != self.order.num_items:
            raise SelvaError(f"The checkpoint was trained on {data['num_items']} clips, the dataset "
                             f"now has {self.order.num_items}: resume with the same dataset.")
        self.order = DataOrder(self.order.num_items, self.cfg.seed, data["epoch"], data["cursor"])
        self.step = self.task.step = int(ckpt["step"])
        self.losses = [float(v) for v in ckpt["losses"]]
        self.seconds_before = float(ckpt.get("seconds", 0.0))

    def elapsed(self) -> float:
        return self.seconds_before + time.monotonic() - self.started

    def write_curves(self) -> Any:
        image = plots.loss_curve_image(self.losses, title=f"{self.cfg.run_name}: loss")
        if self.ctx.is_main:
            plots.save_png(self.run_dir / "loss_curve.png", image)
            plots.save_png(self.run_dir / "loss_raw.png",
                           plots.loss_curve_image(self.losses, smoothed=False, title="loss (raw)"))
            plots.save_png(self.run_dir / "loss_smoothed.png",
                           plots.loss_curve_image(self.losses, raw=False, title="loss (smoothed)"))
            smoothed = plots.smooth(self.losses)

            def write_csv(p: Path) -> None:
                with open(p, "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["step", "loss", "smoothed"])
                    for i, (v, s) in enumerate(zip(self.losses, smoothed), 1):
                        w.writerow([i, repr(v), repr(s)])

            atomic_write(self.run_dir / "losses.csv", write_csv)
        return image

    def write_meta(self, status: str, exported: Optional[Path] = None, error: str = "") -> None:
        if not self.ctx.is_main:
            return
        meta = {"status": status, "steps_done": self.step, "steps": self.cfg.steps,
                "final_loss": self.losses[-1] if self.losses else None,
                "best_loss": min(self.losses) if self.losses else None,
                "seconds": round(self.elapsed(), 3), "world_size": self.ctx.world_size,
                "config": _jsonable(asdict(self.cfg)), "settings": _jsonable(self.task.describe()),
                "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                "exported": str(exported) if exported else None, "error": error or None,
                **({"eval_metrics": self.eval_metrics} if self.eval_metrics else {}), **self.extra_meta}
        write_json(self.run_dir / "meta.json", meta)

    def eval_sample(self) -> None:
        if not (self.cfg.eval_samples and self.ctx.is_main):
            return
        self.task.train_mode(False)
        try:
            with torch.no_grad():
                made = self.task.eval_sample()
        finally:
            self.task.train_mode(True)
        if made is None:
            return
        wave, rate = made
        stem = self.run_dir / "samples" / f"step_{self.step:06d}"
        write_wav(stem.with_suffix(".wav"), wave, rate)
        plots.save_png(stem.with_suffix(".png"),
                       plots.spectrogram_image(wave, rate, title=f"eval sample, step {self.step}"))
        self.measure(wave, rate)

    def measure(self, wave: torch.Tensor, rate: int) -> None:
        """Eval sample vs the task's reference recording, into samples/metrics.json and meta.json."""
        from .eval_metrics import reference_metrics

        if self._reference is False:
            self._reference = self.task.reference_audio()
        if self._reference is None:
            return
        ref, ref_rate = self._reference
        self.eval_metrics[str(self.step)] = reference_metrics(wave, rate, ref, ref_rate)
        write_json(self.run_dir / "samples" / "metrics.json", self.eval_metrics)

    def save(self) -> None:
        """Checkpoint, export, curves, meta -- everything a save point writes."""
        self.checkpoint()
        exported = self.task.export(self.run_dir, f"step_{self.step:06d}") if self.ctx.is_main else None
        self.write_curves()
        self.write_meta("running", exported)

    # ---- one optimizer step
    def train_step(self) -> float:
        cfg, ctx = self.cfg, self.ctx
        step = self.step + 1
        global_items = cfg.batch_size * ctx.world_size * cfg.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64)
        for micro in range(cfg.grad_accum):
            order = self.order.take(cfg.batch_size * ctx.world_size)
            lo = ctx.rank * cfg.batch_size
            batch = Batch(step=step, micro=micro, indices=order[lo:lo + cfg.batch_size],
                          slots=list(range(lo, lo + cfg.batch_size)), seed=cfg.seed)
            item_losses = self.task.loss(batch)
            if item_losses.shape != (len(batch),):
                raise SelvaError(f"The trainer returned losses of shape {tuple(item_losses.shape)}; "
                                 f"expected ({len(batch)},) (a bug in the trainer).")
            (item_losses.float().sum() / global_items).backward()
            total += item_losses.detach().double().sum().cpu()
        total = ctx.all_reduce_sum(total.to(ctx.collective_device)).cpu()
        loss = float(total) / global_items
        if not math.isfinite(loss):
            return loss
        ctx.sum_gradients(self.params)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            self.task.after_step()
        self.scheduler.step()
        self.step = self.task.step = step
        self.losses.append(loss)
        return loss

    def progress(self, info: StepInfo) -> None:
        now = time.monotonic()
        image = None
        if self.hooks.preview is not None and (now - self._last_preview >= self.cfg.preview_every_s
                                               or info.step == info.steps):
            self._last_preview = now
            image = plots.loss_curve_image(self.losses, title=f"loss {info.loss:.4f}")
        self.hooks.step(STAGE, info.step, info.steps, image=image)


def _between_steps(run: _Run, call: Callable[[], None]) -> None:
    """Run a progress/cancel call; a cancel it raises (ours, ComfyUI's own, Ctrl-C) first saves
    a checkpoint of the current, consistent state, then propagates. With several processes they
    agree first, so all of them stop at the same step (and meet in the checkpoint's barrier)."""
    cancel: Optional[BaseException] = None
    try:
        call()
    except BaseException as e:
        cancel = e
    if not run.ctx.any_flag(cancel is not None):
        return
    saved = run.checkpoint()
    run.write_curves()
    run.write_meta("interrupted")
    log.info("Training cancelled at step %d; checkpoint %s", run.step, saved)
    if cancel is None or isinstance(cancel, Interrupted):
        raise Interrupted(f"Training cancelled at step {run.step}; resume from {saved}.") from None
    raise cancel


def _jsonable(obj: Any) -> Any:
    """``obj`` as its JSON reads back (tuples as lists, paths as text): what a checkpoint records
    compares equal to the same settings read from it later."""
    return json.loads(json.dumps(obj, default=str))


def _divergence_message(step: int, loss: float, last: Optional[Path], cfg: LoopConfig) -> str:
    kept = f"The last good checkpoint is {last}." if last else "No checkpoint had been written yet."
    return (f"The training loss became {loss} at step {step}, so training stopped. {kept} Try a lower "
            f"learning rate (now {cfg.lr:g}), more warm-up steps (now {cfg.warmup_steps}), or "
            f"precision bf16/fp32 instead of fp16; then resume from the last good checkpoint or "
            f"start again.")


def run_training(task: TrainTask, cfg: LoopConfig, output_dir: Path, *,
                 resume: Optional[str] = None, hooks: Optional[Hooks] = None,
                 ctx: DistContext = SINGLE, should_stop: Optional[Callable[[], bool]] = None,
                 on_step: Optional[Callable[[StepInfo], None]] = None,
                 run_dir: Optional[Path] = None, extra_meta: Optional[dict] = None) -> TrainResult:
    """Train ``task`` for ``cfg.steps`` optimizer steps; see the module docstring.

    ``run_dir`` forces the run folder (a sweep's per-experiment folder); otherwise a fresh
    ``<output_dir>/<run_name>_NNN`` is made, or the resumed checkpoint's folder is continued.
    Runs outside inference mode with gradients on, whatever the caller's mode.
    """
    cfg.validate()
    hooks = or_default(hooks)
    with torch.inference_mode(False), torch.enable_grad():
        output_dir = Path(output_dir)
        resume_from = resolve_resume(resume, output_dir, cfg.run_name)
        ckpt = load_checkpoint(resume_from) if resume_from is not None else None
        if ckpt is not None:
            check_compatible(ckpt.get("describe", {}), _jsonable(task.describe()), task.resume_keys, resume_from)
        run_dir = _pick_run_dir(cfg, output_dir, resume_from, run_dir, ctx)
        task.setup(ckpt["task"] if ckpt is not None else None)
        try:
            run = _Run(task, cfg, run_dir, ctx, hooks, extra_meta or {})
            return _train_set_up(run, ckpt, resume_from, should_stop, on_step)
        finally:
            task.close()


def _pick_run_dir(cfg: LoopConfig, output_dir: Path, resume_from: Optional[Path],
                  run_dir: Optional[Path], ctx: DistContext) -> Path:
    chosen = None  # only the main process picks; the others receive its choice
    if ctx.is_main:
        if run_dir is not None:
            chosen = Path(run_dir)
            chosen.mkdir(parents=True, exist_ok=True)
        elif resume_from is not None and _can_continue_in(resume_from):
            chosen = resume_from.parent.parent
        else:
            chosen = fresh_run_dir(output_dir, cfg.run_name)
    return Path(ctx.broadcast_object(str(chosen) if chosen else None))


def _can_continue_in(ckpt: Path) -> bool:
    """Continue in the checkpoint's own run folder only if nothing was written after it."""
    if ckpt.parent.name != "checkpoints":
        return False
    run = ckpt.parent.parent
    newest = list_checkpoints(run)
    if not newest or newest[-1].resolve() != ckpt.resolve():
        return False
    try:
        return json.loads((run / "meta.json").read_text()).get("status") != "finished"
    except (OSError, ValueError):
        return True


def _train_set_up(run: _Run, ckpt: Optional[dict], resume_from: Optional[Path], should_stop,
                  on_step) -> TrainResult:
    task, cfg, ctx, run_dir = run.task, run.cfg, run.ctx, run.run_dir
    if ckpt is not None:
        run.restore(ckpt)
        log.info("Resuming %s from step %d (%s)", run_dir, run.step, resume_from)
        if run.step >= cfg.steps:
            log.info("The checkpoint is already at step %d of %d: nothing to train.", run.step, cfg.steps)
    else:
        log.info("Training into %s", run_dir)
    task.train_mode(True)
    run.write_meta("running")
    if ckpt is None:
        run.eval_sample()  # the baseline: what the model does before training
    status = "finished"
    t_rate, n_rate = time.monotonic(), 0
    while run.step < cfg.steps:
        if ctx.any_flag(should_stop is not None and should_stop()):
            status = "stopped"
            break
        _between_steps(run, run.hooks.check)
        lr = run.optimizer.param_groups[0]["lr"]  # this step's (the scheduler moves on after it)
        loss = run.train_step()
        if not math.isfinite(loss):
            message = _divergence_message(run.step + 1, loss, run.last_checkpoint or resume_from, cfg)
            run.write_curves()
            run.write_meta("diverged", error=message)
            raise TrainingDiverged(message)
        n_rate += 1
        rate = n_rate / max(time.monotonic() - t_rate, 1e-9)
        info = StepInfo(run.step, cfg.steps, loss, lr, rate)
        if on_step is not None:
            on_step(info)
        if cfg.save_every and run.step % cfg.save_every == 0 and run.step < cfg.steps:
            run.save()
            run.eval_sample()
        _between_steps(run, lambda: run.progress(info))
    run.checkpoint()  # the trained state, before any post-training step
    if status == "finished" and run.losses and (ckpt is None or int(ckpt["step"]) < cfg.steps):
        task.finish()  # e.g. spectral surgery (not when a finished run is only resumed again)
    exported = task.export(run_dir, "final") if ctx.is_main else None
    image = run.write_curves()
    run.eval_sample()
    run.write_meta(status, exported)
    return TrainResult(run_dir=run_dir, status=status, steps_done=run.step, losses=list(run.losses),
                       exported=exported, checkpoint=run.last_checkpoint, seconds=run.elapsed(),
                       loss_curve=image)
