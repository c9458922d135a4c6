#!/usr/bin/env python3
"""Check our CLAP score against laion_clap's own code, as av-benchmark runs it, on the same inputs.

1. Exports hkchengrex/CLAP (the laion_clap fork av-benchmark depends on) and
   hkchengrex/av-benchmark from their git copies into ``WORK/src`` (nothing of them is committed).
2. Writes a small byte-level BPE tokenizer (vocab.json + merges.txt, learnt from the captions:
   roberta-base's own files come from Hugging Face, out of reach here; both sides read the same
   files) and four clips as float WAV: 5 s at 16 kHz, 8 s stereo at 44.1 kHz, 12 s at 16 kHz
   (longer than CLAP's 10 s window: cropped) and 0.7 s (repeat-padded), with captions, one of them
   longer than 77 tokens.
3. The reference writes random weights in the released checkpoint's layout
   (``{"epoch", "state_dict": {"module.<name>": ...}}``, every learnt tensor from
   ``tools/clap_parity_weights.py``, laion_clap's own buffers and STFT/mel constants) and
   the tool checks that this layout is exactly ``selva.evaluation.clap.released_layout()``
   (from which CI rebuilds the same weights: :func:`parity_checkpoint`).
4. Runs ``tools/clap_parity_ref.py`` (laion_clap's ``CLAP_Module`` + av-benchmark's
   ``AudioDataset``) with the reference environment's Python, then ours (``selva.evaluation.clap``).
5. Compares the score, every clip's audio and text embedding, token ids, log-mel and pooled HTSAT
   features; exit status 0 when the embeddings and the score agree within ``--rtol``.

``--write-golden tests/data/clap_parity_golden.npz`` keeps the reference's embeddings, token ids
and scores so ``tests/test_clap_parity_golden.py`` checks ours against them in CI.

    python tools/clap_parity.py --clap-git /path/to/CLAP.git --av-bench-git /path/to/av-benchmark.git \\
        --ref-python /path/to/ref-venv/bin/python --work /tmp/clap-parity

The reference venv needs torch, torchaudio, transformers < 5, timm, scipy and laion_clap's imports:
librosa, torchlibrosa, h5py, braceexpand, pandas, webdataset, wget, ftfy, progressbar, scikit-learn
(``pip install`` them; laion_clap itself comes from the exported source). CPU, fp32; 1-4 minutes
(two full-size CLAP models on four clips).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from clap_parity_weights import parity_value  # noqa: E402
from parity_results import read_both, run_and_keep_ours, scalar_agrees  # noqa: E402

CLIPS = (
    {"name": "clip_a", "duration": 5.0, "rate": 16000, "channels": 1,
     "caption": "A dog barks twice while cars pass by on a wet street."},
    {"name": "clip_b", "duration": 8.0, "rate": 44100, "channels": 2,
     "caption": "soft piano music with rain falling in the background"},
    {"name": "clip_c", "duration": 12.0, "rate": 16000, "channels": 1,
     "caption": " ".join(["a long description of a busy kitchen with pans, knives, running water and people "
                          "talking"] * 4)},
    {"name": "clip_d", "duration": 0.7, "rate": 16000, "channels": 1, "caption": "a short click"},
)
BPE_MERGES = 120


# ------------------------------------------------------------------------------------ tokenizer
def _byte_chars() -> dict[int, str]:
    """GPT-2 / RoBERTa byte -> printable character table (byte-level BPE's alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tokenizer_files(captions) -> tuple[dict, list[str]]:
    """A byte-level BPE vocabulary learnt from ``captions`` (deterministic): (vocab, merges)."""
    chars = _byte_chars()
    words = Counter()
    for caption in captions:
        for i, word in enumerate(caption.split(" ")):
            text = (" " if i else "") + word
            words[tuple(chars[b] for b in text.encode("utf-8"))] += 1
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for b in range(256):
        vocab[chars[b]] = len(vocab)
    merges = []
    for _ in range(BPE_MERGES):
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(f"{best[0]} {best[1]}")
        vocab.setdefault(best[0] + best[1], len(vocab))
        merged = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    vocab["<mask>"] = len(vocab)
    return vocab, merges


def write_tokenizer(folder: Path) -> None:
    vocab, merges = tokenizer_files(c["caption"] for c in CLIPS)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------- audio
def clip_audio(index: int) -> np.ndarray:
    """(channels, samples) float32: a chirp, a tone and noise bursts (deterministic)."""
    spec = CLIPS[index]
    g = torch.Generator().manual_seed(300 + index)
    n, rate = int(spec["duration"] * spec["rate"]), spec["rate"]
    t = torch.arange(n) / rate
    chirp = 0.15 * torch.sin(2 * torch.pi * (200 + 300 * index) * t * (1 + 0.3 * t))
    tone = 0.1 * torch.sin(2 * torch.pi * (1500 + 700 * index) * t)
    bursts = (torch.sin(2 * torch.pi * (0.9 + index) * t) > 0.5).float() * 0.2 * torch.randn(n, generator=g)
    wave = chirp + tone + bursts + 0.05 * index  # a DC offset: the dataset removes it
    channels = [wave] + [0.7 * wave.roll(37) for _ in range(spec["channels"] - 1)]
    return torch.stack(channels).numpy().astype(np.float32)


def crop_starts() -> list[int]:
    """Our crop start of each clip longer than 10 s at 48 kHz (handed to laion_clap's randint)."""
    from selva.evaluation.clap import CLAP_RATE, CLAP_SAMPLES, crop_start

    return [crop_start(int(CLAP_RATE * c["duration"]), CLAP_SAMPLES, 0) for c in CLIPS
            if int(CLAP_RATE * c["duration"]) > CLAP_SAMPLES]


def write_inputs(work: Path) -> None:
    from scipy.io import wavfile

    (work / "audio").mkdir(parents=True, exist_ok=True)
    write_tokenizer(work / "tokenizer")
    for i, clip in enumerate(CLIPS):
        wavfile.write(work / "audio" / f"{clip['name']}.wav", clip["rate"], clip_audio(i).T.squeeze())
    (work / "inputs.json").write_text(json.dumps({"clips": list(CLIPS), "crop_starts": crop_starts()}))


# ------------------------------------------------------------------------------ parity weights
def parity_checkpoint(arch=None, layout=None) -> dict:
    """The parity weights rebuilt without the reference: the learnt tensors equal the reference's
    file; constants our side ignores are zeros, the window indices are the model's own.
    ``layout``: ``released_layout(arch)`` when the caller has it (tests import the pack otherwise)."""
    if layout is None:
        from selva.evaluation.clap import ClapArch, released_layout

        layout = released_layout(arch or ClapArch())
    sd = {}
    for key, shape in layout.items():
        value = parity_value(key, shape)
        if value is None:
            value = _window_index() if key.endswith("relative_position_index") else torch.zeros(shape)
        sd["module." + key] = value
    return {"epoch": 15, "state_dict": sd}


def _window_index(window: int = 8) -> torch.Tensor:
    """Swin's relative-position index of a ``window`` x ``window`` window: (window², window²)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


# --------------------------------------------------------------------------------------- ours
def run_ours(work: Path) -> tuple[dict, dict]:
    from scipy.io import wavfile

    from selva.evaluation.clap import (ClapScorer, clap_scores, fit_length, log_mel, prepare_audio)

    torch.set_grad_enabled(False)
    scorer = ClapScorer.from_files(work / "clap.pt", work / "tokenizer")
    params = json.loads((work / "inputs.json").read_text())
    arrays, audio, text = {}, [], []
    for clip in params["clips"]:
        rate, data = wavfile.read(work / "audio" / f"{clip['name']}.wav")
        wave = torch.from_numpy(np.asarray(data, np.float32))
        wave = wave.T if wave.dim() == 2 else wave
        x = fit_length(prepare_audio(wave, rate, clip["duration"]))[None]
        arrays[f"mel_{clip['name']}"] = log_mel(x)[0, 0].numpy()
        arrays[f"pooled_{clip['name']}"] = scorer.model.audio_model(input_features=log_mel(x)).pooler_output[0].numpy()
        emb = scorer.audio_embedding(wave, rate, clip["duration"])
        arrays[f"audio_emb_{clip['name']}"] = emb.numpy()
        audio.append(emb)
        t = scorer.text_embeddings([clip["caption"]])[0]
        arrays[f"text_emb_{clip['name']}"] = t.numpy()
        arrays[f"tokens_{clip['name']}"] = scorer.tokenizer([clip["caption"]], padding="max_length", truncation=True,
                                                            max_length=77, return_tensors="pt")["input_ids"][0].numpy()
        text.append(t)
    scores = clap_scores(torch.stack(audio), torch.stack(text))
    names = [c["name"] for c in params["clips"]]
    return {"LAION-CLAP-Score": float(scores.mean()),
            "per_clip": {n: float(s) for n, s in zip(names, scores)}}, arrays


def export(git_dir: Path, dest: Path, subdir: str = "") -> Path:
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.mkdir(exist_ok=True)
        archive = subprocess.run(["git", "-C", str(git_dir), "archive", "HEAD"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        tmp.rename(dest)
    return dest / subdir if subdir else dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clap-git", type=Path, required=True, help="git dir of hkchengrex/CLAP (laion_clap)")
    ap.add_argument("--av-bench-git", type=Path, required=True, help="git dir of hkchengrex/av-benchmark")
    ap.add_argument("--ref-python", type=Path, required=True, help="the reference environment's python")
    ap.add_argument("--work", type=Path, default=Path("/tmp/clap-parity"))
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--write-golden", type=Path, default=None)
    ap.add_argument("--compare-only", action="store_true",
                    help="compare the results both sides left in WORK by an earlier run")
    a = ap.parse_args()

    work = a.work.resolve()
    if not a.compare_only:
        clap_src = export(a.clap_git, work / "src" / "CLAP", "src")
        avb = export(a.av_bench_git, work / "src" / "av-benchmark")
        write_inputs(work)
        ref = [str(a.ref_python), str(ROOT / "tools" / "clap_parity_ref.py")]
        start = time.time()
        subprocess.run(ref + ["weights", str(work), str(clap_src), str(avb)], check=True)
        got = {k: tuple(v) for k, v in json.loads((work / "ref_layout.json").read_text()).items()}
        from selva.evaluation.clap import released_layout

        want = released_layout()
        if got != want:
            print("released_layout() differs from laion_clap's checkpoint layout:")
            print("  only in laion_clap:", sorted(set(got) - set(want))[:10])
            print("  only in ours:", sorted(set(want) - set(got))[:10])
            print("  other shape:", [k for k in set(got) & set(want) if got[k] != want[k]][:10])
            return 1
        subprocess.run(ref + ["run", str(work), str(clap_src), str(avb)], check=True)
        print(f"reference: {time.time() - start:.0f} s")
        run_and_keep_ours(work, run_ours)
    ours, ours_arrays, ref, ref_arrays = read_both(work)

    ok = scalar_agrees("LAION-CLAP-Score", ref["LAION-CLAP-Score"], ours["LAION-CLAP-Score"], a.rtol)
    for name, rv in ref["per_clip"].items():
        ov = ours["per_clip"][name]
        print(f"  {name}: reference {rv:.8g}  ours {ov:.8g}  diff {abs(ov - rv):.2e}")
    print("front-end constants in the file vs a fresh torchlibrosa build (max|diff|):",
          ref.get("front_end_file_vs_fresh"))
    for key in sorted(ref_arrays):
        a_ref, a_ours = ref_arrays[key].astype(np.float64), ours_arrays[key].astype(np.float64)
        if a_ref.shape != a_ours.shape:
            print(f"  {key:24s} SHAPE reference {a_ref.shape} ours {a_ours.shape}")
            ok = False
            continue
        diff = np.abs(a_ref - a_ours).max()
        scale = np.abs(a_ref).max()
        emb = key.startswith(("audio_emb_", "text_emb_", "tokens_"))
        good = diff <= a.rtol * max(scale, 1e-12)
        if emb:
            ok &= good
        print(f"  {key:24s} max|diff| {diff:.3e}  (max|ref| {scale:.3e})"
              f"{'' if not emb else ('  ok' if good else '  DIFFERS')}")

    if a.write_golden is not None:
        keep = {k: v for k, v in ref_arrays.items() if k.startswith(("audio_emb_", "text_emb_", "tokens_"))}
        keep["ref_json"] = np.frombuffer(json.dumps(ref).encode(), dtype=np.uint8)
        np.savez_compressed(a.write_golden, **keep)
        print(f"wrote {a.write_golden} ({a.write_golden.stat().st_size / 1e6:.2f} MB)")
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
