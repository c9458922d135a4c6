"""Score adapters on a held-out dataset: generate every clip with every model, then measure.

Generated clips are kept under ``<out_dir>/audio/<model>/<clip>.safetensors`` (float32, with the
settings they were made with in their metadata) and reused by a later run with the same settings,
so an interrupted evaluation resumes where it stopped. A clip made with other settings is never
overwritten: the run stops and says so.
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..adapters.compare import AdapterEntry
from ..artifacts import load_safetensors, write_safetensors
from ..errors import SelvaError
from ..features import Features, content_hash
from ..hooks import Hooks, or_default
from . import desync as desync_mod
from .fd import compute_fd
from .kl import kl_per_pair
from .options import ALL_METRICS, DIRECTION, EvalOptions, parse_metrics  # noqa: F401 (re-exported)
from .spectral import clip_spectral

log = logging.getLogger(__name__)

BASE_NAME = "base"


@dataclass
class HeldOutClip:
    name: str
    prompt: str
    features: Features
    real_wave: torch.Tensor  # (C, N) at real_rate, cut to the features' duration
    real_rate: int
    digest: str  # features file + audio file + prompt


def load_held_out(pipe, data_dir: Path, hooks: Optional[Hooks] = None) -> list[HeldOutClip]:
    """The dataset folder's clips (the trainers' layout), prompts applied, real audio read."""
    from ..train.audio_files import read_audio
    from ..datasets import read_dataset
    from ..train.dataset import file_digest, folder_prompt, load_clip_features

    hooks = or_default(hooks)
    files = read_dataset(data_dir)
    fallback = folder_prompt(data_dir)
    clips = []
    for i, f in enumerate(files, 1):
        features = load_clip_features(f, pipe.variant.name)
        prompt = f.caption if f.caption is not None else (features.prompt or fallback)
        if prompt != features.prompt:
            features = pipe.encoding.features_for_prompt(features, prompt, hooks)
        wave, rate = read_audio(f.audio_path)
        wave = wave.float()[:, :int(round(features.duration * rate))]
        digest = content_hash([file_digest(f.features_path), file_digest(f.audio_path), prompt])
        clips.append(HeldOutClip(f.stem, prompt, features, wave, int(rate), digest))
        hooks.step("evaluate: read clips", i, len(files))
    return clips


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def model_identity(entry: AdapterEntry) -> dict[str, Any]:
    from ..train.dataset import file_digest

    if entry.path is None:
        return {"adapter": None}
    return {"adapter": str(entry.path), "blake2b": file_digest(entry.path), "strength": entry.strength}


def _generation_key(pipe, entry_id: dict, clip: HeldOutClip, options: EvalOptions) -> str:
    return content_hash(["selva-eval-clip", 1, pipe.variant.name, str(pipe.dtype), entry_id, clip.digest,
                         options.steps, options.cfg_strength, options.seed, options.negative_prompt])


def _load_generated(path: Path, key: str) -> Optional[torch.Tensor]:
    if not path.is_file():
        return None
    try:
        tensors, meta = load_safetensors(path, "generated clip")
        wave = tensors["wave"]
    except (SelvaError, KeyError) as e:
        raise SelvaError(f"{path} is not a readable generated clip ({e}); delete it to generate it again.") from e
    if meta.get("key") != key:
        raise SelvaError(f"{path} was generated with other settings, adapter or data. Use another "
                         f"--out-dir, or delete {path.parent} to generate those clips again.")
    return wave


def generate_all(pipe, clips: Sequence[HeldOutClip], entries: Sequence[AdapterEntry], out_dir: Path,
                 options: EvalOptions, hooks: Optional[Hooks] = None) -> dict[str, dict[str, torch.Tensor]]:
    """Every model's clips (generated now or reused): {model: {clip: (N,) float32}}."""
    from ..adapters.patch import LoraPatch

    hooks = or_default(hooks)
    total, done = len(entries) * len(clips), 0
    out: dict[str, dict[str, torch.Tensor]] = {}
    for entry in entries:
        view = pipe if entry.adapter is None else pipe.with_patches([LoraPatch(entry.adapter, entry.strength)])
        ident = model_identity(entry)
        waves = out.setdefault(entry.name, {})
        for clip in clips:
            hooks.check()
            path = Path(out_dir) / "audio" / _safe(entry.name) / f"{_safe(clip.name)}.safetensors"
            key = _generation_key(pipe, ident, clip, options)
            wave = _load_generated(path, key)
            if wave is None:
                wave = view.generate(clip.features, negative_prompt=options.negative_prompt,
                                     steps=options.steps, cfg_strength=options.cfg_strength,
                                     seed=options.seed, hooks=hooks)[0, 0].float().cpu()
                write_safetensors(path, {"wave": wave}, {"format": "selva-eval-clip", "key": key,
                                                         "sample_rate": str(pipe.sample_rate)})
            else:
                log.info("Reusing %s", path)
            waves[clip.name] = wave
            done += 1
            hooks.step("evaluate: generate", done, total)
    return out


@dataclass
class MetricNetworks:
    desync: Optional[desync_mod.DesyncScorer] = None
    passt: Any = None  # PasstEmbedder
    clap: Any = None  # ClapScorer


def load_networks(metrics: Sequence[str], paths: dict[str, Path], device="cpu") -> MetricNetworks:
    nets = MetricNetworks()
    if "desync" in metrics:
        nets.desync = desync_mod.DesyncScorer.from_file(paths["synchformer"], device)
    if "fd" in metrics or "kl" in metrics:
        from .passt import PasstEmbedder

        nets.passt = PasstEmbedder.from_file(paths["passt"], device)
    if "clap" in metrics:
        from .clap import ClapScorer

        nets.clap = ClapScorer.from_files(paths["clap"], paths["roberta_tokenizer"], device)
    return nets


def _mean(values: dict[str, Optional[float]]) -> Optional[float]:
    scored = [v for v in values.values() if v is not None]
    return sum(scored) / len(scored) if scored else None


def score_all(clips: Sequence[HeldOutClip], generated: dict[str, dict[str, torch.Tensor]], rate: int,
              metrics: Sequence[str], nets: MetricNetworks,
              hooks: Optional[Hooks] = None) -> dict[str, dict[str, Any]]:
    """{model: {metric: {"mean", "per_clip", "unscored", ...}}} for every model and metric."""
    hooks = or_default(hooks)
    video_feats: dict[str, Any] = {}
    real_passt: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    prompt_emb: dict[str, torch.Tensor] = {}
    for clip in clips:
        hooks.check()
        if nets.clap is not None:  # the prompt each clip was generated with
            prompt_emb[clip.name] = nets.clap.text_embeddings([clip.prompt])[0]
        f = clip.features
        if nets.desync is not None:
            dur = min(f.duration, f.sync_frames_u8.shape[0] / desync_mod.VIDEO_FPS)
            video_feats[clip.name] = nets.desync.video_features(f.sync_frames_u8, dur)
        if nets.passt is not None:
            real_passt[clip.name] = nets.passt(clip.real_wave, clip.real_rate, f.duration)
    results: dict[str, dict[str, Any]] = {}
    total, done = len(generated) * len(clips), 0
    for model, waves in generated.items():
        per: dict[str, Any] = {}
        desync_clips: dict[str, desync_mod.ClipDesync] = {}
        gen_passt: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        spectral: dict[str, dict[str, float]] = {}
        clap: dict[str, Optional[float]] = {}
        clap_unscored: dict[str, str] = {}
        for clip in clips:
            hooks.check()
            wave, f = waves[clip.name], clip.features
            if nets.clap is not None:
                from .clap import clap_scores

                if wave.shape[-1] == 0 or f.duration <= 0:
                    clap[clip.name] = None
                    clap_unscored[clip.name] = "the clip has no audio"
                else:
                    audio = nets.clap.audio_embedding(wave, rate, f.duration)
                    clap[clip.name] = float(clap_scores(audio[None], prompt_emb[clip.name][None])[0])
            if nets.desync is not None:
                dur = min(f.duration, wave.shape[-1] / rate, f.sync_frames_u8.shape[0] / desync_mod.VIDEO_FPS)
                desync_clips[clip.name] = nets.desync.score(video_feats[clip.name], wave, rate, dur)
            if nets.passt is not None:
                gen_passt[clip.name] = nets.passt(wave, rate, f.duration)
            if "spectral" in metrics:
                import torchaudio

                real = clip.real_wave.mean(dim=0)
                if clip.real_rate != rate:
                    real = torchaudio.functional.resample(real, clip.real_rate, rate)
                spectral[clip.name] = clip_spectral(wave, real, rate)
            done += 1
            hooks.step("evaluate: score", done, total)
        if "desync" in metrics:
            per["desync"] = {
                "mean": desync_mod.set_desync(desync_clips),
                "per_clip": {n: r.value for n, r in desync_clips.items()},
                "offsets": {n: list(r.offsets) for n, r in desync_clips.items() if r.scored},
                "unscored": {n: r.reason for n, r in desync_clips.items() if not r.scored}}
        names = [c.name for c in clips]
        if "clap" in metrics:
            per["clap"] = {"mean": _mean(clap), "per_clip": clap, "unscored": clap_unscored}
        if "fd" in metrics:
            import numpy as np

            if len(names) < 2:
                per["fd"] = {"mean": None, "per_clip": {}, "unscored": {"(set)": "FD needs at least 2 clips"}}
            else:
                # float32 embeddings, as av-benchmark hands them to numpy
                gen = np.stack([gen_passt[n][0].numpy() for n in names])
                real = np.stack([real_passt[n][0].numpy() for n in names])
                per["fd"] = {"mean": compute_fd(gen, real), "per_clip": {}, "unscored": {}}
        if "kl" in metrics:
            kl = kl_per_pair(torch.stack([gen_passt[n][1] for n in names]),
                             torch.stack([real_passt[n][1] for n in names]))
            values = {n: float(v) for n, v in zip(names, kl)}
            per["kl"] = {"mean": float(kl.mean()), "per_clip": values, "unscored": {}}
        if "spectral" in metrics:
            lsd = {n: s["lsd_db"] for n, s in spectral.items()}
            per["spectral"] = {"mean": _mean(lsd), "per_clip": lsd, "unscored": {},
                               "centroid_hz": _mean({n: s["centroid_hz"] for n, s in spectral.items()}),
                               "flatness": _mean({n: s["flatness"] for n, s in spectral.items()})}
        for metric in per.values():
            metric["n_scored"] = len(names) - len(metric["unscored"]) if metric["per_clip"] else (
                0 if metric["mean"] is None else len(names))
        results[model] = per
    return results


def evaluate(pipe, data_dir: Path, entries: Sequence[AdapterEntry], out_dir: Path, options: EvalOptions,
             weight_paths: dict[str, Path], *, hooks: Optional[Hooks] = None,
             device=None, extra_settings: Optional[dict] = None) -> dict[str, Any]:
    """The whole evaluation; returns the ``metrics.json`` content (also written, with the chart)."""
    from . import report

    hooks = or_default(hooks)
    if not entries:
        raise SelvaError("Nothing to evaluate: give adapters and/or the base model.")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise SelvaError(f"Two models share a name ({', '.join(names)}); name them apart in the adapter list.")
    out_dir = Path(out_dir)
    clips = load_held_out(pipe, data_dir, hooks)
    generated = generate_all(pipe, clips, entries, out_dir, options, hooks)
    nets = load_networks(options.metrics, weight_paths, device or pipe.device)
    results = score_all(clips, generated, pipe.sample_rate, options.metrics, nets, hooks)
    data = {
        "settings": {"data_dir": str(Path(data_dir).expanduser().resolve()), "clips": [c.name for c in clips],
                     "variant": pipe.variant.name, "sample_rate": pipe.sample_rate,
                     **asdict(options), **(extra_settings or {})},
        "directions": {m: DIRECTION[m] for m in options.metrics},
        "weights": {"models": {e.name: model_identity(e) for e in entries},
                    "metric_networks": report.file_identities(weight_paths)},
        "models": results,
    }
    report.write(out_dir, data)
    return data


def entries_from(adapters_spec: Optional[str], loras: Sequence[Path], include_base: bool,
                 base_dir: Optional[Path] = None) -> list[AdapterEntry]:
    """Models to evaluate: the base (named ``base``) if asked, then the list file, then ``--lora`` files."""
    from ..adapters.compare import read_adapter_list

    listed = read_adapter_list(adapters_spec, base_dir)[1:] if adapters_spec else []
    listed += [AdapterEntry(Path(p).name, Path(p)) for p in loras]
    return ([AdapterEntry(BASE_NAME, None)] if include_base else []) + listed


def check_entries(pipe, entries: Sequence[AdapterEntry]) -> None:
    """Read and check every adapter before anything is generated (a bad file fails in seconds)."""
    from ..adapters.format import load_adapter
    from ..adapters.patch import check_adapter_for

    for e in entries:
        if e.path is not None and e.adapter is None:
            e.adapter = load_adapter(e.path)
        if e.adapter is not None:
            check_adapter_for(e.adapter, pipe.variant.name, pipe.variant.generator)


def held_out_folder(out_root: Path, data_dir: Path, entries: Sequence[AdapterEntry], options: EvalOptions) -> Path:
    """``out_root/heldout_<digest>``: the same data, models and settings land in the same folder,
    so a cancelled run picks up its generated clips again."""
    key = content_hash(["held-out", str(Path(data_dir).expanduser().resolve()),
                        [(e.name, None if e.path is None else str(e.path), e.strength) for e in entries],
                        options.steps, options.cfg_strength, options.seed, options.negative_prompt])
    return Path(out_root) / f"heldout_{key[:12]}"


def evaluate_held_out(pipe, data_dir: Path, adapters_spec: str, out_root: Path, options: EvalOptions, *,
                      base_dir: Optional[Path] = None, hooks: Optional[Hooks] = None) -> tuple[Path, Any]:
    """The LoRA Evaluator's held-out mode: the base model and the listed adapters on a dataset
    folder. Returns ``metrics.json``'s path and the chart (H, W, 3) uint8."""
    from ..weights import default_models_dir
    from .report import written_chart
    from .weights import resolve_metric_weights

    entries = entries_from(adapters_spec, (), include_base=True, base_dir=base_dir)
    check_entries(pipe, entries)
    models_dir = getattr(pipe.options, "models_dir", None) or default_models_dir()
    paths = resolve_metric_weights(options.metrics, models_dir,
                                   allow_download=getattr(pipe.options, "allow_download", True))
    folder = held_out_folder(out_root, data_dir, entries, options)
    data = evaluate(pipe, data_dir, entries, folder, options, paths, hooks=hooks)
    return folder / "metrics.json", written_chart(data)
