#!/usr/bin/env python3
"""LoRA training speed and peak memory for a variant and batch size (a benchmark, not a test).

    python benchmarks/bench_train.py --variant large_44k --batch-size 1 --gradient-checkpointing
    python benchmarks/bench_train.py --variant small_16k --device cpu --steps 3 --duration 2

The generator of the variant is built at full size with random weights (timing and memory are
those of the real model) and trained through the shared training loop on synthetic clips
(random VAE posteriors and condition features of ``--duration`` seconds): only the generator,
the adapters, the optimizer state and the activations exist on the device, as in a real run
where the dataset was encoded before. Reports steps/s (after one warm-up step) and the peak:
the CUDA allocator's peak on a GPU, the process's peak resident memory on the CPU (weights
included). Run from the repository root.
"""
from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selva.adapters import LoraConfig, LoraSet, parse_targets  # noqa: E402
from selva.models.generator import SelvaGenerator  # noqa: E402
from selva.offload import pick_device, resolve_dtype  # noqa: E402
from selva.train.loop import LoopConfig, TrainTask, run_training  # noqa: E402
from selva.train.loss import ClipConditions, draw_noise, flow_matching_loss  # noqa: E402
from selva.train.memory import checkpointed_blocks  # noqa: E402
from selva.variants import VARIANTS, get_variant  # noqa: E402


class SyntheticLoraTask(TrainTask):
    """The LoRA trainer's loss on random clips of one duration (no encoders, no VAE)."""

    def __init__(self, gen: SelvaGenerator, config: LoraConfig, seq, clips: int, checkpointing: bool):
        self.gen, self.config, self.checkpointing = gen, config, checkpointing
        cfg = gen.cfg
        g = torch.Generator().manual_seed(0)
        self.items = [ClipConditions(clip_f=None, sync_f=torch.randn(seq.sync, cfg.sync_dim, generator=g),
                                     text_clip=torch.randn(cfg.text_seq_len, cfg.text_dim, generator=g))
                      for _ in range(clips)]
        self.mean = torch.randn(clips, seq.latent, cfg.latent_dim, generator=g)
        self.std = torch.rand(clips, seq.latent, cfg.latent_dim, generator=g) * 0.1
        self.lora = None

    def setup(self, state):
        self.lora = LoraSet.create(self.gen, self.config, state=state, rng=torch.Generator().manual_seed(0))
        # attached for the whole run: backward (and its recomputation) runs after loss() returns
        self.attached = contextlib.ExitStack()
        self.attached.enter_context(self.lora.attach(self.gen))
        self.attached.enter_context(checkpointed_blocks(self.gen, self.checkpointing))

    def close(self):
        self.attached.close()

    def trainable_parameters(self):
        return self.lora.trainable_parameters()

    def num_items(self):
        return len(self.items)

    def loss(self, batch):
        noises = [draw_noise(self.mean.shape[1:], "logit_normal", batch.generator(i)) for i in range(len(batch))]
        idx = torch.tensor(batch.indices)
        return flow_matching_loss(self.gen, self.mean[idx], self.std[idx],
                                  [self.items[i] for i in batch.indices], noises)


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="small_16k", choices=list(VARIANTS))
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps (after 1 warm-up)")
    p.add_argument("--duration", type=float, default=8.0, help="clip seconds (default: 8, as trained)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--target", default="attn.qkv")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--device", default=None)
    p.add_argument("--gradient-checkpointing", action="store_true")
    args = p.parse_args()

    spec = get_variant(args.variant)
    device = pick_device(args.device)
    dtype = resolve_dtype(args.precision, device)
    seq = spec.seq_lengths(args.duration)
    gen = SelvaGenerator(spec.generator, latent_seq_len=seq.latent, clip_seq_len=seq.clip, sync_seq_len=seq.sync)
    gen = gen.to(device, dtype).requires_grad_(False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    weights_mib = sum(t.numel() * t.element_size() for t in gen.parameters()) / 2**20
    task = SyntheticLoraTask(gen, LoraConfig(rank=args.rank, alpha=float(args.rank),
                                             targets=parse_targets(args.target)),
                             seq, clips=max(4, args.batch_size), checkpointing=args.gradient_checkpointing)
    times: list[float] = []
    last = [time.perf_counter()]

    def on_step(info) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    cfg = LoopConfig(steps=args.steps + 1, lr=1e-4, warmup_steps=0, batch_size=args.batch_size, grad_accum=1,
                     save_every=0, run_name="bench", eval_samples=False, preview_every_s=1e9)
    with tempfile.TemporaryDirectory() as out:
        run_training(task, cfg, Path(out), on_step=on_step)
    timed = times[1:]  # the first step includes allocator warm-up
    rate = len(timed) / sum(timed)
    print(f"variant {args.variant}  device {device}  precision {args.precision}  batch {args.batch_size}  "
          f"duration {args.duration:g} s (latent {seq.latent})  rank {args.rank}  target {args.target}  "
          f"gradient_checkpointing {args.gradient_checkpointing}")
    print(f"generator weights {weights_mib:.0f} MiB; {rate:.3f} steps/s "
          f"({1 / rate:.2f} s/step over {len(timed)} steps); peak "
          f"{'VRAM (allocator)' if device.type == 'cuda' else 'process RSS'} {peak_mib(device):.0f} MiB")


if __name__ == "__main__":
    main()
