#!/usr/bin/env python3
"""The reference half of ``tools/metrics_parity.py``: av-benchmark's own code on the shared inputs.

Runs inside the reference environment (a venv with av-benchmark's dependencies: torch,
torchaudio, transformers < 5, timm, einops, omegaconf, scipy), with the exported av-benchmark and
passt_hear21 sources on ``sys.path``. Packages av-benchmark imports only for metrics not compared
here (ImageBind, LAION/MS CLAP, PANNs' torchlibrosa, torchvision, torio, pytorchvideo) are
replaced by empty stand-ins; ``torchaudio.load`` reads the float WAV inputs with SciPy (newer
torchaudio needs torchcodec for it). Everything that computes a compared number is av-benchmark's:
``SynchformerAudioDataset``, ``encode_audio_with_sync``, ``encode_video_with_sync``,
``AudioDataset``, the PaSST model it builds, and ``av_bench.evaluate.evaluate`` itself.

    python tools/metrics_parity_ref.py WORK AV_BENCH_SRC PASST_SRC
"""
from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import ref_stubs  # this folder: the script runs from here

STUBBED = ("imagebind", "laion_clap", "msclap", "pytorchvideo", "torio", "torchlibrosa", "torchvision",
           "cv2", "resampy", "librosa")


class _Anything:
    """Stands in for any class, function or constant of a stubbed package."""

    def __init__(self, *a, **k):
        pass

    def __call__(self, *a, **k):
        return _Anything()

    def __getattr__(self, name):
        return _Anything()

    def __mro_entries__(self, bases):
        return (object,)


def main() -> int:
    work, avb_src, passt_src = (Path(p) for p in sys.argv[1:4])
    sys.path[:0] = [str(avb_src), str(passt_src)]
    ref_stubs.install(STUBBED, lambda name: _Anything())
    colorlog = types.ModuleType("colorlog")

    class ColoredFormatter(logging.Formatter):  # av-benchmark's format names colour fields
        def __init__(self, *args, **kwargs):
            super().__init__("%(levelname)s %(message)s")

    colorlog.ColoredFormatter = ColoredFormatter
    sys.modules["colorlog"] = colorlog

    import numpy as np
    import torch
    import torchaudio
    from scipy.io import wavfile

    def load_wav(path, *args, **kwargs):
        rate, data = wavfile.read(str(path))
        t = torch.from_numpy(np.asarray(data, dtype=np.float32))
        return (t.T.contiguous() if t.dim() == 2 else t[None]), rate

    torchaudio.load = load_wav
    torch.set_grad_enabled(False)
    params = json.loads((work / "inputs.json").read_text())
    names, duration = params["names"], float(params["duration"])
    synch_path, passt_path = work / "synchformer_state_dict.pth", work / "passt.pt"

    from hear21passt.models.helpers import vit_helpers

    vit_helpers.download_cached_file = lambda url, **kw: str(passt_path)  # the random file, not the URL
    import av_bench.evaluate as av_eval
    import extract_video
    from av_bench.data.audio_dataset import AudioDataset, SynchformerAudioDataset
    from av_bench.extract import encode_audio_with_sync
    from av_bench.synchformer.synchformer import Synchformer
    from hear21passt.base import get_basic_model

    sync_model = Synchformer().eval()
    sync_model.load_state_dict(torch.load(synch_path, weights_only=True))
    # ExtractionModels.sync_mel_spectrogram (its other networks are not needed here)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, win_length=400, hop_length=160,
                                               n_fft=1024, n_mels=128)
    seen_mels = []
    extract_afeats = sync_model.extract_afeats
    sync_model.extract_afeats = lambda x: (seen_mels.append(x.clone()), extract_afeats(x))[1]

    frames = np.load(work / "frames.npz")
    gen_paths = [work / "gen" / f"{n}.wav" for n in names]
    real_paths = [work / "real" / f"{n}.wav" for n in names]
    sync_video, sync_audio = {}, {}
    sync_ds = SynchformerAudioDataset(gen_paths, duration=duration)
    skip_video = (work / "shared_video_features").is_file()
    if skip_video:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from metrics_parity import shared_video_features
    for i, name in enumerate(names):
        if skip_video:  # the same stand-in features on both sides (--video-branch skip)
            sync_video[name] = shared_video_features(name)
        else:
            # VideoDataset's sync transform on frames that are 224 x 224 already: scale, normalise
            x = torch.from_numpy(frames[name][:int(25.0 * duration)]).permute(0, 3, 1, 2).float() / 255.0
            x = (x - 0.5) / 0.5
            sync_video[name] = extract_video.encode_video_with_sync(sync_model, x[None])[0]
        wav, _ = sync_ds.sample(i)
        sync_audio[name] = encode_audio_with_sync(sync_model, wav[None], mel)[0]

    passt_model = get_basic_model(mode="all").eval()

    def passt(paths):
        ds = AudioDataset(paths, audio_length=duration, sr=32_000)
        emb, logits = {}, {}
        for p in paths:
            wav = ds.read_from_file(p).float()  # (1, N), as the loader's squeeze(1) leaves it
            wav = wav[..., :320000] if wav.size(-1) >= 320000 else torch.nn.functional.pad(
                wav, (0, 320000 - wav.size(-1)))
            out = passt_model(wav)
            logits[p.stem], emb[p.stem] = out[0, :527], out[0, 527:]
        return emb, logits

    real_emb, real_logits = passt(real_paths)
    gen_emb, gen_logits = passt(gen_paths)

    g = torch.Generator().manual_seed(0)  # PANNs / VGGish stand-ins: evaluate() needs their files
    gt, pred = work / "ref_cache" / "gt", work / "ref_cache" / "pred"
    for folder, emb, logits in ((gt, real_emb, real_logits), (pred, gen_emb, gen_logits)):
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({n: {"2048": torch.randn(2048, generator=g), "logits": torch.randn(527, generator=g)}
                    for n in names}, folder / "pann_features.pth")
        torch.save({n: torch.randn(2, 128, generator=g) for n in names}, folder / "vggish_features.pth")
        torch.save(emb, folder / "passt_features_embed.pth")
        torch.save(logits, folder / "passt_logits.pth")
    torch.save(sync_video, gt / "synchformer_video.pth")
    torch.save(sync_audio, pred / "synchformer_audio.pth")
    av_eval.device = "cpu"
    av_eval._syncformer_ckpt_path = synch_path
    metrics = av_eval.evaluate(gt, pred, num_samples=1, skip_clap=True)

    grid = av_eval.make_class_grid(-2, 2, 21)
    offsets, arrays = {}, {}
    for name in names:
        v, a = sync_video[name][None], sync_audio[name][None]
        first = sync_model.compare_v_a(v[:, :14], a[:, :14])
        last = sync_model.compare_v_a(v[:, -14:], a[:, -14:])
        offsets[name] = [grid[int(first.argmax())].item(), grid[int(last.argmax())].item()]
        arrays[f"logits_first_{name}"] = first[0].numpy()
        arrays[f"logits_last_{name}"] = last[0].numpy()
        arrays[f"video_{name}"] = sync_video[name].numpy()
        arrays[f"audio_{name}"] = sync_audio[name].numpy()
        for kind, emb, logits in (("real", real_emb, real_logits), ("gen", gen_emb, gen_logits)):
            arrays[f"passt_emb_{kind}_{name}"] = emb[name].numpy()
            arrays[f"passt_logits_{kind}_{name}"] = logits[name].numpy()
    arrays[f"mels_{names[0]}"] = seen_mels[0][0, :, 0].numpy()  # (S, 128, 66) of the first clip
    np.savez(work / "ref.npz", **arrays)
    (work / "ref.json").write_text(json.dumps({
        "DeSync": float(metrics["DeSync"]), "FD-PASST": float(metrics["FD-PASST"]),
        "KL-PASST-softmax": float(metrics["KL-PASST-softmax"]), "offsets": offsets}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
