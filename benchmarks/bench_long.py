#!/usr/bin/env python3
"""Peak memory of features + sampling for a long video against a short one (target: 40 s <= 1.3x 10 s).

    python benchmarks/bench_long.py                               # full-size small_16k, random weights
    python benchmarks/bench_long.py --models-dir /path/to/models  # real weights
    python benchmarks/bench_long.py --variant tiny_16k --tiny     # the test models (quick check)

Each duration runs in a fresh process: a synthetic video file of that length is written, the
pipeline is loaded and every stage preloaded, then the measured part runs: streamed feature
extraction from the file (decode, T5, CLIP, TextSynchformer) and windowed sampling (and, with
--decode, tiled decoding). Peak memory during that part is the accelerator allocator's peak on
CUDA, and on the CPU the process's peak resident memory (sampled every 2 ms; weights included).
The script exits 1 when a long run exceeds ``--limit`` times the short one.

Run from the repository root; wrap it in ``flock /tmp/selva-heavy.lock`` on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """The highest resident memory seen while the block runs (a sampling thread)."""

    def __enter__(self):
        self.peak, self._stop = _rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def write_video(path: Path, seconds: float, fps: int = 25, size=(360, 640)) -> None:
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.roll(base, 4 * i, axis=1)  # moving content, cheap to encode
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def measure(args) -> dict:
    """One duration, in this process: the child side."""
    import torch

    _register_pack()
    from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline

    if args.tiny:
        import tiny

        tiny.register_tiny_variants()

    models = args.models_dir
    if models is None and args.tiny:
        models = Path(tempfile.gettempdir()) / "selva_bench_tiny_models"
        if not (models / ".complete").exists():
            tiny.make_models_dir(models, models / "hub", variants=(args.variant,))
            (models / ".complete").write_text("ok")
    pipe = SelvaPipeline.load(LoadOptions(variant=args.variant, precision=args.precision,
                                          device=args.device, models_dir=models,
                                          allow_download=models is not None and not args.tiny))
    pipe.preload()
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "long.mp4"
        write_video(video, args.duration)
        cuda = pipe.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        with PeakRss() as rss, torch.inference_mode():
            base_rss = _rss_bytes()
            feats = pipe.extract_features(video, None, "a dog barking", duration=args.duration)
            latent = pipe.sample_latent(feats, steps=args.steps)
            if args.decode:
                pipe.decode(latent)
        if cuda:
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() if cuda else rss.peak
        return {"duration": args.duration, "device": str(pipe.device), "peak_mib": peak / 2**20,
                "baseline_mib": (base if cuda else base_rss) / 2**20,
                "windows": len(pipe.plan(feats).windows), "seconds": time.perf_counter() - t0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="small_16k")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="real weights (default: full-size random weights, or the tiny models with --tiny)")
    p.add_argument("--tiny", action="store_true", help="use the test suite's tiny variants")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--device", default=None)
    p.add_argument("--steps", type=int, default=2, help="Euler steps (memory does not depend on them)")
    p.add_argument("--short", type=float, default=10.0)
    p.add_argument("--long", type=float, default=40.0)
    p.add_argument("--limit", type=float, default=1.3)
    p.add_argument("--decode", action="store_true", help="include the tiled VAE + vocoder decode")
    p.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        args.duration = args.child
        if args.models_dir is None and not args.tiny:
            args.models_dir = _random_full_size(args.variant)
        print(json.dumps(measure(args)))
        return 0
    results = []
    for duration in (args.short, args.long):
        cmd = [sys.executable, __file__, "--child", str(duration)] + [a for a in sys.argv[1:]]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    short, long_ = results
    ratio = long_["peak_mib"] / short["peak_mib"]
    for r in results:
        print(f"{r['duration']:6.1f} s  {r['windows']:2d} windows  peak {r['peak_mib']:9.1f} MiB  "
              f"(before: {r['baseline_mib']:9.1f} MiB)  {r['seconds']:6.1f} s  on {r['device']}")
    print(f"peak {args.long:g} s / {args.short:g} s = {ratio:.3f} (limit {args.limit})")
    return 0 if ratio <= args.limit else 1


def _register_pack() -> None:
    """Import the pack as the tests do (``comfyui_selva``), with tests/ on the path."""
    sys.path.insert(0, str(ROOT / "tests"))
    import conftest  # noqa: F401  (registers comfyui_selva)


def _random_full_size(variant: str) -> Path:
    """The test suite's cached full-size random weights (tests/full_weights.py)."""
    _register_pack()
    from full_weights import full_models_dir

    return full_models_dir(variant)


if __name__ == "__main__":
    sys.exit(main())
