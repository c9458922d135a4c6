#!/usr/bin/env python3
"""The sync encoder alone, ours against the official code, in one process: CPU seconds + difference.

    SELVA_WORK=/tmp/selva-harness $SELVA_WORK/venv-ref/bin/python \\
        benchmarks/sync_encoder_side_by_side.py --seconds 8

The TextSynchformer (a 12-block video ViT over every 16-frame segment, then the prompt's
cross-attention) is the part of a first generation that no caching can skip: it must run once
per video. This script times it on both sides with the same weights (the parity kit's
``video_enc_sup_5.pth``), the same random frames and text features, in the same interpreter and
torch build (the kit's), one thread by default, and prints the largest difference of the
outputs. Its time, divided by the official code's cold time for the same clip, is the lowest
cold ratio any implementation with the official numbers can reach on that machine.

Ours is imported from this checkout as the package ``comfyui_selva`` (the way ComfyUI imports
the pack) because the official code's package is also called ``selva``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _work() -> Path:
    return Path(os.environ.get("SELVA_WORK") or Path(os.environ.get("TMPDIR") or "/tmp") / "selva-harness")


def _import_ours():
    pack = types.ModuleType("comfyui_selva")
    pack.__path__ = [str(REPO)]
    pack.__spec__ = importlib.util.spec_from_loader("comfyui_selva", loader=None, is_package=True)
    pack.__spec__.submodule_search_locations = [str(REPO)]
    sys.modules["comfyui_selva"] = pack
    from comfyui_selva.selva.models.text_synch import TextSynchformer, load_text_synch_weights

    return TextSynchformer, load_text_synch_weights


def _cpu_seconds(fn):
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="clip length at 25 fps (default 8)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", type=Path, default=_work() / "models" / "weights" / "video_enc_sup_5.pth")
    args = ap.parse_args()
    src = Path(os.environ.get("SELVA_REF_SRC") or _work() / "ref-src")
    if not (src / "selva" / "model" / "networks_video_enc.py").is_file():
        raise SystemExit(f"official source not found in {src}: run the parity kit's setup_ref.sh")
    if not args.weights.is_file():
        raise SystemExit(f"{args.weights} is missing: make it with the parity kit's make_fake_weights.py")
    sys.path.insert(0, str(src))
    import torch
    from selva.model.networks_video_enc import get_my_textsynch

    TextSynchformer, load_text_synch_weights = _import_ours()
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    frames = int(round(args.seconds * 25)) - 1  # the official reader's frame count (parity kit notes)
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, frames, 3, 224, 224, generator=g) * 2 - 1
    text, mask = torch.randn(1, 12, 768, generator=g), torch.ones(1, 12)

    official = get_my_textsynch("depth1").eval()
    official.load_weights(state)
    ours = TextSynchformer().eval()
    load_text_synch_weights(ours, state, source=str(args.weights))

    of, om = official.prepend_sup_text_tokens(text, mask)
    uf, um = ours.prepend_sup_tokens(text, mask)
    # one segment each first, so neither side pays for first-call allocations in the timing
    official.encode_video_with_sync(video[:, :16], text_f=of, text_mask=om)
    ours.encode(video[:, :16], uf, um)

    t_off, out_off = _cpu_seconds(lambda: official.encode_video_with_sync(video, text_f=of, text_mask=om))
    t_bb, tokens = _cpu_seconds(lambda: ours.backbone_tokens(video))
    t_text, out_ours = _cpu_seconds(lambda: ours.encode_tokens(tokens, uf, um))
    segments = ours.cfg.num_segments(frames)
    print(f"{args.seconds:g} s clip, {frames} frames, {segments} segments, {args.threads} thread(s), "
          f"torch {torch.__version__}")
    print(f"official encode_video_with_sync   {t_off:8.2f} s CPU")
    print(f"ours backbone + text cross-attn   {t_bb + t_text:8.2f} s CPU "
          f"(backbone {t_bb:.2f}, text part {t_text:.2f}; ratio {(t_bb + t_text) / t_off:.2f}x)")
    print(f"max |ours - official|             {(out_ours - out_off).abs().max().item():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
