#!/usr/bin/env python3
"""Ours against the official SelVA code on the same work, in one run: cold, warm, peak memory.

    SELVA_WORK=/tmp/selva-harness python benchmarks/side_by_side.py --durations 2 8 --steps 4

Each measurement runs in a fresh process (so peak memory is that process's own peak resident
memory, weights included) on the same files: the parity kit's random weights in the released
formats (``$SELVA_WORK/models``, fake Hugging Face home ``$SELVA_WORK/hf-home``) and its test
videos (``$SELVA_WORK/video/test{2,8}s.mp4``; see /work/shared/parity-kit/README.md). The official
side runs with the kit's interpreter (``$SELVA_WORK/venv-ref/bin/python``) and its exported source
(``$SELVA_REF_SRC``, default ``$SELVA_WORK/ref-src``), following demo.py; it is skipped, and only
our numbers are printed, when that environment is absent.

* cold: from an empty process (imports excluded) to the first waveform: load the networks,
  decode the video, encode, sample, decode the audio. "Imports excluded" holds for both sides
  alike: the official modules import transformers, open_clip and PyAV at module level (before
  the clock starts), while our loaders import them on first use, so our side imports the same
  libraries before its clock starts (:func:`_import_libraries`).
* warm: a second generation in the same process with another prompt and seed (networks already
  loaded): decode the video, encode, sample, decode the audio again.
* peak: the process's peak resident memory (``ru_maxrss``); on CUDA also the allocator's peak
  (``max_memory_allocated``) and what it reserved from the card (``max_memory_reserved``, about
  what ``nvidia-smi`` shows less the CUDA context).

``--offload`` sets our loader's ``offload_strategy`` (default ``auto``: everything stays loaded
on a CPU-only machine). ``offload_to_cpu`` on the CPU releases each network after it ran and
loads it again on its next use: least memory, at the cost of loading again in every generation.

Times are given as CPU time of the process (``time.process_time``) and wall time. With
``--threads 1`` (the default) CPU time is the work done and does not depend on what else the
machine runs, so its ratio is the one to compare on a shared machine; wall time is what a user
waits for on an idle one. Ratios are ours / official (below 1 = we are faster / smaller).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = (("a dog barking while a bell rings", "music", 42), ("footsteps on gravel", "music", 7))


def _work() -> Path:
    return Path(os.environ.get("SELVA_WORK") or Path(os.environ.get("TMPDIR") or "/tmp") / "selva-harness")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cuda_in_use() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _cuda_peaks() -> dict:
    """Peak device memory of the process so far (empty when CUDA never ran)."""
    if not _cuda_in_use():
        return {}
    import torch

    return {"vram_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
            "vram_reserved_mib": torch.cuda.max_memory_reserved() / 2**20}


class Clock:
    """Wall and CPU seconds of each lap."""

    def __init__(self) -> None:
        self.laps: list[tuple[float, float]] = []
        self._start = (time.perf_counter(), time.process_time())

    def lap(self) -> None:
        if _cuda_in_use():  # a lap ends when the device's queued work has finished
            import torch

            torch.cuda.synchronize()
        now = (time.perf_counter(), time.process_time())
        self.laps.append((now[0] - self._start[0], now[1] - self._start[1]))
        self._start = now

    def result(self, samples: int) -> dict:
        (cold_wall, cold_cpu), (warm_wall, warm_cpu) = self.laps
        return {"cold": cold_cpu, "warm": warm_cpu, "cold_wall": cold_wall, "warm_wall": warm_wall,
                "peak_mib": _peak_mib(), "samples": samples, **_cuda_peaks()}


# ------------------------------------------------------------------------------------ children
def _import_libraries() -> None:
    """The third-party modules our loaders import on first use, imported now (see the docstring:
    the official code has imported them before its clock starts)."""
    import av  # noqa: F401
    import open_clip  # noqa: F401
    from transformers import PreTrainedTokenizerFast, T5EncoderModel  # noqa: F401


def child_ours(a: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO))
    import torch

    from selva.pipeline import LoadOptions, SelvaPipeline

    _import_libraries()
    torch.set_grad_enabled(False)
    if a.threads:
        torch.set_num_threads(int(a.threads))
    clock = Clock()
    pipe = SelvaPipeline.load(LoadOptions(variant=a.variant, precision=a.precision, device=a.device,
                                          models_dir=a.models, allow_download=False,
                                          offload=a.offload or "auto"))
    for prompt, negative, seed in PROMPTS:
        feats = pipe.extract_features(a.video, None, prompt, duration=a.duration)
        wave = pipe.generate(feats, negative_prompt=negative, steps=a.steps, cfg_strength=4.5, seed=seed)
        assert torch.isfinite(wave).all()
        clock.lap()
    return clock.result(wave.shape[-1])


def child_official(a: argparse.Namespace) -> dict:
    src = Path(os.environ.get("SELVA_REF_SRC") or _work() / "ref-src")
    sys.path.insert(0, str(src))
    import torch
    from selva.model.flow_matching import FlowMatching
    from selva.model.networks_generator import get_my_mmaudio
    from selva.model.networks_video_enc import get_my_textsynch
    from selva.model.sequence_config import CONFIG_16K, CONFIG_44K
    from selva.model.utils.features_utils import FeaturesUtils
    from selva.utils.eval_utils import generate, load_video

    torch.set_grad_enabled(False)
    if a.threads:
        torch.set_num_threads(int(a.threads))
    device, dtype = a.device or "cpu", {"fp32": torch.float32, "bf16": torch.bfloat16}[a.precision]
    mode = "16k" if a.variant.endswith("16k") else "44k"
    md = Path(a.models)
    clock = Clock()
    # as demo.py does it
    video_enc = get_my_textsynch("depth1").to(device, dtype).eval()
    video_enc.load_weights(torch.load(md / "weights/video_enc_sup_5.pth", map_location=device, weights_only=True))
    gen = get_my_mmaudio(a.variant).to(device, dtype).eval()
    gen.load_weights(torch.load(md / f"weights/generator_{a.variant}_sup_5.pth", map_location=device,
                                weights_only=True))
    feature_utils = FeaturesUtils(
        tod_vae_ckpt=str(md / ("ext_weights/v1-16.pth" if mode == "16k" else "ext_weights/v1-44.pth")),
        synchformer_ckpt=str(md / "ext_weights/synchformer_state_dict.pth"), enable_conditions=True,
        mode=mode, bigvgan_vocoder_ckpt=str(md / "ext_weights/best_netG.pt") if mode == "16k" else None,
        need_vae_encoder=False).to(device, dtype).eval()
    seq_cfg = CONFIG_16K if mode == "16k" else CONFIG_44K
    with torch.inference_mode():
        for prompt, negative, seed in PROMPTS:
            info = load_video(Path(a.video), a.duration)
            seq_cfg.duration = info.duration_sec
            gen.update_seq_lengths(seq_cfg.latent_seq_len, seq_cfg.clip_seq_len, seq_cfg.sync_seq_len)
            video_enc.update_seq_lengths(video_seq_len=seq_cfg.sync_seq_len)
            rng = torch.Generator(device=device).manual_seed(seed)
            fm = FlowMatching(min_sigma=0, inference_mode="euler", num_steps=a.steps)
            audio = generate(None, info.sync_frames.unsqueeze(0), [prompt], negative_text=[negative],
                             feature_utils=feature_utils, net_video_enc=video_enc, net_generator=gen,
                             fm=fm, rng=rng, cfg_strength=4.5)
            assert torch.isfinite(audio).all()
            clock.lap()
    return clock.result(audio.shape[-1])


# -------------------------------------------------------------------------------------- driver
def official_python(interpreter: str | None = None) -> str | None:
    """The interpreter for the official side: ``interpreter`` if given (it must import the official
    code's dependencies), else the parity kit's venv; None when the official code is absent."""
    src = Path(os.environ.get("SELVA_REF_SRC") or _work() / "ref-src")
    have_src = (src / "selva" / "model" / "networks_generator.py").is_file()
    if interpreter is not None:
        if not have_src:
            raise SystemExit(f"--official-python given, but the official source is not in {src}: "
                             "set SELVA_REF_SRC to an export of jnwnlee/selva (the parity kit's setup_ref.sh)")
        return interpreter
    py = _work() / "venv-ref" / "bin" / "python"
    return str(py) if py.is_file() and have_src else None


def run_child(side: str, python: str, args: argparse.Namespace, duration: float) -> dict:
    env = dict(os.environ, HF_HOME=str(args.hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    cmd = [python, str(Path(__file__).resolve()), "_child", side, "--variant", args.variant,
           "--precision", args.precision, "--models", str(args.models), "--steps", str(args.steps),
           "--duration", str(duration), "--video", str(args.video_for(duration))]
    if args.device:
        cmd += ["--device", args.device]
    if side == "ours" and args.offload:
        cmd += ["--offload", args.offload]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    if out.returncode != 0:
        raise SystemExit(f"{side} run failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        side = sys.argv[2]
        ap = argparse.ArgumentParser()
        for name in ("--variant", "--precision", "--models", "--video", "--device", "--threads", "--offload"):
            ap.add_argument(name, default=None)
        ap.add_argument("--steps", type=int)
        ap.add_argument("--duration", type=float)
        a = ap.parse_args(sys.argv[3:])
        print(json.dumps((child_ours if side == "ours" else child_official)(a)))
        return 0

    work = _work()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="small_16k")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--device", default=None, help="default: cpu for both sides")
    ap.add_argument("--durations", type=float, nargs="+", default=[2.0, 8.0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="threads for both sides (0 = torch's default)")
    ap.add_argument("--offload", default=None, choices=["auto", "keep_in_vram", "offload_to_cpu"],
                    help="our loader's offload_strategy (default auto)")
    ap.add_argument("--models", type=Path, default=work / "models")
    ap.add_argument("--hf-home", type=Path, default=work / "hf-home")
    ap.add_argument("--videos", type=Path, default=work / "video", help="holds test<N>s.mp4")
    ap.add_argument("--ours-only", action="store_true")
    ap.add_argument("--official-python", default=None,
                    help="interpreter for the official side (default: the parity kit's venv-ref)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    args.video_for = lambda d: args.videos / f"test{int(d)}s.mp4"
    for d in args.durations:
        if not args.video_for(d).is_file():
            raise SystemExit(f"{args.video_for(d)} is missing: make it with the parity kit's "
                             f"make_test_video.py --seconds {int(d)}")
    ref_py = None if args.ours_only else official_python(args.official_python)
    if ref_py is None and not args.ours_only:
        print("official environment not found (run the parity kit's setup_ref.sh): ours only")

    results = []
    for d in args.durations:
        row = {"duration": d, "ours": run_child("ours", sys.executable, args, d)}
        if ref_py is not None:
            row["official"] = run_child("official", ref_py, args, d)
        results.append(row)

    print(f"\n{args.variant}, {args.precision}, {args.steps} steps, device {args.device or 'cpu'}, "
          f"threads {args.threads or 'default'}, ours with offload {args.offload or 'auto'}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'clip':>5} {'measure':>10} {'ours':>10} {'official':>10} {'ratio':>7}")
    for row in results:
        for key, unit in (("cold", "s"), ("warm", "s"), ("cold_wall", "s"), ("warm_wall", "s"),
                          ("peak_mib", "MiB"), ("vram_allocated_mib", "MiB"), ("vram_reserved_mib", "MiB")):
            if key not in row["ours"]:  # the VRAM peaks exist only where CUDA ran
                continue
            ours = row["ours"][key]
            ref = row.get("official", {}).get(key)
            fmt = (lambda v: f"{v:9.2f}{unit[0]}") if unit == "s" else (lambda v: f"{v:7.0f}MiB")
            ratio = f"{ours / ref:6.2f}x" if ref else "      -"
            label = {"cold": "cold cpu", "warm": "warm cpu", "peak_mib": "peak",
                     "vram_allocated_mib": "vram alloc", "vram_reserved_mib": "vram rsrvd"
                     }.get(key, key.replace("_", " "))
            print(f"{row['duration']:4.0f}s {label:>10} {fmt(ours):>10} "
                  f"{fmt(ref) if ref else '-':>10} {ratio}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
