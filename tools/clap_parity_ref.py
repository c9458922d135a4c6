#!/usr/bin/env python3
"""The reference half of ``tools/clap_parity.py``: laion_clap's ``CLAP_Module`` as av-benchmark runs it.

Runs inside the reference environment (torch, torchaudio, transformers < 5, librosa, torchlibrosa,
timm, h5py, pandas, scikit-learn, braceexpand, webdataset, wget, ftfy, scipy) with the exported
sources of hkchengrex/CLAP (the laion_clap fork av-benchmark installs) and hkchengrex/av-benchmark
on ``sys.path``. What is replaced, and why none of it computes a compared number:

* ``torchvision`` and ``pytorchvideo`` are empty stand-ins: laion_clap and av-benchmark's data
  module import them for image and ImageBind code only (torchvision's C extension does not load
  next to a CPU-only torch);
* ``RobertaModel.from_pretrained("roberta-base")`` builds the same RobertaModel from roberta-base's
  configuration without downloading its weights: ``load_ckpt`` overwrites every one of them;
* ``RobertaTokenizer.from_pretrained("roberta-base")`` reads vocab.json / merges.txt from
  ``WORK/tokenizer`` (written by the tool; there is no network here), and the BERT/BART
  tokenizers laion_clap's training module builds at import time (never used) are placeholders;
* ``torchaudio.load`` reads the float WAV inputs with SciPy (newer torchaudio needs torchcodec).

Everything that computes a compared number is theirs: av-benchmark's ``AudioDataset`` (48 kHz),
laion_clap's ``CLAP_Module(enable_fusion=False, amodel="HTSAT-base")``, ``load_ckpt``,
``get_audio_embedding_from_data(..., use_tensor=True)``, ``get_text_embedding([caption],
use_tensor=True)``, av-benchmark's ``unroll_paired_dict`` and its score expression
(``av_bench/evaluate.py``: ``torch.cosine_similarity(text, audio, dim=-1).mean()``).

    python tools/clap_parity_ref.py weights WORK CLAP_SRC AV_BENCH_SRC   # writes WORK/clap.pt
    python tools/clap_parity_ref.py run WORK CLAP_SRC AV_BENCH_SRC       # writes WORK/ref.npz, ref.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import ref_stubs  # this folder: the script runs from here

STUBBED = ("torchvision", "pytorchvideo")


class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return f"stub_{name}"  # distinct values: timm keys a dict by InterpolationMode members


class _Anything(metaclass=_Meta):
    def __init__(self, *a, **k):
        raise RuntimeError("a stubbed torchvision/pytorchvideo object was used")


def _setup(work: Path, clap_src: Path, avb_src: Path):
    ref_stubs.install(STUBBED, lambda name: _Anything)
    sys.path[:0] = [str(clap_src), str(avb_src), str(Path(__file__).resolve().parent)]
    import numpy as np
    import torch
    import torchaudio
    import transformers
    from scipy.io import wavfile

    roberta_base = transformers.RobertaConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                                              num_attention_heads=12, intermediate_size=3072,
                                              max_position_embeddings=514, type_vocab_size=1,
                                              layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)

    def roberta_model(cls, name, *a, **k):
        assert name == "roberta-base", name
        return cls(roberta_base)

    tokenizer_from_pretrained = transformers.RobertaTokenizer.from_pretrained.__func__

    def roberta_tokenizer(cls, name, *a, **k):
        assert name == "roberta-base", name
        return tokenizer_from_pretrained(cls, str(work / "tokenizer"))

    transformers.RobertaModel.from_pretrained = classmethod(roberta_model)
    transformers.RobertaTokenizer.from_pretrained = classmethod(roberta_tokenizer)
    for cls in (transformers.BertTokenizer, transformers.BartTokenizer):
        cls.from_pretrained = classmethod(lambda c, name, *a, **k: None)

    def load_wav(path, *args, **kwargs):
        rate, data = wavfile.read(str(path))
        t = torch.from_numpy(np.asarray(data, dtype=np.float32))
        return (t.T.contiguous() if t.dim() == 2 else t[None]), rate

    torchaudio.load = load_wav
    torch.set_grad_enabled(False)
    import laion_clap

    model = laion_clap.CLAP_Module(enable_fusion=False, amodel="HTSAT-base", device="cpu").eval()
    return model


def write_weights(work: Path, model) -> None:
    """Every parameter random (``clap_parity_weights.parity_value``); buffers and torchlibrosa's
    frozen STFT / mel matrices stay as laion_clap builds them, as in the released file."""
    import torch
    from clap_parity_weights import parity_value

    own = model.model.state_dict()
    frozen = {n for n, p in model.model.named_parameters() if not p.requires_grad}
    sd = {}
    for key, value in own.items():
        rule = parity_value(key, tuple(value.shape))
        sd[key] = value.clone() if (rule is None or key in frozen) else rule.to(value.dtype)
    # the released file carries transformers' old position-id buffer (laion_clap drops it on load)
    sd["text_branch.embeddings.position_ids"] = torch.arange(514)[None]
    torch.save({"epoch": 15, "state_dict": {"module." + k: v for k, v in sd.items()}}, work / "clap.pt")
    layout = {k: list(v.shape) for k, v in sd.items()}
    (work / "ref_layout.json").write_text(json.dumps(layout))


def run(work: Path, model) -> None:
    import numpy as np
    import torch
    from av_bench.data.audio_dataset import AudioDataset
    from av_bench.utils import unroll_paired_dict

    params = json.loads((work / "inputs.json").read_text())
    model.load_ckpt(str(work / "clap.pt"), verbose=False)
    frozen_diff = {}
    fresh = _fresh_front_end()
    for key, value in fresh.items():
        frozen_diff[key] = float((model.model.state_dict()[key] - value).abs().max())

    # laion_clap crops clips longer than 10 s at np.random.randint(0, overflow + 1); ours draws the
    # start from a seeded generator: hand laion_clap the same start to compare the rest
    starts = list(params["crop_starts"])
    real_randint = np.random.randint
    np.random.randint = lambda low, high=None, *a, **k: starts.pop(0)
    seen_mels = []
    htsat = model.model.audio_branch
    logmel = htsat.logmel_extractor.forward
    htsat.logmel_extractor.forward = lambda x: (lambda y: (seen_mels.append(y.clone()), y)[1])(logmel(x))
    pooled = []
    encode = model.model.encode_audio
    model.model.encode_audio = lambda audio, device: (lambda out: (pooled.append(out["embedding"].clone()), out)[1])(
        encode(audio, device))

    audio_feats, arrays = {}, {}
    for clip in params["clips"]:
        path = work / "audio" / f"{clip['name']}.wav"
        ds = AudioDataset([path], audio_length=clip["duration"], sr=48_000)
        wav, name = ds[0]
        wav = wav[None].squeeze(1)  # the DataLoader's batch of one, squeezed as extract.py does
        emb = model.get_audio_embedding_from_data(wav, use_tensor=True).cpu()
        audio_feats[name] = emb[0].squeeze()
        arrays[f"audio_emb_{name}"] = emb[0].numpy()
        arrays[f"pooled_{name}"] = pooled[-1][0].numpy()
        arrays[f"mel_{name}"] = seen_mels[-1][0, 0].numpy()
    np.random.randint = real_randint
    text_feats = {}
    for clip in params["clips"]:
        emb = model.get_text_embedding([clip["caption"]], use_tensor=True)
        text_feats[clip["name"]] = emb.cpu().squeeze()
        arrays[f"text_emb_{clip['name']}"] = emb[0].numpy()
        arrays[f"tokens_{clip['name']}"] = model.tokenizer([clip["caption"]])["input_ids"][0].numpy()
    paired_text, paired_audio, unpaired = unroll_paired_dict(text_feats, audio_feats)
    score = torch.cosine_similarity(paired_text, paired_audio, dim=-1).mean()  # av_bench/evaluate.py
    per_clip = {n: float(torch.cosine_similarity(text_feats[n], audio_feats[n], dim=-1)) for n in text_feats}
    np.savez(work / "ref.npz", **arrays)
    (work / "ref.json").write_text(json.dumps({"LAION-CLAP-Score": float(score), "per_clip": per_clip,
                                               "unpaired": list(unpaired), "front_end_file_vs_fresh": frozen_diff},
                                              indent=2))


def _fresh_front_end():
    """torchlibrosa's STFT kernels and mel matrix as a fresh HTSAT-base builds them."""
    from laion_clap.clap_module.htsat import Spectrogram, LogmelFilterBank

    spec = Spectrogram(n_fft=1024, hop_length=480, win_length=1024, window="hann", center=True,
                       pad_mode="reflect", freeze_parameters=True)
    mel = LogmelFilterBank(sr=48000, n_fft=1024, n_mels=64, fmin=50, fmax=14000, ref=1.0, amin=1e-10,
                           top_db=None, freeze_parameters=True)
    prefix = "audio_branch."
    return {prefix + "spectrogram_extractor." + k: v for k, v in spec.state_dict().items()} | {
        prefix + "logmel_extractor." + k: v for k, v in mel.state_dict().items()}


def main() -> int:
    mode, work, clap_src, avb_src = sys.argv[1], *(Path(p) for p in sys.argv[2:5])
    model = _setup(work, clap_src, avb_src)
    if mode == "weights":
        write_weights(work, model)
    elif mode == "run":
        run(work, model)
    else:
        raise SystemExit(f"unknown mode {mode}: weights or run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
