#!/usr/bin/env python3
"""Vocoder-tuning speed: optimizer steps per second and peak memory, per vocoder and train mode.

    python benchmarks/bench_vocoder_training.py                       # both vocoders, both modes
    python benchmarks/bench_vocoder_training.py --vocoder v1 --mode snake_alpha_only --steps 5
    python benchmarks/bench_vocoder_training.py --discriminators      # + the 44.1 kHz release's MPD + CQTD

The networks are full size with random weights (the 16 kHz BigVGAN v1 of SelVA and NVIDIA's
44.1 kHz BigVGAN v2), so the timings are those of the real vocoders. Each configuration runs the
shared training loop (selva/train/loop.py) exactly as the Trainer node does, on synthetic audio,
without eval samples; the first step is warm-up and not timed. Peak memory is the CUDA
allocator's peak, or on the CPU the process's peak resident memory so far (weights included;
cumulative over the configurations run before it in the same call).

Run from the repository root.
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bigvgan.discriminators import BIGVGAN_V2_44K_DISCRIMINATORS, MultiPeriodDiscriminator, build_second  # noqa: E402
from bigvgan.v1 import BigVGANv1  # noqa: E402
from bigvgan.v2 import BigVGANv2  # noqa: E402
from selva.offload import OffloadManager, pick_device  # noqa: E402
from selva.pipeline import LoadOptions, SelvaPipeline  # noqa: E402
from selva.train.loop import run_training  # noqa: E402
from selva.variants import get_variant  # noqa: E402
from selva.vocoder_tuning.tuner import VocoderTuner, VocoderTuningConfig, loop_config  # noqa: E402

VOCODERS = {"v1": ("small_16k", BigVGANv1), "v2": ("small_44k", BigVGANv2)}


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vocoder_pipeline(variant: str, net_cls, device: torch.device) -> SelvaPipeline:
    """A pipeline holding only a full-size random vocoder (what vocoder tuning reads)."""
    spec = get_variant(variant)
    manager = OffloadManager(device=device, offload=False)
    manager.add("vocoder", net_cls().float(), torch.float32)
    return SelvaPipeline(spec, LoadOptions(variant=variant, precision="fp32"), manager, torch.float32)


def write_audio(folder: Path, rate: int, seconds: float = 20.0) -> Path:
    from selva.train.files import write_wav

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(t))) + 0.05 * rng.standard_normal(t.size)
    write_wav(folder / "clip.wav", torch.from_numpy(wave.astype(np.float32))[None], rate)
    return folder


def discriminator_file(folder: Path) -> Path:
    """Random discriminators in the release's file layout (weight-norm spelling is folded on load)."""
    from bigvgan.discriminators import weight_normed_prefixes

    def spelled(net):
        prefixes = weight_normed_prefixes(net)
        out = {}
        for k, v in net.state_dict().items():
            if k.endswith(".weight") and k[: -len("weight")] in prefixes:
                out[k[: -len("weight")] + "weight_g"] = v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
                out[k[: -len("weight")] + "weight_v"] = v
            else:
                out[k] = v
        return out

    cfg = BIGVGAN_V2_44K_DISCRIMINATORS
    path = folder / "bigvgan_discriminator_optimizer.pt"
    torch.save({"mpd": spelled(MultiPeriodDiscriminator(cfg)), "mrd": spelled(build_second(cfg)),
                "optim_g": {}, "optim_d": {}, "steps": 0, "epoch": 0}, path)
    return path


def bench(vocoder: str, mode: str, args, device: torch.device, work: Path, disc: Path | None) -> tuple:
    variant, net_cls = VOCODERS[vocoder]
    pipe = vocoder_pipeline(variant, net_cls, device)
    data = write_audio(work / f"data_{vocoder}", pipe.sample_rate)
    cfg = VocoderTuningConfig(data_dir=data, output_path=work / f"runs_{vocoder}_{mode}", train_mode=mode,
                              steps=args.steps + 1, batch_size=args.batch_size,
                              segment_seconds=args.segment_seconds, save_every=0, discriminator_path=disc)
    task = VocoderTuner(pipe, cfg)
    times: list[float] = []
    last = [time.perf_counter()]

    def on_step(info) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if info.step > 1:  # the first step is warm-up
            times.append(now - last[0])
        last[0] = now

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loop = dataclasses.replace(loop_config(cfg), eval_samples=False)
    run_training(task, loop, cfg.output_path, on_step=on_step)
    n_params = sum(p.numel() for p in task.trainable_parameters())
    return (vocoder, mode, "yes" if disc else "no", n_params, len(times) / sum(times), peak_mib(device))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocoder", choices=["v1", "v2", "both"], default="both")
    ap.add_argument("--mode", choices=["snake_alpha_only", "all_params", "both"], default="both")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--segment-seconds", type=float, default=1.0)
    ap.add_argument("--discriminators", action="store_true", help="v2 only: add the release's MPD + CQTD")
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    device = pick_device(a.device)
    vocoders = ["v1", "v2"] if a.vocoder == "both" else [a.vocoder]
    modes = ["snake_alpha_only", "all_params"] if a.mode == "both" else [a.mode]
    rows = []
    with tempfile.TemporaryDirectory(prefix="selva_bench_voc_") as tmp:
        work = Path(tmp)
        disc = discriminator_file(work) if a.discriminators else None
        for vocoder in vocoders:
            for mode in modes:
                rows.append(bench(vocoder, mode, a, device, work, disc if vocoder == "v2" else None))
                print(f"done: {rows[-1][:3]}", flush=True)
    threads = torch.get_num_threads()
    print(f"\nvocoder tuning on {device} ({threads} CPU threads), batch {a.batch_size} x "
          f"{a.segment_seconds:g} s, random full-size weights")
    print(f"{'vocoder':8} {'mode':17} {'disc':5} {'trained':>11} {'steps/s':>8} {'peak MiB':>9}")
    for vocoder, mode, disc, n, rate, peak in rows:
        print(f"{vocoder:8} {mode:17} {disc:5} {n:11,d} {rate:8.3f} {peak:9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
