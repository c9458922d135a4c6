"""LAION-CLAP text-audio score, computed the way av-benchmark's "LAION-CLAP-Score" is.

av-benchmark runs ``laion_clap.CLAP_Module(enable_fusion=False, amodel="HTSAT-base")`` with the
``music_speech_audioset_epoch_15_esc_89.98.pt`` checkpoint. Here the same network is
``transformers``' :class:`~transformers.ClapModel` (HTSAT audio encoder + RoBERTa text encoder),
configured as HTSAT-base and filled strictly from the released checkpoint's tensors
(:func:`convert_state_dict`); the log-mel front end that laion_clap's HTSAT runs inside the model
(torchlibrosa) is :func:`log_mel` here, with torchaudio's Slaney mel filterbank (librosa's).

The audio path, step by step (av-benchmark's AudioDataset, then laion_clap's
``get_audio_embedding_from_data(..., use_tensor=True)``):

1. mono, DC removed, resampled to 48 kHz (``torchaudio.transforms.Resample``), cut to the clip's
   duration (:func:`prepare_audio`);
2. fitted to 480000 samples (:func:`fit_length`): shorter clips are repeated whole as often as
   they fit and zero-padded ("repeatpad"); longer ones are cut to a 10 s window ("rand_trunc").
   laion_clap draws that window with NumPy's global random state; here it comes from a generator
   seeded with ``crop_seed``, so the same clip always gets the same window;
3. power spectrogram (FFT 1024, hop 480, Hann, centred, reflect padding), 64 Slaney mel bands
   from 50 Hz to 14 kHz, ``10 * log10(max(x, 1e-10))`` (ref 1.0, no top_db);
4. HTSAT (its batch norm, Swin stages, average pool), the audio projection, L2 normalisation.

Text: RoBERTa's byte-level BPE tokenizer (``roberta-base``'s vocab.json and merges.txt), padded
and truncated to 77 tokens, the RoBERTa encoder's pooled output, the text projection, L2
normalisation. The score of a clip is the cosine similarity of its audio and prompt embeddings;
the set's score is their mean (higher is better).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import SelvaError

CLAP_RATE = 48000
CLAP_SAMPLES = 480000  # 10 s, laion_clap's max_len
N_FFT = 1024
HOP = 480
N_MELS = 64
F_MIN = 50.0
F_MAX = 14000.0
AMIN = 1e-10
TEXT_TOKENS = 77
CHECKPOINT_NAME = "music_speech_audioset_epoch_15_esc_89.98.pt"


@dataclass(frozen=True)
class ClapArch:
    """The HTSAT + RoBERTa sizes (defaults: HTSAT-base and roberta-base, the released checkpoint)."""

    patch_embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 12, 2)
    audio_heads: tuple[int, ...] = (4, 8, 16, 32)
    text_hidden: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate: int = 3072
    vocab_size: int = 50265
    projection_dim: int = 512


# the architecture ClapScorer.from_files builds (tests swap in a tiny one, as for Synchformer)
CLAP_ARCH = ClapArch()


def clap_config(arch: ClapArch = ClapArch()):
    from transformers import ClapConfig

    audio = dict(patch_embeds_hidden_size=arch.patch_embed_dim,
                 hidden_size=arch.patch_embed_dim * 2 ** (len(arch.depths) - 1),
                 depths=list(arch.depths), num_attention_heads=list(arch.audio_heads), window_size=8,
                 spec_size=256, num_mel_bins=N_MELS, patch_size=4, patch_stride=[4, 4], enable_fusion=False,
                 num_classes=527, layer_norm_eps=1e-5, mlp_ratio=4.0, qkv_bias=True)
    # roberta-base's own settings (ClapTextConfig's layer_norm_eps default 1e-12 is not RoBERTa's)
    text = dict(vocab_size=arch.vocab_size, hidden_size=arch.text_hidden, num_hidden_layers=arch.text_layers,
                num_attention_heads=arch.text_heads, intermediate_size=arch.text_intermediate,
                max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1,
                bos_token_id=0, eos_token_id=2, hidden_act="gelu")
    return ClapConfig(text_config=text, audio_config=audio, projection_dim=arch.projection_dim,
                      projection_hidden_act="relu")


# ----------------------------------------------------------------------------- audio front end
def prepare_audio(wave: torch.Tensor, rate: int, duration: float, target_rate: int = CLAP_RATE) -> torch.Tensor:
    """av-benchmark's AudioDataset (48 kHz for CLAP, 32 kHz for PaSST): mono, DC removed,
    resampled to ``target_rate``, cut to ``duration``: (N,)."""
    wave = wave.float()
    if wave.dim() == 2:
        wave = wave.mean(dim=0)
    wave = wave - wave.mean()
    if rate != target_rate:
        import torchaudio

        # the Resample module av-benchmark's loaders use (its kernel differs from
        # functional.resample's in the last digits for rates like 22.05 kHz)
        wave = torchaudio.transforms.Resample(rate, target_rate)(wave)
    return wave[:int(target_rate * duration)]


def fit_length(wave: torch.Tensor, samples: int = CLAP_SAMPLES, crop_seed: int = 0) -> torch.Tensor:
    """laion_clap's non-fusion fitting to ``samples``: repeat-pad a short clip, crop a long one.

    The crop window of a long clip is drawn from ``numpy.random.default_rng(crop_seed)`` (laion_clap
    uses NumPy's unseeded global state), so scores are repeatable.
    """
    n = wave.shape[-1]
    if n == 0:
        raise SelvaError("CLAP got an empty clip (0 samples): the clip is shorter than one sample at 48 kHz.")
    if n > samples:
        start = crop_start(n, samples, crop_seed)
        return wave[start:start + samples]
    if n < samples:
        wave = wave.repeat(samples // n)
        wave = F.pad(wave, (0, samples - wave.shape[-1]))
    return wave


def crop_start(n: int, samples: int = CLAP_SAMPLES, crop_seed: int = 0) -> int:
    """Where the 10 s window of an ``n``-sample clip starts (uniform over every start, seeded)."""
    import numpy as np

    return int(np.random.default_rng(crop_seed).integers(0, n - samples + 1))


_MEL_CACHE: dict[Any, torch.Tensor] = {}


def mel_filterbank(device=None) -> torch.Tensor:
    """(513, 64) Slaney-scale, Slaney-normalised triangles: librosa.filters.mel's defaults."""
    key = str(device)
    if key not in _MEL_CACHE:
        import torchaudio

        _MEL_CACHE[key] = torchaudio.functional.melscale_fbanks(
            N_FFT // 2 + 1, F_MIN, F_MAX, N_MELS, CLAP_RATE, norm="slaney", mel_scale="slaney").to(device)
    return _MEL_CACHE[key]


def log_mel(wave: torch.Tensor) -> torch.Tensor:
    """(B, N) 48 kHz audio -> (B, 1, frames, 64) log-mel in dB, as HTSAT's torchlibrosa front end."""
    window = torch.hann_window(N_FFT, periodic=True, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(wave, N_FFT, HOP, N_FFT, window, center=True, pad_mode="reflect", return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2  # (B, 513, frames)
    mel = power.transpose(1, 2) @ mel_filterbank(wave.device).to(wave.dtype)
    # ref = 1.0, so the reference term 10 * log10(max(amin, ref)) is 0; no top_db clipping
    return (10.0 * torch.log10(torch.clamp(mel, min=AMIN)))[:, None]


# ------------------------------------------------------------------------------- checkpoint
# checkpoint tensors the embeddings never use: the AudioSet classification head, the training-only
# MLP transforms, and front-end constants this module recomputes (torchlibrosa's STFT kernels and
# mel matrix; the Swin attention masks; transformers' position-id buffer)
_UNUSED_PREFIXES = ("audio_branch.tscam_conv.", "audio_branch.head.", "audio_transform.", "text_transform.",
                    "audio_branch.spectrogram_extractor.", "audio_branch.logmel_extractor.")
_UNUSED_EXACT = ("text_branch.embeddings.position_ids",)
_FRONT_END_SHAPES = {"audio_branch.spectrogram_extractor.stft.conv_real.weight": (N_FFT // 2 + 1, 1, N_FFT),
                     "audio_branch.spectrogram_extractor.stft.conv_imag.weight": (N_FFT // 2 + 1, 1, N_FFT),
                     "audio_branch.logmel_extractor.melW": (N_FFT // 2 + 1, N_MELS)}
# our model's buffers that the checkpoint does not carry (computed from the config)
_DERIVED_BUFFERS = ("text_model.embeddings.position_ids", "text_model.embeddings.token_type_ids")


def _derived(key: str) -> bool:
    return key in _DERIVED_BUFFERS or key.endswith("relative_position_index")


# laion HTSAT -> transformers ClapAudioEncoder names in a Swin block (".attn.proj." before ".mlp.fc2.")
_BLOCK_RENAMES = ((".norm1.", ".layernorm_before."), (".norm2.", ".layernorm_after."),
                  (".attn.relative_position_bias_table", ".attention.self.relative_position_bias_table"),
                  (".attn.relative_position_index", ".attention.self.relative_position_index"),
                  (".attn.proj.", ".attention.output.dense."), (".mlp.fc1.", ".intermediate.dense."),
                  (".mlp.fc2.", ".output.dense."), (".attn.qkv.", ".attention.self.qkv."))


def _laion_audio_names(name: str) -> tuple[str, int]:
    """transformers ClapAudioEncoder name -> (laion HTSAT name, rows multiplier of a fused qkv)."""
    for part in ("query", "key", "value"):
        if f".attention.self.{part}." in name:
            return name.replace(f".attention.self.{part}.", ".attn.qkv."), 3
    if name.startswith("batch_norm."):
        return "bn0." + name[len("batch_norm."):], 1
    for old, new in _BLOCK_RENAMES:
        if new in name:
            return name.replace(new, old, 1), 1
    return name, 1


def released_layout(arch: ClapArch = ClapArch()) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of laion_clap's checkpoint for ``arch`` (without ``module.``):
    our model's tensors under laion_clap's names, plus those the embeddings do not use."""
    with torch.device("meta"):
        own = build_clap(arch=arch).state_dict()
    layout: dict[str, tuple[int, ...]] = {}
    for key, value in own.items():
        shape = tuple(value.shape)
        if key.startswith("audio_model.audio_encoder."):
            name, mult = _laion_audio_names(key[len("audio_model.audio_encoder."):])
            layout["audio_branch." + name] = shape if mult == 1 else (shape[0] * mult,) + shape[1:]
        elif key.startswith("text_model."):
            if not key.endswith("token_type_ids"):
                layout["text_branch." + key[len("text_model."):]] = shape
        elif key.startswith(("audio_projection.", "text_projection.")):
            layout[key.replace(".linear1.", ".0.").replace(".linear2.", ".2.")] = shape
        else:
            layout[key] = shape
    width = arch.patch_embed_dim * 2 ** (len(arch.depths) - 1)
    layout.update(_FRONT_END_SHAPES)
    # 256 px image, 4 px patches, 3 halvings, 4 time strips stacked over frequency
    layout.update({"audio_branch.tscam_conv.weight": (527, width, 256 // 4 // 8 // 4, 3),
                   "audio_branch.tscam_conv.bias": (527,),
                   "audio_branch.head.weight": (527, 527), "audio_branch.head.bias": (527,)})
    for head in ("audio_transform", "text_transform"):
        for idx in (0, 3):
            layout[f"{head}.sequential.{idx}.weight"] = (arch.projection_dim, arch.projection_dim)
            layout[f"{head}.sequential.{idx}.bias"] = (arch.projection_dim,)
    # the shifted-window masks of every odd block of a stage wider than one 8 x 8 window
    for stage, blocks in enumerate(arch.depths):
        side = 64 // 2 ** stage
        if side > 8:
            for b in range(1, blocks, 2):
                layout[f"audio_branch.layers.{stage}.blocks.{b}.attn_mask"] = ((side // 8) ** 2, 64, 64)
    return layout


def _unwrap(checkpoint: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise SelvaError(f"{source} is not a LAION-CLAP checkpoint (expected a state dict, found "
                         f"{type(checkpoint).__name__}). Download {CHECKPOINT_NAME} again.")
    # saved from DistributedDataParallel: every name starts with "module."
    return {(k[7:] if k.startswith("module.") else k): v for k, v in checkpoint.items()}


def _audio_name(rest: str) -> Optional[str]:
    """laion HTSAT name (after ``audio_branch.``) -> transformers ClapAudioEncoder name (qkv split later)."""
    if rest.startswith("bn0."):
        return "batch_norm." + rest[4:]
    if rest.startswith(("patch_embed.", "norm.")) or ".downsample." in rest:
        return rest
    if ".attn_mask" in rest or not rest.startswith("layers."):
        return None
    for old, new in _BLOCK_RENAMES:
        if old in rest:
            return rest.replace(old, new)
    return None


def convert_state_dict(checkpoint: Any, source: str = "CLAP checkpoint") -> dict[str, torch.Tensor]:
    """The released laion_clap checkpoint -> a ``ClapModel`` state dict. Every tensor is either
    mapped or one of the known unused ones; anything else is an error naming it."""
    sd = _unwrap(checkpoint, source)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            unknown.append(key)
            continue
        if key in _FRONT_END_SHAPES and tuple(value.shape) != _FRONT_END_SHAPES[key]:
            raise SelvaError(f"{source}: {key} has shape {tuple(value.shape)}, expected "
                             f"{_FRONT_END_SHAPES[key]}: this checkpoint's front end is not HTSAT's "
                             f"48 kHz one (FFT {N_FFT}, {N_MELS} mel bands). Use {CHECKPOINT_NAME}.")
        if key in _UNUSED_EXACT or key.startswith(_UNUSED_PREFIXES):
            continue
        if key in ("logit_scale_a", "logit_scale_t"):
            out[key] = value
        elif key.startswith("audio_projection.") or key.startswith("text_projection."):
            head, idx, param = key.split(".")
            layer = {"0": "linear1", "2": "linear2"}.get(idx)
            if layer is None:
                unknown.append(key)
            else:
                out[f"{head}.{layer}.{param}"] = value
        elif key.startswith("text_branch."):
            out["text_model." + key[len("text_branch."):]] = value
        elif key.startswith("audio_branch."):
            rest = key[len("audio_branch."):]
            if ".attn_mask" in rest:
                continue  # the shifted-window masks, recomputed by the model
            name = _audio_name(rest)
            if name is None:
                unknown.append(key)
            elif ".attention.self.qkv." in name:
                q, k, v = value.chunk(3, dim=0)  # laion's fused qkv: rows are [q; k; v]
                for part, tensor in zip(("query", "key", "value"), (q, k, v)):
                    out["audio_model.audio_encoder." + name.replace(".qkv.", f".{part}.")] = tensor
            else:
                out["audio_model.audio_encoder." + name] = value
        else:
            unknown.append(key)
    if unknown:
        raise SelvaError(f"{source} has {len(unknown)} tensor(s) a LAION-CLAP HTSAT-base checkpoint does not "
                         f"have: {', '.join(unknown[:6])}{' ...' if len(unknown) > 6 else ''}. Use "
                         f"{CHECKPOINT_NAME} (the non-fusion HTSAT-base + RoBERTa model).")
    return out


def build_clap(checkpoint: Any = None, *, arch: ClapArch = ClapArch(), source: str = "CLAP checkpoint"):
    """A ``ClapModel`` for ``arch``; with ``checkpoint``, every parameter is loaded from it (strict)."""
    import contextlib
    import io

    from transformers import ClapModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = ClapModel(clap_config(arch))
    finally:
        hf_logging.set_verbosity(verbosity)
    if checkpoint is not None:
        sd = convert_state_dict(checkpoint, source)
        own = model.state_dict()
        wrong = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in sd.items()
                 if k in own and own[k].shape != v.shape]
        if wrong:
            raise SelvaError(f"{source} does not fit LAION-CLAP HTSAT-base: {len(wrong)} tensor(s) of another "
                             f"size, e.g. {'; '.join(wrong[:3])}. Use {CHECKPOINT_NAME}.")
        # the Swin relative-position indices are fixed by the window size: check, then keep ours
        for key in [k for k in sd if k.endswith("relative_position_index")]:
            value = sd.pop(key)
            if key in own and not value.is_meta and not torch.equal(value.to(own[key].dtype), own[key]):
                raise SelvaError(f"{source}: {key} is not the index of an 8 x 8 attention window; "
                                 f"this is not an HTSAT-base checkpoint. Use {CHECKPOINT_NAME}.")
        result = model.load_state_dict(sd, strict=False)
        missing = [k for k in result.missing_keys if not _derived(k)]
        if missing or result.unexpected_keys:
            raise SelvaError(f"{source} does not fit LAION-CLAP HTSAT-base: missing "
                             f"{', '.join(missing[:6]) or 'nothing'}; not in the model "
                             f"{', '.join(result.unexpected_keys[:6]) or 'nothing'}. Use {CHECKPOINT_NAME}.")
    return model.eval()


def load_tokenizer(tokenizer_dir: Path):
    """RoBERTa's byte-level BPE tokenizer from a folder holding ``vocab.json`` and ``merges.txt``."""
    from transformers import RobertaTokenizer

    tokenizer_dir = Path(tokenizer_dir)
    missing = [f for f in ("vocab.json", "merges.txt") if not (tokenizer_dir / f).is_file()]
    if missing:
        raise SelvaError(f"{tokenizer_dir} lacks {', '.join(missing)} of the roberta-base tokenizer "
                         f"(from https://huggingface.co/FacebookAI/roberta-base).")
    # from_pretrained on the folder: the constructor's argument names differ between transformers 4 and 5
    return RobertaTokenizer.from_pretrained(str(tokenizer_dir))


class ClapScorer:
    """Audio and prompt embeddings (512-d, unit length) and their cosine similarity."""

    def __init__(self, model: torch.nn.Module, tokenizer, device: Union[str, torch.device] = "cpu",
                 crop_seed: int = 0):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.crop_seed = crop_seed

    @classmethod
    def from_files(cls, checkpoint: Path, tokenizer_dir: Path,
                   device: Union[str, torch.device] = "cpu") -> "ClapScorer":
        from ..weights import load_checkpoint

        return cls(build_clap(load_checkpoint(checkpoint), arch=CLAP_ARCH, source=str(checkpoint)),
                   load_tokenizer(tokenizer_dir), device)

    def audio_embedding(self, wave: torch.Tensor, rate: int, duration: float) -> torch.Tensor:
        """One clip (C, N) or (N,) at ``rate`` -> (512,) on the CPU."""
        x = fit_length(prepare_audio(wave, rate, duration), crop_seed=self.crop_seed)
        return self.audio_embeddings_48k(x[None])[0]

    def audio_embeddings_48k(self, waves: torch.Tensor) -> torch.Tensor:
        """(B, 480000) prepared 48 kHz audio -> (B, 512)."""
        with torch.inference_mode():
            feats = log_mel(waves.float().to(self.device))
            pooled = self.model.audio_model(input_features=feats).pooler_output
            return F.normalize(self.model.audio_projection(pooled), dim=-1).float().cpu()

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Prompts -> (B, 512)."""
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=TEXT_TOKENS,
                                return_tensors="pt")
        with torch.inference_mode():
            pooled = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                           attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
            return F.normalize(self.model.text_projection(pooled), dim=-1).float().cpu()


def clap_scores(audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each audio embedding with its paired text embedding: (B,)."""
    return F.cosine_similarity(text.float(), audio.float(), dim=-1)
