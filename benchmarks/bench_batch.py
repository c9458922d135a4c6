#!/usr/bin/env python3
"""Clips per minute: ``python -m selva batch`` against the two ways users make many clips today.

    python benchmarks/bench_batch.py                                   # tiny random models, CPU
    python benchmarks/bench_batch.py --variant small_16k --models-dir models/selva --device cuda

16 short clips of two durations (half of each) are made and then generated three ways:

* **batch**: ``run_batch`` (what ``python -m selva batch`` runs) on a loaded pipeline: the next
  video is decoded by a background reader while the current one is generated; with
  ``--batch-rows N`` rows of one length are also sampled together.
* **loop**: a loop of single-clip calls (extract features, generate, write) in one process with
  the networks already loaded: the fair baseline.
* **processes**: ``generate`` as a separate process per clip (what a shell loop does): every
  process imports torch and loads every network again.

The tiny variant (default) writes random tiny networks to a temporary folder (tests/tiny.py): its
ratios show the overheads around the networks (decoding, loading, process start), not the
networks' own speed. Prints a table and writes ``--json``. Run from the repository root.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_CLI = ROOT / "tests" / "tiny_cli.py"

# The pack as a package (as tests/tiny_cli.py does), so the tiny test variants can be registered.
sys.path.insert(0, str(ROOT / "tests"))
_pack = types.ModuleType("comfyui_selva")
_pack.__path__ = [str(ROOT)]
_pack.__spec__ = importlib.util.spec_from_loader("comfyui_selva", loader=None, is_package=True)
_pack.__spec__.submodule_search_locations = [str(ROOT)]
sys.modules.setdefault("comfyui_selva", _pack)

import torch  # noqa: E402

from comfyui_selva.selva.audio import loudness_normalize  # noqa: E402
from comfyui_selva.selva.batch import BatchOptions, RowDefaults, rows_from_folder, run_batch  # noqa: E402
from comfyui_selva.selva.media import write_audio  # noqa: E402
from comfyui_selva.selva.long_video import WindowOptions  # noqa: E402
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline  # noqa: E402


def make_clips(folder: Path, count: int, durations: tuple[float, float], size: tuple[int, int]) -> None:
    """``count`` mpeg4 clips at 25 fps, half of each duration, random noise pictures."""
    import av
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        seconds = durations[i % 2]
        with av.open(str(folder / f"clip{i:02d}.mp4"), "w") as out:
            stream = out.add_stream("mpeg4", rate=25)
            stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
            for _ in range(int(round(seconds * 25))):
                img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="tiny_16k")
    ap.add_argument("--models-dir", type=Path, default=None, help="weights (default: tiny random ones)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--durations", type=float, nargs=2, default=(2.0, 4.0))
    ap.add_argument("--size", type=int, nargs=2, default=(640, 360), help="picture width height")
    ap.add_argument("--batch-rows", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="in-process runs alternate this many times; the fastest of each counts "
                         "(a busy machine slows some passes)")
    ap.add_argument("--no-processes", action="store_true", help="skip the separate-processes run")
    ap.add_argument("--process-clips", type=int, default=None,
                    help="time only the first K clips as separate processes (default: all); the "
                         "rate is clips per minute of those K")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="selva_bench_batch_"))
    models_dir = args.models_dir
    if args.variant.startswith("tiny"):
        import tiny

        tiny.register_tiny_variants()
        if models_dir is None:
            models_dir = work / "models"
            tiny.make_models_dir(models_dir, work / "hub", variants=(args.variant,))
    clips = work / "clips"
    make_clips(clips, args.clips, tuple(args.durations), tuple(args.size))
    common = ["--variant", args.variant, "--precision", args.precision, "--device", args.device,
              "--models-dir", str(models_dir), "--offline"]

    t = time.perf_counter()
    pipe = SelvaPipeline.load(LoadOptions(variant=args.variant, precision=args.precision, device=args.device,
                                          models_dir=models_dir, allow_download=False))
    pipe.preload()
    load_seconds = time.perf_counter() - t
    rows = rows_from_folder(clips, RowDefaults(prompt="rain on a tin roof", duration=0.0))
    # warm-up (first-call costs of every kernel), not timed
    run_batch(pipe, rows[:2], BatchOptions(out_dir=work / "warm", steps=args.steps, format="wav"))

    def loop() -> None:
        for row in rows:
            feats = pipe.extract_features(row.video, None, row.prompt)
            wave = pipe.generate(feats, seed=row.seed, steps=args.steps, windows=WindowOptions())
            wave = loudness_normalize(wave, pipe.sample_rate, -27.0)  # as generate and batch do
            write_audio(work / "loop" / f"{row.name}.wav", wave[0], pipe.sample_rate)

    results: dict = {"variant": args.variant, "device": args.device, "precision": args.precision,
                     "steps": args.steps, "clips": len(rows), "durations": list(args.durations),
                     "threads": torch.get_num_threads(), "load_seconds": round(load_seconds, 2)}
    seconds: dict[str, float] = {}
    for r in range(args.repeat):  # alternating, so a slow phase of the machine hits every mode
        seconds["loop"] = min(seconds.get("loop", float("inf")), timed(loop))
        for n in args.batch_rows:
            key = f"batch (batch_rows {n})"
            opts = BatchOptions(out_dir=work / f"batch{n}_{r}", steps=args.steps, format="wav", batch_rows=n)
            seconds[key] = min(seconds.get(key, float("inf")), timed(lambda: run_batch(pipe, rows, opts)))
    if not args.no_processes:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"))

        some = rows[:args.process_clips] if args.process_clips else rows

        def processes() -> None:
            for row in some:
                subprocess.run([sys.executable, str(TINY_CLI), "generate", "--video", str(row.video),
                                "--prompt", row.prompt, "--duration", "0", "--steps", str(args.steps),
                                "--out", str(work / "proc" / f"{row.name}.wav"), *common],
                               check=True, env=env, capture_output=True)
        seconds["processes"] = timed(processes) * len(rows) / len(some)  # per clip, scaled to all
        results["process_clips"] = len(some)

        def batch_command() -> None:
            subprocess.run([sys.executable, str(TINY_CLI), "batch", "--videos", str(clips), "--prompt",
                            "rain on a tin roof", "--duration", "0", "--steps", str(args.steps), "--format",
                            "wav", "--out-dir", str(work / "cmd"), *common], check=True, env=env,
                           capture_output=True)
        seconds["batch command (load included)"] = timed(batch_command)
    results["clips_per_minute"] = {k: round(60 * len(rows) / v, 2) for k, v in seconds.items()}
    base = results["clips_per_minute"]
    results["ratios"] = {
        "batch / loop": round(base["batch (batch_rows 1)"] / base["loop"], 3),
        **({"batch command / processes": round(base["batch command (load included)"] / base["processes"], 3)}
           if "processes" in base else {}),
    }
    print(f"{len(rows)} clips ({args.durations[0]:g} s and {args.durations[1]:g} s), {args.variant}, "
          f"{args.device} {args.precision}, {args.steps} steps, {torch.get_num_threads()} threads")
    for k, v in results["clips_per_minute"].items():
        print(f"  {k:32s} {v:8.2f} clips/min")
    for k, v in results["ratios"].items():
        print(f"  {k:32s} {v:8.3f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
