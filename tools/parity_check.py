#!/usr/bin/env python3
"""Compare our pipeline, stage by stage, with a run of the official SelVA code.

The reference run is an ``.npz`` of every intermediate of one generation, made by the parity
kit's ``run_reference.py`` from random weights in the released file formats. This script loads
the same weight files through our real loading code, feeds our pipeline the very frames the
reference used (its ``sync_frames`` / ``clip_frames`` arrays, mapped back to uint8 exactly), the
same prompt, negative prompt, seed, steps and duration, and prints max |ours - reference| for
every intermediate. Exit status 0 when every difference is within ``--tol``.

    HF_HOME=$SELVA_WORK/hf-home HF_HUB_OFFLINE=1 python tools/parity_check.py \
        --models $SELVA_WORK/models --npz $SELVA_WORK/runs/small_16k_2s.npz

Run it from the repository root (it imports ``selva`` as a top-level package, like the CLI).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selva import conditioning  # noqa: E402
from selva import video as video_ops  # noqa: E402
from selva.encoding import PreparedInput  # noqa: E402
from selva.pipeline import LoadOptions, SelvaPipeline  # noqa: E402
from selva.sampling import initial_noise  # noqa: E402


def to_u8(frames01: np.ndarray) -> torch.Tensor:
    u8 = np.rint(frames01 * 255.0)
    assert np.abs(u8 / 255.0 - frames01).max() < 1e-6, "frames are not uint8 values scaled to [0, 1]"
    return torch.from_numpy(u8.astype(np.uint8))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--npz", type=Path, required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--clip-frames", action="store_true",
                    help="also load the CLIP image tower and compare clip_features_frames")
    a = ap.parse_args()

    torch.set_grad_enabled(False)
    ref = np.load(a.npz, allow_pickle=False)
    meta = json.loads(str(ref["meta"]))
    clip_frames = meta["clip_video"] == "frames" or a.clip_frames
    pipe = SelvaPipeline.load(LoadOptions(variant=meta["variant"], precision="fp32", device="cpu",
                                          models_dir=a.models, clip_frames=clip_frames,
                                          allow_download=False))
    duration = float(meta["seq"]["duration"])
    sync_u8 = to_u8(ref["sync_frames"] * 0.5 + 0.5)  # the reference saved them normalised to [-1, 1]
    clip_u8 = to_u8(ref["clip_frames"])
    n = max(len(sync_u8), len(clip_u8))
    frames = video_ops.PreparedFrames(clip_u8=clip_u8, sync_u8=sync_u8, duration=duration, fps=25.0,
                                      clip_indices=tuple(range(len(clip_u8))),
                                      sync_indices=tuple(range(len(sync_u8))), n_source_frames=n)
    ours: dict[str, torch.Tensor] = {}
    feats = pipe.encode(PreparedInput(frames), meta["prompt"])
    ours["text_features_t5"] = feats.text_t5
    ours["text_features_clip"] = feats.text_clip
    ours["sync_features"] = feats.sync_features
    if meta["clip_video"] == "frames":
        ours["clip_features"] = feats.clip_features
    ours["negative_text_features_clip"] = pipe.encoding.encode_clip_text([meta["negative_prompt"]])
    if a.clip_frames:
        ours["clip_features_frames"] = pipe.encoding.encode_clip_frames(frames.clip_frames())
    if meta["clip_video"] != "frames":
        feats.clip_features = None  # the reference's generator got its learned empty sequence

    seq = pipe.variant.seq_lengths(duration)
    gen = pipe.manager.get("generator")
    gen.set_seq_lengths(seq.latent, seq.clip, seq.sync)
    x0 = initial_noise(1, seq.latent, gen.latent_dim, seed=meta["seed"], device="cpu", dtype=torch.float32)
    ours["x0"] = x0
    cond, uncond = conditioning.clip_conditions(gen, feats, seq, ours["negative_text_features_clip"],
                                                pipe.device, torch.float32)
    t0 = torch.zeros(1)
    ours["v0"] = gen.predict_flow(x0, t0, cond)
    ours["v0_uncond"] = gen.predict_flow(x0, t0, uncond)
    ours["v0_cfg"] = gen.cfg_velocity(0.0, x0, cond, uncond, meta["cfg_strength"])

    latent = pipe.sample_latent(feats, negative_prompt=meta["negative_prompt"], steps=meta["steps"],
                                cfg_strength=meta["cfg_strength"], seed=meta["seed"])
    ours["latent"] = latent
    with pipe.manager.use("vae") as vae:
        ours["mel"] = vae.decode(latent.transpose(1, 2))
    ours["audio"] = pipe.decode(latent)

    worst = 0.0
    print(f"{'intermediate':32s} {'shape':>18s} {'max|diff|':>12s} {'max|ref|':>10s}")
    for key, value in ours.items():
        r = ref[key]
        v = value.detach().float().cpu().numpy()
        if v.shape != r.shape:
            print(f"{key:32s} shape mismatch: ours {v.shape} vs reference {r.shape}")
            worst = float("inf")
            continue
        d = float(np.abs(v - r).max())
        worst = max(worst, d)
        print(f"{key:32s} {str(r.shape):>18s} {d:12.3e} {float(np.abs(r).max()):10.3e}")
    ok = worst <= a.tol
    print(f"worst difference {worst:.3e}: {'PASS' if ok else 'FAIL'} (tolerance {a.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
