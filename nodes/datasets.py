"""Dataset nodes: a folder of videos to a training dataset, its report, and the audio chain
(``SelvaDataset*``) on the AUDIO_DATASET type. Thin glue: the work is in ``selva/datasets``."""
from __future__ import annotations

from typing import Any

from . import comfy_compat, paths
from .common import CATEGORY, MODEL_TYPE, comfy_run, make_hooks, outputs


def _folder_version(path: str, what: str) -> str:
    """What ``IS_CHANGED`` returns for a folder input: names, sizes and times of its files, so a
    re-queue after a change runs again. A bad or missing folder is reported by the node itself."""
    try:
        folder = paths.resolve(path, what)
    except Exception:
        return "invalid"
    try:
        return "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                        for p in sorted(folder.iterdir()) if p.is_file())
    except OSError:
        return f"missing:{folder}"


class SelvaDatasetFromFolder:
    DESCRIPTION = ("Turns a folder of videos into a training dataset in one queue: cuts long videos "
                   "into clips, takes each clip's audio from the video's own sound track (or a clean "
                   "same-name audio file beside it), leaves out silent clips, extracts the features "
                   "and writes dataset.json. Cancel keeps finished clips; queue again to continue.")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("STRING", "dataset_dir", "The dataset folder (for the LoRA Trainer's data_dir, Dataset Report, ...)."),
        ("INT", "clips", "How many clips the dataset holds now."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The pipeline from SelVA Model Loader (its encoders)."}),
                "videos_dir": ("STRING", {"default": "selva_videos", "tooltip":
                               "Folder of videos. Relative = inside ComfyUI's output folder."}),
                "out_dir": ("STRING", {"default": "selva_datasets/my_dataset", "tooltip":
                            "Dataset folder to write or continue. Relative = inside ComfyUI's output folder."}),
                "prompt": ("STRING", {"default": "", "multiline": True, "tooltip":
                           "The prompt of every video without a CSV row or a same-name .txt caption."}),
            },
            "optional": {
                "prompts_csv": ("STRING", {"default": "", "tooltip":
                                "Optional CSV with file and prompt columns (relative = output folder)."}),
                "clip_seconds": ("FLOAT", {"default": 8.0, "min": 0.5, "max": 600.0, "step": 0.1, "tooltip":
                                 "Cut long videos into clips this long (8 s: what the models saw). "
                                 "A shorter video is one clip of its whole length."}),
                "hop_seconds": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 600.0, "step": 0.1, "tooltip":
                                "Seconds from one clip's start to the next. 0 = clip_seconds (no overlap)."}),
                "min_loudness_lufs": ("FLOAT", {"default": -50.0, "min": -70.0, "max": 0.0, "step": 0.5,
                                      "tooltip": "Clips quieter than this are left out (listed with "
                                                 "the reason in dataset.json under left_out)."}),
                "target_lufs": ("FLOAT", {"default": 0.0, "min": -70.0, "max": 0.0, "step": 0.5, "tooltip":
                                "Loudness-normalise each clip's audio to this (BS.1770, never clipping). "
                                "0 = off: the audio as recorded."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, videos_dir: str = "", out_dir: str = "", **_kw) -> str:
        return _folder_version(videos_dir, "videos_dir") + "#" + _folder_version(out_dir, "out_dir")

    def make(self, model: Any, videos_dir: str, out_dir: str, prompt: str, prompts_csv: str = "",
             clip_seconds: float = 8.0, hop_seconds: float = 0.0, min_loudness_lufs: float = -50.0,
             target_lufs: float = 0.0) -> tuple[str, int]:
        from ..selva.datasets.folder import PrepareOptions, prepare_dataset

        opts = PrepareOptions(
            videos_dir=paths.resolve_existing(videos_dir, "videos_dir"),
            out_dir=paths.resolve(out_dir, "out_dir"), prompt=prompt,
            csv_path=paths.resolve_existing(prompts_csv, "prompts_csv") if prompts_csv.strip() else None,
            clip_seconds=float(clip_seconds), hop_seconds=float(hop_seconds),
            min_loudness_lufs=float(min_loudness_lufs),
            target_lufs=float(target_lufs) if target_lufs < 0 else None)
        with comfy_run():
            index = prepare_dataset(model, opts, make_hooks())
        return str(opts.out_dir), len(index.clips)


class SelvaDatasetReport:
    DESCRIPTION = ("Measures every clip of a dataset folder (duration, integrated loudness, peak, "
                   "clipped samples, silent fraction, prompt) and flags clips that are silent, "
                   "clipped, too short, or whose audio and features disagree in duration. Writes "
                   "dataset_report.md/.json/.png into the dataset folder.")
    CATEGORY = CATEGORY
    FUNCTION = "report"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("IMAGE", "image", "Histograms of duration, loudness, peak and silence, with the flag counts."),
        ("STRING", "report_path", "The report table (dataset_report.md)."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "dataset_dir": ("STRING", {"default": "selva_datasets/my_dataset", "tooltip":
                            "The dataset folder. Relative = inside ComfyUI's output folder."}),
        }}

    @classmethod
    def IS_CHANGED(cls, dataset_dir: str = "", **_kw) -> str:
        return _folder_version(dataset_dir, "dataset_dir")

    def report(self, dataset_dir: str) -> tuple[Any, str]:
        from ..selva.datasets.report import build_report, write_report
        from ..selva.train.plots import image_tensor

        with comfy_run():
            report = build_report(paths.resolve_existing(dataset_dir, "dataset_dir"), hooks=make_hooks())
        table, image = write_report(report)
        return image_tensor(image), str(table)


# ------------------------------------------------------------------------ the audio dataset chain
# The earlier SelVA pack's socket type, with its value: a list of {"waveform": (1, C, T),
# "sample_rate": int, "name": str, "origin_name": str (augmented copies only)}. Kept as it is so
# its workflows connect; the nodes convert to the core's AudioClip and back.
AUDIO_DATASET = "AUDIO_DATASET"
_DATASET_TOOLTIP = "An audio dataset (from SelVA Dataset Loader or a previous SelVA Dataset node)."


def to_clips(dataset: Any) -> list:
    import torch

    from ..selva.datasets.chain import AudioClip
    from ..selva.errors import SelvaError

    if not isinstance(dataset, (list, tuple)):
        raise SelvaError(f"dataset must be an AUDIO_DATASET (a list of clips), got {type(dataset).__name__}.")
    clips = []
    for i, item in enumerate(dataset):
        try:
            wave = torch.as_tensor(item["waveform"]).detach().to("cpu", torch.float32)
            rate, name = int(item["sample_rate"]), str(item.get("name") or f"clip_{i:03d}")
        except (KeyError, TypeError) as e:
            raise SelvaError(f"dataset item {i} is not an audio clip (needs waveform and sample_rate): {e}") from e
        if wave.dim() == 3:
            wave = wave[0]
        elif wave.dim() == 1:
            wave = wave[None]
        clips.append(AudioClip(name, wave, rate, str(item.get("origin_name") or "")))
    return clips


def to_dataset(clips: list) -> list[dict]:
    out = []
    for c in clips:
        item = {"waveform": c.waveform[None].contiguous(), "sample_rate": int(c.sample_rate), "name": c.name}
        if c.origin:
            item["origin_name"] = c.origin
        out.append(item)
    return out


def _dataset_in() -> tuple:
    return (AUDIO_DATASET, {"tooltip": _DATASET_TOOLTIP})


class _DatasetStep:
    CATEGORY = CATEGORY
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        (AUDIO_DATASET, "dataset", "The processed audio dataset."))

    @staticmethod
    def apply(step: Any, dataset: Any, *args: Any) -> tuple[list]:
        """The node's output: ``step(clips, *args, hooks)`` of ``selva.datasets.chain`` on ``dataset``."""
        with comfy_run():
            return (to_dataset(step(to_clips(dataset), *args, make_hooks())),)


class SelvaDatasetLoader(_DatasetStep):
    DESCRIPTION = ("Loads every audio file of a folder (and its sub-folders) into memory as an audio "
                   "dataset for the SelVA Dataset nodes. A clip's name is its file name without the "
                   "extension: it pairs the audio with its features .npz when saved.")
    FUNCTION = "load"
    OUTPUT_TOOLTIPS = ("The clips, each at its own sample rate and channel count.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"folder": ("STRING", {"default": "", "tooltip":
                "Folder of audio files, searched recursively. Relative = inside ComfyUI's output folder."})}}

    @classmethod
    def IS_CHANGED(cls, folder: str = "", **_kw) -> str:
        return _folder_version(folder, "folder")

    def load(self, folder: str) -> tuple[list]:
        from ..selva.datasets.chain import load_folder

        with comfy_run():
            clips = load_folder(paths.resolve_existing(folder, "folder"), make_hooks())
        return (to_dataset(clips),)


class SelvaDatasetResampler(_DatasetStep):
    DESCRIPTION = "Resamples every clip to one sample rate (band-limited); clips already there are kept."
    FUNCTION = "resample"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "dataset": _dataset_in(),
            "target_sr": ("INT", {"default": 44100, "min": 8000, "max": 192000, "tooltip":
                          "The rate to resample to: 44100 for the 44k models, 16000 for the 16k model."}),
        }}

    def resample(self, dataset: Any, target_sr: int) -> tuple[list]:
        from ..selva.datasets.chain import resample

        return self.apply(resample, dataset, int(target_sr))


class SelvaDatasetLUFSNormalizer(_DatasetStep):
    DESCRIPTION = ("Brings every clip to one integrated loudness (ITU-R BS.1770, the meter the Sampler "
                   "uses), then turns down any clip whose true peak would pass the ceiling. Silent clips "
                   "and clips under 0.4 s are left as they are.")
    FUNCTION = "normalize"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "dataset": _dataset_in(),
            "target_lufs": ("FLOAT", {"default": -23.0, "min": -40.0, "max": -6.0, "step": 0.5, "tooltip":
                            "Integrated loudness to reach, in LUFS (-23 = EBU R128 broadcast level)."}),
            "true_peak_dbtp": ("FLOAT", {"default": -1.0, "min": -6.0, "max": 0.0, "step": 0.5, "tooltip":
                               "Ceiling for the true (4x oversampled) peak after the gain, in dBTP."}),
        }}

    def normalize(self, dataset: Any, target_lufs: float, true_peak_dbtp: float) -> tuple[list]:
        from ..selva.datasets.chain import normalize_loudness

        return self.apply(normalize_loudness, dataset, float(target_lufs), float(true_peak_dbtp))


class SelvaDatasetCompressor(_DatasetStep):
    DESCRIPTION = ("Mild parallel compression: evens out loud and quiet moments within each clip while "
                   "the dry signal keeps the transients. Use after loudness normalisation.")
    FUNCTION = "compress"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "dataset": _dataset_in(),
            "threshold_db": ("FLOAT", {"default": -18.0, "min": -40.0, "max": -6.0, "step": 1.0, "tooltip":
                             "Level (dBFS, RMS over 1 ms) above which the compressor turns the sound down."}),
            "ratio": ("FLOAT", {"default": 2.5, "min": 1.5, "max": 4.0, "step": 0.5, "tooltip":
                      "Above the threshold the level grows 1/ratio as fast: 2-3 is mild, over 4 pumps."}),
            "attack_ms": ("FLOAT", {"default": 10.0, "min": 1.0, "max": 100.0, "step": 1.0, "tooltip":
                          "How fast the compressor reacts to a louder sound; slower keeps more transient."}),
            "release_ms": ("FLOAT", {"default": 100.0, "min": 20.0, "max": 500.0, "step": 10.0, "tooltip":
                           "How fast it lets go once the sound is quieter again."}),
            "mix": ("FLOAT", {"default": 0.4, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                    "0 = dry only (no change), 1 = fully compressed; 0.3-0.5 is typical."}),
        }}

    def compress(self, dataset: Any, threshold_db: float, ratio: float, attack_ms: float,
                 release_ms: float, mix: float) -> tuple[list]:
        from ..selva.datasets.chain import compress

        return self.apply(compress, dataset, float(threshold_db), float(ratio), float(attack_ms),
                          float(release_ms), float(mix))


class SelvaDatasetInspector:
    DESCRIPTION = ("Checks every clip for clipping, low signal-to-noise ratio, lossy-codec artefacts "
                   "(no energy above 15 kHz) and silence; rejected clips leave the dataset (or stay, "
                   "flagged). The report lists each clip and why.")
    CATEGORY = CATEGORY
    FUNCTION = "inspect"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        (AUDIO_DATASET, "dataset", "The clips that passed (all clips when skip_rejected is off)."),
        ("STRING", "report", "One line per clip: OK, or what is wrong with it."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "dataset": _dataset_in(),
            "skip_rejected": ("BOOLEAN", {"default": True, "tooltip":
                              "On: flagged clips are removed. Off: every clip passes; the report still lists issues."}),
            "min_snr_db": ("FLOAT", {"default": 15.0, "min": 0.0, "max": 60.0, "step": 1.0, "tooltip":
                           "Flag clips whose loud frames are less than this many dB above their quiet "
                           "frames (an estimate of the noise floor; a steady sound without pauses reads low)."}),
            "check_codec_artifacts": ("BOOLEAN", {"default": True, "tooltip":
                                      "Flag clips with next to nothing above 15 kHz (an MP3-like cut); "
                                      "only for rates of 32 kHz and more."}),
            "max_silence_fraction": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                                     "Flag clips whose frames are under -60 dBFS more than this fraction "
                                     "of the time. 0 = no silence check."}),
        }}

    def inspect(self, dataset: Any, skip_rejected: bool, min_snr_db: float, check_codec_artifacts: bool,
                max_silence_fraction: float = 0.5) -> tuple[list, str]:
        from ..selva.datasets.chain import InspectOptions, inspect

        opts = InspectOptions(float(min_snr_db), bool(check_codec_artifacts), float(max_silence_fraction))
        with comfy_run():
            kept, report = inspect(to_clips(dataset), opts, bool(skip_rejected), make_hooks())
        return to_dataset(kept), report


class SelvaDatasetSpectralMatcher(_DatasetStep):
    DESCRIPTION = ("The Spectral Matcher on every clip: a per-band EQ moving each clip's average "
                   "spectrum toward the profile the SelVA VAE was trained on. The result is at the "
                   "model's sample rate.")
    FUNCTION = "process"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "dataset": _dataset_in(),
            "mode": (["44k", "16k"], {"tooltip": "The VAE whose profile to match: the model you train "
                                                 "(44k = 44.1 kHz models, 16k = small_16k)."}),
            "strength": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                         "0 = no change, 1 = the full correction."}),
            "max_gain_db": ("FLOAT", {"default": 12.0, "min": 1.0, "max": 30.0, "step": 1.0, "tooltip":
                            "The largest boost or cut of one band, in dB."}),
        }, "optional": {
            "model": (MODEL_TYPE, {"tooltip": "Optional: the pipeline whose VAE gives the profile. "
                                              "Without it, the VAE file of `mode` is read from the models folder."}),
        }}

    def process(self, dataset: Any, mode: str, strength: float, max_gain_db: float,
                model: Any = None) -> tuple[list]:
        from ..selva.datasets.chain import spectral_match
        from ..selva.datasets.profile import spectral_matcher_for

        match, rate = spectral_matcher_for(mode, float(strength), float(max_gain_db), model,
                                           models_dirs=comfy_compat.candidate_models_dirs())
        return self.apply(spectral_match, dataset, match, rate)


class SelvaDatasetHfSmoother(_DatasetStep):
    DESCRIPTION = ("The HF Smoother on every clip: above the cutoff, a low-passed copy is blended in "
                   "to tame harsh highs. Clips whose rate has nothing above the cutoff are kept.")
    FUNCTION = "process"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "dataset": _dataset_in(),
            "cutoff_hz": ("FLOAT", {"default": 12000.0, "min": 2000.0, "max": 20000.0, "step": 500.0, "tooltip":
                          "Frequency above which the low-passed copy is blended in; lower = stronger."}),
            "blend": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                      "0 = unchanged, 1 = fully low-passed above the cutoff."}),
        }}

    def process(self, dataset: Any, cutoff_hz: float, blend: float) -> tuple[list]:
        from ..selva.datasets.chain import hf_smooth

        return self.apply(hf_smooth, dataset, float(cutoff_hz), float(blend))


class SelvaDatasetAugmenter(_DatasetStep):
    DESCRIPTION = ("Makes variants of every clip (random gain, and when asked pitch shift and time "
                   "stretch, length kept) to stretch a small dataset. A variant is named "
                   "<clip>_augNN and keeps its clip's features when saved.")
    FUNCTION = "augment"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "dataset": _dataset_in(),
            "variants_per_clip": ("INT", {"default": 2, "min": 1, "max": 20, "tooltip":
                                  "Variants made of each clip."}),
            "gain_range_db": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 12.0, "step": 0.5, "tooltip":
                              "Each variant gets a random gain within +- this many dB (3 dB is subtle)."}),
            # the frontend gives every INT named "seed" a control widget anyway: declared here
            "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                     "tooltip": "The same seed gives the same variants."}),
        }, "optional": {
            "pitch_range_semitones": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 4.0, "step": 0.25, "tooltip":
                                      "Random pitch shift within +- this many semitones. 0 = off."}),
            "time_stretch_range": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.3, "step": 0.05, "tooltip":
                                   "Random speed change within +- this fraction (0.1 = 90-110 %), cut or "
                                   "padded back to the clip's length. 0 = off."}),
            "keep_originals": ("BOOLEAN", {"default": True, "tooltip": "Keep the original clips too."}),
        }}

    def augment(self, dataset: Any, variants_per_clip: int, gain_range_db: float, seed: int,
                pitch_range_semitones: float = 0.0, time_stretch_range: float = 0.0,
                keep_originals: bool = True) -> tuple[list]:
        from ..selva.datasets.chain import AugmentOptions, augment

        opts = AugmentOptions(int(variants_per_clip), float(gain_range_db), int(seed),
                              float(pitch_range_semitones), float(time_stretch_range), bool(keep_originals))
        return self.apply(augment, dataset, opts)


class SelvaDatasetItemExtractor:
    DESCRIPTION = "One clip of an audio dataset as a plain AUDIO (to preview, save or process it)."
    CATEGORY = CATEGORY
    FUNCTION = "extract"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("AUDIO", "audio", "The clip."),
        ("STRING", "name", "Its name."),
        ("INT", "total", "How many clips the dataset holds."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "dataset": _dataset_in(),
            "index": ("INT", {"default": 0, "min": 0, "max": 9999, "tooltip":
                      "Which clip (0 = first); past the end it wraps around."}),
        }}

    def extract(self, dataset: Any, index: int) -> tuple[dict, str, int]:
        from ..selva.datasets.chain import check_not_empty
        from .common import audio_output

        clips = to_clips(dataset)
        check_not_empty(clips)
        clip = clips[int(index) % len(clips)]
        return audio_output(clip.waveform[None], clip.sample_rate), clip.name, len(clips)


class SelvaDatasetSaver:
    DESCRIPTION = ("Writes every clip as <name>.flac (24-bit) into output_dir. With npz_source_dir, "
                   "each clip's features (<name>.npz; an augmented variant takes its clip's) and caption "
                   "are copied beside it, so output_dir is a training dataset. Never overwrites.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("STRING", "report", "What was written, and which clips found no features."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "dataset": _dataset_in(),
            "output_dir": ("STRING", {"default": "", "tooltip":
                           "Folder to write (a new one). Relative = inside ComfyUI's output folder."}),
        }, "optional": {
            "npz_source_dir": ("STRING", {"default": "", "tooltip":
                               "The dataset folder holding each clip's features <name>.npz (relative = inside ComfyUI's "
                               "output folder). Empty = audio only."}),
        }}

    def save(self, dataset: Any, output_dir: str, npz_source_dir: str = "") -> tuple[str]:
        from ..selva.datasets.chain import save_clips

        source = paths.resolve_existing(npz_source_dir, "npz_source_dir") if npz_source_dir.strip() else None
        with comfy_run():
            report = save_clips(to_clips(dataset), paths.resolve(output_dir, "output_dir"), source, make_hooks())
        return (report,)
