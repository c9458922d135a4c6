"""Compare LoRA adapters on one clip: same features, same seed, spectral metrics per adapter.

Every adapter (and the baseline, always generated first) samples the same features with the
same seed, steps and CFG, so the only difference is the adapter. Per result:

* spectral centroid (Hz): the power-weighted mean frequency of the whole clip;
* spectral flatness: geometric / arithmetic mean of each frame's power spectrum, averaged
  (0 = tonal, 1 = white noise);
* band energy: the fraction of the clip's energy in each octave-ish band;
* log-spectral distance (dB) to the baseline, and to ``reference`` audio when given: per frame
  the RMS over frequency of the difference of the two dB spectra, averaged over frames.

Metrics use the raw generated waveform (no loudness normalisation), so a level change shows.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .. import audio as audio_ops
from ..artifacts import next_numbered_path, write_atomic, write_json
from ..errors import SelvaError
from ..hooks import Hooks, or_default
from .format import LoraAdapter, load_adapter
from .patch import LoraPatch, check_adapter_for

log = logging.getLogger(__name__)

BASELINE = "baseline"
_BAND_EDGES_HZ = (0, 125, 250, 500, 1000, 2000, 4000, 8000, 16000)
_EPS = 1e-10


# ------------------------------------------------------------------------------------ metrics
def _fft_size(sample_rate: int) -> int:
    """About 64 ms windows: 1024 at 16 kHz, 4096 at 44.1 kHz."""
    return 1 << int(round(math.log2(sample_rate * 0.064)))


def power_spectrogram(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """(frames, bins) power of a mono waveform (T,), Hann window, 75 % overlap."""
    n_fft = _fft_size(sample_rate)
    wave = wave.detach().double().reshape(-1)
    if wave.numel() < n_fft:
        wave = torch.nn.functional.pad(wave, (0, n_fft - wave.numel()))
    spec = torch.stft(wave, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft, dtype=wave.dtype),
                      center=True, return_complex=True)
    return spec.abs().pow(2).T  # (frames, bins)


def band_edges(sample_rate: int) -> list[tuple[float, float]]:
    nyquist = sample_rate / 2
    edges = [e for e in _BAND_EDGES_HZ if e < nyquist] + [nyquist]
    return list(zip(edges[:-1], edges[1:]))


def _band_name(lo: float, hi: float) -> str:
    def k(hz: float) -> str:
        return f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"
    return f"{k(lo)}-{k(hi)} Hz"


@dataclass
class SpectralMetrics:
    centroid_hz: float
    flatness: float
    band_energy: dict[str, float]  # band name -> fraction of total energy (sums to 1)
    lsd_to_baseline_db: Optional[float] = None
    lsd_to_reference_db: Optional[float] = None


def spectral_metrics(wave: torch.Tensor, sample_rate: int) -> SpectralMetrics:
    power = power_spectrogram(wave, sample_rate)
    freqs = torch.linspace(0, sample_rate / 2, power.shape[1], dtype=power.dtype)
    total = power.sum(dim=0)
    energy = float(total.sum())
    centroid = float((freqs * total).sum() / energy) if energy > 0 else 0.0
    log_p = torch.log(power + _EPS)
    flatness = float((log_p.mean(dim=1).exp() / (power.mean(dim=1) + _EPS)).mean())
    bands = {}
    for lo, hi in band_edges(sample_rate):
        inside = (freqs >= lo) & ((freqs < hi) | (hi == sample_rate / 2))
        bands[_band_name(lo, hi)] = float(total[inside].sum() / energy) if energy > 0 else 0.0
    return SpectralMetrics(centroid, flatness, bands)


def log_spectral_distance(a: torch.Tensor, b: torch.Tensor, sample_rate: int) -> float:
    """Mean over frames of the RMS (over frequency) dB difference; the longer input is cut."""
    a, b = a.reshape(-1), b.reshape(-1)
    n = min(a.numel(), b.numel())
    pa, pb = power_spectrogram(a[:n], sample_rate), power_spectrogram(b[:n], sample_rate)
    diff = 10 * (torch.log10(pa + _EPS) - torch.log10(pb + _EPS))
    return float(diff.pow(2).mean(dim=1).sqrt().mean())


# ----------------------------------------------------------------------------- adapter lists
@dataclass
class AdapterEntry:
    name: str
    path: Optional[Path]  # None = the baseline
    adapter: Optional[LoraAdapter] = None
    strength: float = 1.0


def read_adapter_list(spec: str, base_dir: Optional[Path] = None) -> list[AdapterEntry]:
    """``spec``: a JSON file (or JSON text) holding a list of adapter paths; ``""`` = baseline.

    Items may also be objects ``{"path": ..., "name": ..., "strength": ...}``; a LoRA Scheduler's
    ``experiment_summary.json`` (``{"runs": {name: {"adapter": path}}}``) works too. Relative paths
    are looked up beside the JSON file, then in ``base_dir`` (ComfyUI's output folder).
    The baseline is always first, whether the list names it or not.
    """
    text = (spec or "").strip()
    if not text:
        return [AdapterEntry(BASELINE, None)]
    json_dir: Optional[Path] = None
    if not text.startswith("["):
        path = Path(text.strip('"').strip("'").strip()).expanduser()  # quotes as a copied path has them
        if not path.is_absolute() and base_dir is not None and not path.is_file():
            path = Path(base_dir) / path
        if not path.is_file():
            raise SelvaError(f"adapters_file {text!r} not found: give a JSON file with a list of "
                             f"adapter paths (\"\" = baseline), or the JSON list itself.")
        json_dir = path.parent
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise SelvaError(f"Cannot read {path}: {e}.") from e
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise SelvaError(f"adapters_file is not valid JSON ({e}); expected e.g. "
                         f"[\"\", \"selva_lora/lora_001/adapter_final.safetensors\"].") from e
    from ..compat.adapters import earlier_adapter_list  # the earlier pack's lists and summaries

    items = earlier_adapter_list(items)
    if isinstance(items, dict) and isinstance(items.get("adapters"), list):
        items = items["adapters"]
    elif isinstance(items, dict) and isinstance(items.get("runs"), dict):
        # a LoRA Scheduler's experiment_summary.json: every run that saved an adapter, by name
        items = [{"path": run["adapter"], "name": name} for name, run in items["runs"].items()
                 if isinstance(run, dict) and isinstance(run.get("adapter"), str) and run["adapter"]]
    if not isinstance(items, list):
        raise SelvaError("adapters_file must hold a JSON list of adapter paths.")
    listed = (_entry(item, i, json_dir, base_dir) for i, item in enumerate(items))
    entries = [AdapterEntry(BASELINE, None), *(e for e in listed if e is not None)]
    names = [e.name for e in entries]
    for e in entries:  # same file names from different runs: make labels unique
        if names.count(e.name) > 1 and e.path is not None:
            e.name = f"{e.path.parent.name}/{e.path.name}"
    return entries


def _entry(item: Any, index: int, json_dir: Optional[Path], base_dir: Optional[Path]) -> Optional[AdapterEntry]:
    strength, name = 1.0, None
    if isinstance(item, dict):
        try:
            strength = float(item.get("strength", 1.0))
        except (TypeError, ValueError):
            raise SelvaError(f"adapters_file item {index}: strength must be a number, got "
                             f"{item.get('strength')!r}.") from None
        name = item.get("name")
        item = item.get("path", "")
    if not isinstance(item, str):
        raise SelvaError(f"adapters_file item {index}: expected a path string, got {item!r}.")
    if not item.strip():
        return None  # the baseline, which is always included
    path = Path(item.strip()).expanduser()
    if not path.is_absolute():
        candidates = [d / path for d in (json_dir, base_dir) if d is not None]
        path = next((c for c in candidates if c.is_file()), candidates[0] if candidates else path)
    return AdapterEntry(str(name) if name else path.name, path, strength=strength)


# ----------------------------------------------------------------------------------- compare
@dataclass
class ComparedResult:
    name: str
    path: Optional[str]
    strength: float
    metrics: SpectralMetrics
    waveform: torch.Tensor = field(repr=False)  # (T,) float32 CPU


@dataclass
class Comparison:
    sample_rate: int
    steps: int
    cfg_strength: float
    seed: int
    variant: str
    prompt: str
    results: list[ComparedResult]
    reference: Optional[str] = None

    def to_json(self) -> dict:
        return {
            "variant": self.variant, "prompt": self.prompt, "sample_rate": self.sample_rate,
            "steps": self.steps, "cfg_strength": self.cfg_strength, "seed": self.seed,
            "reference": self.reference,
            "results": [{"name": r.name, "path": r.path, "strength": r.strength, **asdict(r.metrics)}
                        for r in self.results],
        }


def compare_adapters(pipe, features, entries: Sequence[AdapterEntry], *, steps: int = 25,
                     cfg_strength: float = 4.5, seed: int = 0,
                     reference: Optional[tuple[torch.Tensor, int]] = None,
                     reference_name: Optional[str] = None,
                     hooks: Optional[Hooks] = None) -> Comparison:
    """Generate with every entry (baseline first) at the same seed and measure each result."""
    hooks = or_default(hooks)
    # Read and check every adapter before generating anything: a bad file fails in seconds.
    for e in entries:
        if e.path is not None and e.adapter is None:
            e.adapter = load_adapter(e.path)
        if e.adapter is not None:
            check_adapter_for(e.adapter, pipe.variant.name, pipe.variant.generator)
    if not entries or entries[0].adapter is not None:
        entries = [AdapterEntry(BASELINE, None), *entries]
    ref_wave = None
    if reference is not None:
        wave, rate = reference
        wave = audio_ops.resample(audio_ops.check_waveform(wave, "reference_audio"), rate, pipe.sample_rate)
        ref_wave = wave[0].mean(dim=0)  # first item, mixed to mono
    results: list[ComparedResult] = []
    for i, e in enumerate(entries):
        hooks.check()
        view = pipe if e.adapter is None else pipe.with_patches([LoraPatch(e.adapter, e.strength)])
        wave = view.generate(features, steps=steps, cfg_strength=cfg_strength, seed=seed, hooks=hooks)
        wave = wave[0, 0].float().cpu()
        metrics = spectral_metrics(wave, pipe.sample_rate)
        metrics.lsd_to_baseline_db = (log_spectral_distance(wave, results[0].waveform, pipe.sample_rate)
                                      if results else 0.0)
        if ref_wave is not None:
            metrics.lsd_to_reference_db = log_spectral_distance(wave, ref_wave, pipe.sample_rate)
        results.append(ComparedResult(e.name, None if e.path is None else str(e.path), e.strength,
                                      metrics, wave))
        hooks.step("compare adapters", i + 1, len(entries))
    return Comparison(pipe.sample_rate, int(steps), float(cfg_strength), int(seed), pipe.variant.name,
                      features.prompt, results, reference_name)


# ---------------------------------------------------------------------------------- outputs
def comparison_image(comparison: Comparison) -> np.ndarray:
    """Spectrograms side by side (shared dB scale) over a metrics table: (H, W, 3) uint8."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    results = comparison.results
    n = len(results)
    sr = comparison.sample_rate
    specs = [10 * torch.log10(power_spectrogram(r.waveform, sr) + _EPS).T.numpy() for r in results]
    top = max(float(s.max()) for s in specs)
    fig = Figure(figsize=(max(4.0 * n, 12.0), 3.6 + 0.35 * n + 3.0), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, n, height_ratios=(3.0, 0.6 + 0.3 * n), hspace=0.35)
    duration = results[0].waveform.numel() / sr
    for i, (r, s) in enumerate(zip(results, specs)):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(s, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                  extent=(0, duration, 0, sr / 2000))
        ax.set_title(r.name if len(r.name) < 40 else "..." + r.name[-37:], fontsize=9)
        ax.set_xlabel("s")
        if i == 0:
            ax.set_ylabel("kHz")
    table_ax = fig.add_subplot(grid[1, :])
    table_ax.axis("off")
    bands = list(results[0].metrics.band_energy)
    columns = (["adapter", "centroid\n(Hz)", "flatness", "LSD to base\n(dB)", "LSD to ref\n(dB)"]
               + [b.replace(" Hz", "\nHz") for b in bands])
    rows = []
    for r in results:
        m = r.metrics
        rows.append([r.name if len(r.name) <= 34 else "..." + r.name[-31:], f"{m.centroid_hz:.0f}", f"{m.flatness:.3f}",
                     f"{m.lsd_to_baseline_db:.2f}",
                     "-" if m.lsd_to_reference_db is None else f"{m.lsd_to_reference_db:.2f}"]
                    + [f"{100 * m.band_energy[b]:.1f}%" for b in bands])
    widths = [0.2] + [0.8 / (len(columns) - 1)] * (len(columns) - 1)
    table = table_ax.table(cellText=rows, colLabels=columns, colWidths=widths, loc="upper center",
                           cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.6)
    for (row, _), cell in table.get_celld().items():
        if row == 0:
            cell.set_height(cell.get_height() * 1.6)
    fig.suptitle(f"{comparison.variant}  seed {comparison.seed}  steps {comparison.steps}  "
                 f"cfg {comparison.cfg_strength:g}  \"{comparison.prompt[:60]}\"", fontsize=10)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3])


def save_comparison(comparison: Comparison, folder: Path, stem: str = "lora_eval") -> tuple[Path, np.ndarray]:
    """Write ``<stem>_NNNN.json`` and ``.png`` (never overwriting); returns the JSON path and image."""
    from PIL import Image

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SelvaError(f"Cannot write the comparison to {folder}: {e}.") from e
    png = next_numbered_path(folder, stem, ".png", digits=4, also=(".json",))
    image = comparison_image(comparison)
    write_atomic(png, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
    data = comparison.to_json()
    data["image"] = str(png)
    path = write_json(png.with_suffix(".json"), data)
    return path, image

