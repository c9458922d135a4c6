#!/usr/bin/env python3
"""Check our held-out metrics against av-benchmark's own code on the same inputs and weights.

1. Exports hkchengrex/av-benchmark and hkchengrex/passt_hear21 (the PaSST package av-benchmark
   installs) from their git copies into ``WORK/src`` (nothing of them is committed here).
2. Writes random weights in the released formats (``synchformer_state_dict.pth``: the full
   Synchformer state dict; ``passt.pt``: the PaSST-S state dict), deterministic per tensor
   (``tools/parity_weights.py``), two 5 s clips of random 224 px frames, "generated" 16 kHz mono
   audio and "real" 22.05 kHz stereo audio as float WAV files.
3. Runs ``tools/metrics_parity_ref.py`` with the reference environment's Python (av-benchmark's
   ``evaluate()`` and its feature extraction code), then our ``selva.evaluation`` here.
4. Compares DeSync, FD-PaSST and KL-PaSST (and every intermediate, for diagnosis); exit status 0
   when each metric agrees within ``--rtol`` (1e-4 relative).

``--write-golden tests/data/metrics_parity_golden.npz`` keeps the reference's small arrays (one
clip's mel segments and Synchformer features, offset logits, PaSST outputs, metrics) so CI checks
the agreement without the reference environment (``tests/test_metrics_parity_golden.py``).

    python tools/metrics_parity.py --av-bench-git /path/to/av-benchmark.git \
        --passt-git /path/to/passt_hear21.git --ref-python /path/to/ref-venv/bin/python \
        --work /tmp/metrics-parity

The reference venv needs torch, torchaudio, transformers<5 (av-benchmark's modified AST imports
``find_pruneable_heads_and_indices``), timm, einops, omegaconf, scipy, requests, tqdm.
Run from the repository root; CPU, fp32; about 20 minutes on two busy cores with the video branch
(the default), under 15 with --video-branch skip.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from parity_weights import parity_state, parity_tensor  # noqa: E402
from parity_results import read_both, run_and_keep_ours, scalar_agrees  # noqa: E402

NAMES = ("clip_a", "clip_b")
SHARED_VIDEO = "shared_video_features"  # file name when both sides skip the video branch
DURATION = 5.0
GEN_RATE, REAL_RATE = 16000, 22050


def clip_frames(index: int) -> np.ndarray:
    """(125, 224, 224, 3) uint8: smooth random images moving over time (deterministic)."""
    g = torch.Generator().manual_seed(100 + index)
    base = torch.rand(1, 3, 16, 16, generator=g)
    drift = torch.rand(1, 3, 16, 16, generator=g)
    t = torch.linspace(0, 1, int(DURATION * 25))[:, None, None, None]
    small = (base + t * drift).clamp(0, 2) / 2
    big = torch.nn.functional.interpolate(small, size=(224, 224), mode="bilinear", align_corners=False)
    return (big.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def clip_audio(index: int, rate: int, channels: int, kind: str) -> np.ndarray:
    """(channels, samples) float32: tones and noise bursts (deterministic)."""
    g = torch.Generator().manual_seed(200 + index * 2 + (kind == "real"))
    n = int(DURATION * rate)
    t = torch.arange(n) / rate
    tone = 0.2 * torch.sin(2 * torch.pi * (220 + 110 * index + 40 * (kind == "real")) * t)
    bursts = (torch.sin(2 * torch.pi * 1.3 * t) > 0.6).float() * 0.1 * torch.randn(n, generator=g)
    wave = (tone + bursts).expand(channels, -1).clone()
    return wave.numpy().astype(np.float32)


def write_inputs(work: Path) -> None:
    from scipy.io import wavfile

    from selva.evaluation.passt import build_passt
    from selva.models.synchformer import Synchformer

    work.mkdir(parents=True, exist_ok=True)
    if not (work / "synchformer_state_dict.pth").is_file():
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in Synchformer().state_dict().items()}
        torch.save(parity_state(shapes), work / "synchformer_state_dict.pth")
    if not (work / "passt.pt").is_file():
        shapes = {k: v.shape for k, v in build_passt().net.state_dict().items()}
        torch.save(parity_state(shapes), work / "passt.pt")
    np.savez(work / "frames.npz", **{n: clip_frames(i) for i, n in enumerate(NAMES)})
    for kind, rate, channels in (("gen", GEN_RATE, 1), ("real", REAL_RATE, 2)):
        (work / kind).mkdir(exist_ok=True)
        for i, n in enumerate(NAMES):
            wavfile.write(work / kind / f"{n}.wav", rate, clip_audio(i, rate, channels, kind).T.squeeze())
    (work / "inputs.json").write_text(json.dumps({"names": list(NAMES), "duration": DURATION}))


def export(git_dir: Path, dest: Path) -> Path:
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.mkdir(exist_ok=True)
        archive = subprocess.run(["git", "-C", str(git_dir), "archive", "HEAD"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        tmp.rename(dest)
    return dest


def shared_video_features(name: str) -> torch.Tensor:
    """(14, 8, 768) stand-in video features, the same on both sides (``--video-branch skip``)."""
    return parity_tensor(f"video_features.{name}", (14, 8, 768)) * 20.0


def run_ours(work: Path) -> tuple[dict, dict]:
    from scipy.io import wavfile

    from selva.evaluation.desync import DesyncScorer, decode_offsets, set_desync
    from selva.evaluation.fd import compute_fd
    from selva.evaluation.kl import kl_per_pair
    from selva.evaluation.passt import PasstEmbedder

    def read(path):
        rate, data = wavfile.read(path)
        t = torch.from_numpy(np.asarray(data, np.float32))
        return (t.T if t.dim() == 2 else t), rate

    torch.set_grad_enabled(False)
    scorer = DesyncScorer.from_file(work / "synchformer_state_dict.pth")
    passt = PasstEmbedder.from_file(work / "passt.pt")
    frames = np.load(work / "frames.npz")
    arrays, results, emb, logits = {}, {}, {"gen": [], "real": []}, {"gen": [], "real": []}
    skip_video = (work / SHARED_VIDEO).is_file()
    for name in NAMES:
        video = (shared_video_features(name) if skip_video
                 else scorer.video_features(torch.from_numpy(frames[name]), DURATION))
        wave, rate = read(work / "gen" / f"{name}.wav")
        audio = scorer.audio_features(wave, rate, DURATION)
        results[name] = scorer.score(video, wave, rate, DURATION)
        first = scorer.model.offset_logits(video[None, :14], audio[None, :14])
        last = scorer.model.offset_logits(video[None, -14:], audio[None, -14:])
        assert decode_offsets(first).item() == results[name].offsets[0]
        arrays.update({f"video_{name}": video.numpy(), f"audio_{name}": audio.numpy(),
                       f"logits_first_{name}": first[0].numpy(), f"logits_last_{name}": last[0].numpy()})
        if name == NAMES[0]:
            arrays[f"mels_{name}"] = scorer.audio_mels(wave, rate, DURATION).numpy()
        for kind in ("real", "gen"):
            w, r = read(work / kind / f"{name}.wav")
            e, l = passt(w, r, DURATION)
            emb[kind].append(e)
            logits[kind].append(l)
            arrays[f"passt_emb_{kind}_{name}"], arrays[f"passt_logits_{kind}_{name}"] = e.numpy(), l.numpy()
    metrics = {
        "DeSync": set_desync(results),
        "FD-PASST": compute_fd(torch.stack(emb["gen"]).numpy(), torch.stack(emb["real"]).numpy()),
        "KL-PASST-softmax": float(kl_per_pair(torch.stack(logits["gen"]), torch.stack(logits["real"])).mean()),
        "offsets": {n: list(r.offsets) for n, r in results.items()},
    }
    return metrics, arrays


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--av-bench-git", type=Path, required=True, help="git dir of hkchengrex/av-benchmark")
    ap.add_argument("--passt-git", type=Path, required=True, help="git dir of hkchengrex/passt_hear21")
    ap.add_argument("--ref-python", type=Path, required=True, help="the reference environment's python")
    ap.add_argument("--work", type=Path, default=Path("/tmp/metrics-parity"))
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--write-golden", type=Path, default=None)
    ap.add_argument("--video-branch", choices=("run", "skip"), default="run",
                    help="skip: both sides get the same stand-in video features instead of running "
                         "the MotionFormer on the frames (minutes faster on a CPU; SelVA's generation "
                         "parity kit checks that branch)")
    ap.add_argument("--compare-only", action="store_true",
                    help="compare the results both sides left in WORK by an earlier run")
    a = ap.parse_args()

    work = a.work.resolve()
    if not a.compare_only:
        avb = export(a.av_bench_git, work / "src" / "av-benchmark")
        passt_src = export(a.passt_git, work / "src" / "passt_hear21")
        write_inputs(work)
        (work / SHARED_VIDEO).unlink(missing_ok=True)
        if a.video_branch == "skip":
            (work / SHARED_VIDEO).write_text("both sides use shared_video_features()")
        start = time.time()
        subprocess.run([str(a.ref_python), str(ROOT / "tools" / "metrics_parity_ref.py"), str(work),
                        str(avb), str(passt_src)], check=True)
        print(f"reference: {time.time() - start:.0f} s")
        run_and_keep_ours(work, run_ours)
    ours, ours_arrays, ref, ref_arrays = read_both(work)

    ok = True
    for key in ("DeSync", "FD-PASST", "KL-PASST-softmax"):
        ok &= scalar_agrees(key, ref[key], ours[key], a.rtol)
    same_offsets = ref["offsets"] == ours["offsets"]
    ok &= same_offsets
    print(f"per-clip offsets   {'equal' if same_offsets else 'DIFFER'}: reference {ref['offsets']} ours {ours['offsets']}")
    for key in sorted(ref_arrays):
        diff = np.abs(ref_arrays[key].astype(np.float64) - ours_arrays[key]).max()
        scale = np.abs(ref_arrays[key]).max()
        print(f"  {key:34s} max|diff| {diff:.3e}  (max|ref| {scale:.3e})")

    if a.write_golden is not None:
        first = NAMES[0]
        keep = {k: v for k, v in ref_arrays.items()
                if k.startswith(("passt_", "logits_")) or k.endswith(first)}
        keep["video_" + first] = ref_arrays["video_" + first]
        meta = {**ref, "video_branch": "skip" if (work / SHARED_VIDEO).is_file() else "run"}
        keep["metrics_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        np.savez_compressed(a.write_golden, **keep)
        print(f"wrote {a.write_golden} ({a.write_golden.stat().st_size / 1e6:.2f} MB)")
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
