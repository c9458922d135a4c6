#!/usr/bin/env python3
"""DITTO: seconds per optimisation step and peak memory, for a few n_ode_steps / n_grad_steps.

    python benchmarks/bench_ditto.py --variant small_16k --duration 8 --precision bf16
    python benchmarks/bench_ditto.py --models-dir /path/to/models/selva     # real weights

Without ``--models-dir`` the full-size architectures get random weights (bench_stages.py's
``random_pipeline``): timings and memory are those of the real model. Conditions and the
reference statistics are random too; the encoders are not run. Peak memory is the CUDA
allocator's peak over the optimisation (weights included), or the process's peak RSS on the CPU.
Gradient checkpointing keeps memory flat in n_grad_steps: compare the rows.

Run from the repository root.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_stages import random_pipeline, rss_mib  # noqa: E402
from selva.features import Features  # noqa: E402
from selva.hooks import Hooks  # noqa: E402
from selva.pipeline import LoadOptions, SelvaPipeline  # noqa: E402
from selva.style.ditto import DittoConfig, optimise_noise  # noqa: E402
from selva.style.reference import MelStats  # noqa: E402
from selva.variants import VARIANTS, get_variant  # noqa: E402


def random_features(variant: str, duration: float) -> Features:
    spec = get_variant(variant)
    seq = spec.seq_lengths(duration)
    g = spec.generator
    return Features(variant=variant, prompt="bench", duration=seq.duration, fps=25.0,
                    text_t5=torch.randn(1, 8, 768), text_t5_mask=torch.ones(1, 8, dtype=torch.bool),
                    text_clip=torch.randn(1, g.text_seq_len, g.text_dim),
                    sync_features=torch.randn(1, seq.sync, g.sync_dim),
                    sync_frames_u8=torch.zeros(1, 224, 224, 3, dtype=torch.uint8))


def random_target(n_mels: int) -> MelStats:
    mel = torch.randn(n_mels, 400) - 4.0
    centred = mel - mel.mean(dim=1, keepdim=True)
    return MelStats(mel.mean(dim=1), centred @ centred.T / mel.shape[1], 400, 1)


def run(pipe: SelvaPipeline, feats: Features, target: MelStats, config: DittoConfig) -> tuple[float, float]:
    stamps: list[float] = []
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    hooks = Hooks(progress=lambda stage, done, total: stamps.append(time.perf_counter()))
    with torch.inference_mode():  # as inside ComfyUI
        optimise_noise(pipe, feats, target, config, hooks=hooks)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = rss_mib()
    steps = [b - a for a, b in zip(stamps, stamps[1:])]  # the first step includes warm-up
    return sum(steps) / max(len(steps), 1), peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="small_16k", choices=list(VARIANTS))
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--models-dir", type=Path, default=None, help="real weights (else random)")
    ap.add_argument("--opt-steps", type=int, default=4, help="optimisation steps timed per row")
    ap.add_argument("--configs", default="10:5,10:1,10:10,25:5",
                    help="comma list of n_ode_steps:n_grad_steps")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    options = LoadOptions(variant=a.variant, precision=a.precision, offload="keep_in_vram",
                          device=a.device, models_dir=a.models_dir, allow_download=False)
    pipe = SelvaPipeline.load(options) if a.models_dir else random_pipeline(options)
    pipe.preload(("generator", "vae", "clip"))
    feats = random_features(a.variant, a.duration)
    target = random_target(pipe.variant.mel.num_mels)
    mem = "peak VRAM MiB" if pipe.device.type == "cuda" else "peak RSS MiB"
    print(f"\nDITTO on SelVA {a.variant}, {a.duration:g} s, {a.precision} on {pipe.device} "
          f"({'weights from ' + str(a.models_dir) if a.models_dir else 'random full-size weights'})")
    print(f"{'n_ode_steps':>11s} {'n_grad_steps':>12s} {'s / opt step':>13s} {mem:>15s}")
    for item in a.configs.split(","):
        ode, grad = (int(v) for v in item.split(":"))
        config = DittoConfig(n_opt_steps=a.opt_steps, n_ode_steps=ode, n_grad_steps=grad)
        sec, peak = run(pipe, feats, target, config)
        print(f"{ode:11d} {grad:12d} {sec:13.3f} {peak:15.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
