"""Datasets (issue 22): named clips aligned with their features, the path rule, a folder of
videos to a dataset in one call (left out, normalised, resumed after a cancel), the report, and
one reader for every consumer. Tiny models; videos made with PyAV in the test."""
from __future__ import annotations

import json
import math
import tempfile

import pytest
import torch

from comfy_pack import pack_module
from comfyui_selva.selva.audio import measure_lufs
from comfyui_selva.selva.datasets import folder as F
from comfyui_selva.selva.datasets import read_dataset
from comfyui_selva.selva.datasets.report import build_report, table_text
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.hooks import Hooks, Interrupted
from comfyui_selva.selva.train.audio_files import read_audio
from comfyui_selva.selva.train.dataset import load_dataset
from comfyui_selva.selva.train.files import write_wav
from dataset_media import click_time, sound, write_av
from node_helpers import frames, run_node

RATE = 16000


@pytest.fixture
def out_dir(tmp_path, monkeypatch):
    """ComfyUI's output folder for nodes run outside ComfyUI; the working folder elsewhere."""
    out = tmp_path / "comfy_output"
    out.mkdir()
    monkeypatch.setenv("SELVA_OUTPUT_DIR", str(out))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return out


def extract(model, **kw):
    args = dict(model=model, video=frames(3.0, seed=1), prompt="a click", fps=25.0, duration=1.0,
                cache_dir="", mask_strength=1.0, mask_clip=True, mask_sync=True)
    args.update(kw)
    return run_node("SelvaFeatureExtractor", **args)


def audio(wave, rate=RATE):
    return {"waveform": wave[None], "sample_rate": rate}


# ------------------------------------------------------------------------ named clip alignment
def test_named_clip_audio_is_cut_to_the_features_span(model, out_dir):
    track = sound(3.0, RATE, amplitude=0.05, click_at=1.9)  # the whole soundtrack of the video
    extract(model, name="click", audio=audio(track), start=1.5)
    wave, rate = read_audio(out_dir / "selva_datasets" / "click" / "click_001.wav")
    assert rate == RATE and wave.shape[-1] == RATE  # 1.0 s: exactly the features' duration
    assert click_time(wave, rate) == pytest.approx(0.4, abs=1 / RATE)  # 1.9 s - start 1.5 s


def test_named_clip_audio_already_cut_is_kept(model, out_dir):
    cut = sound(1.0, RATE, amplitude=0.05, click_at=0.25)
    extract(model, name="cut", audio=audio(cut), start=1.5)
    wave, rate = read_audio(out_dir / "selva_datasets" / "cut" / "cut_001.wav")
    assert torch.allclose(wave, cut, atol=1 / 32767)


def test_named_clip_audio_that_cannot_be_aligned_is_refused(model, out_dir):
    with pytest.raises(SelvaError, match=r"audio is 1\.800 s long, but the features cover 1\.000 s "
                                         r"from 1\.500 s into the video.*at least 2\.500 s"):
        extract(model, name="bad", audio=audio(sound(1.8, RATE)), start=1.5)
    assert not list((out_dir / "selva_datasets").glob("bad/*.npz"))  # nothing saved


def test_named_clip_without_cache_dir_goes_to_the_output_folder_not_temp(model, out_dir, monkeypatch, tmp_path):
    temp = tmp_path / "system_temp"
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    extract(model, name="door", audio=audio(sound(1.0, RATE)))
    assert sorted(p.name for p in (out_dir / "selva_datasets" / "door").iterdir()) == [
        ".selva_cache", "door_001.npz", "door_001.wav"]
    assert not list(temp.rglob("door_*"))


# --------------------------------------------------------------------------------- path rule
def test_relative_cache_dir_is_inside_the_output_folder(model, out_dir):
    extract(model, name="step", audio=audio(sound(1.0, RATE)), cache_dir="my_set")
    assert (out_dir / "my_set" / "step_001.npz").is_file()
    assert not (out_dir.parent / "cwd" / "my_set").exists()


def test_old_cache_dir_place_gives_an_error_naming_the_new_place(model, out_dir):
    old = out_dir.parent / "cwd" / "legacy_set"  # made by an older version, relative to the cwd
    old.mkdir()
    (old / "x_001.npz").write_bytes(b"")
    with pytest.raises(SelvaError, match=r"cache_dir: nothing at .*comfy_output/legacy_set\. Relative "
                                         r"paths are now inside ComfyUI's output folder .*legacy_set "
                                         r"\(the old place, from the working folder\) exists: move it"):
        extract(model, name="x", audio=audio(sound(1.0, RATE)), cache_dir="legacy_set")
    # moved: found there
    old.rename(out_dir / "legacy_set")
    extract(model, name="x", audio=audio(sound(1.0, RATE)), cache_dir="legacy_set")
    assert (out_dir / "legacy_set" / "x_002.npz").is_file()


NODE_PATH_INPUTS = [  # (node, path input, other inputs) -- each reads a dataset or folder back
    ("SelvaLoraTrainer", "data_dir", {}),
    ("SelvaTextualInversionTrainer", "data_dir", {}),
    ("SelvaActivationSteeringExtractor", "data_dir", {}),
    ("SelvaDatasetReport", "dataset_dir", {}),
    ("SelvaDatasetBrowser", "dataset_json", {}),
    ("SelvaDatasetFromFolder", "videos_dir", {}),
    ("SelvaBigvganTrainer", "data_dir", {}),
    ("SelvaBigvganTrainer", "discriminator_path", {}),
    ("SelvaBigvganTrainer", "lora_adapter", {}),
    ("SelvaBigvganLoader", "path", {}),
    ("SelvaBigvganScheduler", "experiments_file", {}),
    ("SelvaLoraScheduler", "experiments_file", {}),
]


def _defaults(node_id):
    cls = pack_module("nodes").NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    out = {}
    for name, value in spec["required"].items():
        if isinstance(value[0], str) and value[0] in ("STRING", "INT", "FLOAT", "BOOLEAN"):
            out[name] = value[1].get("default", "")
        elif isinstance(value[0], (list, tuple)):
            out[name] = value[0][0]
    return cls, out


@pytest.mark.parametrize("node_id,key,extra", NODE_PATH_INPUTS)
def test_every_node_reads_relative_paths_from_the_output_folder(model, out_dir, node_id, key, extra):
    cls, inputs = _defaults(node_id)
    inputs.update(extra)
    if "model" in cls.INPUT_TYPES()["required"]:
        inputs["model"] = model
    old = out_dir.parent / "cwd" / "where_it_was"
    old.mkdir()
    inputs[key] = "where_it_was"
    with pytest.raises(SelvaError, match=rf"{key}: nothing at .*comfy_output/where_it_was\..*"
                                         rf"the old place, from the working folder"):
        with torch.inference_mode():
            getattr(cls(), cls.FUNCTION)(**inputs)


def test_sweep_json_data_dir_follows_the_same_rule(model, out_dir):
    (out_dir / "sweep.json").write_text(json.dumps({"base": {"data_dir": "sweep_data", "steps": 1},
                                                    "experiments": [{"name": "one"}]}))
    (out_dir.parent / "cwd" / "sweep_data").mkdir()
    with pytest.raises(SelvaError, match=r"data_dir: nothing at .*comfy_output/sweep_data\..*the old "
                                         r"place, from the working folder"):
        run_node("SelvaLoraScheduler", model=model, experiments_file="sweep.json", output_dir="sweeps")


# ------------------------------------------------------------------------- folder to dataset
def make_videos(folder):
    folder.mkdir()
    write_av(folder / "long.mkv", 2.5, sound(2.5, RATE, 440.0, 0.3, click_at=1.3), seed=1)
    write_av(folder / "quiet.mkv", 1.2, sound(1.2, RATE, 440.0, 0.0005), seed=2)  # about -70 LUFS
    write_av(folder / "short.mkv", 0.7, None, seed=3)  # no sound track: the clean file beside it
    write_wav(folder / "short.wav", sound(0.7, 22050, 880.0, 0.2), 22050)
    (folder / "short.txt").write_text("a whistle\n")
    (folder / "prompts.csv").write_text("file,prompt\nlong.mkv,an engine\n")
    write_av(folder / "mute.mkv", 1.0, None, seed=4)  # no sound at all: failed, with the reason


def test_folder_of_videos_to_a_dataset_in_one_call(model, tmp_path):
    videos = tmp_path / "videos"
    make_videos(videos)
    opts = F.PrepareOptions(videos_dir=videos, out_dir=tmp_path / "ds", prompt="a sound",
                            csv_path=videos / "prompts.csv", clip_seconds=1.0, hop_seconds=0.5)
    index = F.prepare_dataset(model, opts)
    # 2.5 s every 0.5 s: full clips at 0, 0.5, 1.0, 1.5; the 0.5 s left from 2.0 s is too short
    assert [(c.id, c.start) for c in index.clips] == [
        ("long_000", 0.0), ("long_001", 0.5), ("long_002", 1.0), ("long_003", 1.5), ("short_000", 0.0)]
    assert [c.label for c in index.clips][-2:] == ["an engine", "a whistle"]
    short = index.clips[-1]
    assert short.duration == pytest.approx(0.7, abs=0.05)  # shorter than a clip: its whole length
    assert [e["id"] for e in index.left_out] == ["quiet_000"]
    assert "too quiet" in index.left_out[0]["reason"] or "silent" in index.left_out[0]["reason"]
    assert len(index.failed) == 1
    assert "mute.mkv has no sound track and no same-name audio file" in index.failed[0]["error"]
    on_disk = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert on_disk["left_out"][0]["id"] == "quiet_000" and len(on_disk["clips"]) == 5
    # each clip's audio is its own span of the soundtrack: the click at 1.3 s is 0.3 s into long_002
    wave, rate = read_audio(tmp_path / "ds" / "long_002.wav")
    assert wave.shape[-1] == rate and click_time(wave, rate) == pytest.approx(0.3, abs=2 / rate)
    wave, rate = read_audio(tmp_path / "ds" / "short_000.wav")
    assert rate == 22050  # the clean file, at its own rate
    # the trainers' one reader reads it as it is
    assert [c.stem for c in read_dataset(tmp_path / "ds")] == [c.id for c in index.clips]
    ds = load_dataset(model, tmp_path / "ds")
    assert len(ds) == 5 and ds.clips[-1].prompt == "a whistle"


def test_target_lufs_normalises_without_clipping(model, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_av(videos / "a.mkv", 1.0, sound(1.0, RATE, 300.0, 0.05), seed=1)
    write_av(videos / "loud.mkv", 1.0, sound(1.0, RATE, 300.0, 0.9), seed=2)
    opts = F.PrepareOptions(videos_dir=videos, out_dir=tmp_path / "ds", prompt="hum", clip_seconds=1.0,
                            target_lufs=-20.0)
    F.prepare_dataset(model, opts)
    wave, rate = read_audio(tmp_path / "ds" / "a_000.wav")
    assert measure_lufs(wave, rate) == pytest.approx(-20.0, abs=0.3)
    opts = F.PrepareOptions(videos_dir=videos, out_dir=tmp_path / "ds2", prompt="hum", clip_seconds=1.0,
                            target_lufs=-3.0)  # the sine would need peaks past full scale
    F.prepare_dataset(model, opts)
    for name in ("a_000", "loud_000"):
        wave, rate = read_audio(tmp_path / "ds2" / f"{name}.wav")
        assert float(wave.abs().max()) < 1.0 and int((wave.abs() >= 0.999).sum()) == 0


def test_cancel_keeps_finished_clips_and_running_again_continues(model, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_av(videos / "v.mkv", 3.0, sound(3.0, RATE, 500.0, 0.3), seed=1)
    opts = F.PrepareOptions(videos_dir=videos, out_dir=tmp_path / "ds", prompt="tone", clip_seconds=1.0)
    steps = []

    def cancel_after_first_clip():
        return len([s for s in steps if s[0] == "clips"]) >= 1

    hooks = Hooks(progress=lambda stage, done, total: steps.append((stage, done, total)),
                  interrupted=cancel_after_first_clip)
    with pytest.raises(Interrupted):
        F.prepare_dataset(model, opts, hooks)
    first = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert [c["id"] for c in first["clips"]] == ["v_000"] and ("clips", 1, 3) in steps
    made = (tmp_path / "ds" / "v_000.npz").stat().st_mtime_ns
    index = F.prepare_dataset(model, opts)
    assert [c.id for c in index.clips] == ["v_000", "v_001", "v_002"]
    assert (tmp_path / "ds" / "v_000.npz").stat().st_mtime_ns == made  # not made again


def test_clip_spans():
    assert F.clip_spans(2.6, 1.0) == [(0.0, 1.0), (1.0, 1.0)]  # a 0.6 s tail is dropped
    assert F.clip_spans(0.7, 8.0) == [(0.0, 0.7)]  # shorter than a clip: its whole length
    assert F.clip_spans(3.0, 2.0, 1.0) == [(0.0, 2.0), (1.0, 2.0)]
    with pytest.raises(SelvaError, match="clip_seconds must be positive"):
        F.clip_spans(3.0, 0.0)


# ------------------------------------------------------------------------------------ report
def report_dataset(model, folder):
    """Clips that are fine, silent, clipped, too short, and out of step with their features."""
    folder.mkdir()
    feats = extract(model, video=frames(1.0, seed=3))[0]
    short = extract(model, video=frames(0.8, seed=4), duration=0.8)[0]
    for name, f, wave in (("good", feats, sound(1.0, RATE, 440.0, 0.3)),
                          ("silent", feats, torch.zeros(1, RATE)),
                          ("clipped", feats, sound(1.0, RATE, 440.0, 1.5).clamp(-1, 1)),
                          ("short", short, sound(0.8, RATE, 440.0, 0.3)),
                          ("mismatch", feats, sound(2.0, RATE, 440.0, 0.3))):
        f.save(folder / f"{name}.npz")
        write_wav(folder / f"{name}.wav", wave, RATE)
    return folder


def test_report_flags_silent_clipped_short_and_mismatched_clips(model, tmp_path):
    report = build_report(report_dataset(model, tmp_path / "ds"))
    flags = {c.id: c.flags for c in report.clips}
    assert flags == {"clipped": ["clipped"], "good": [], "mismatch": ["duration mismatch"],
                     "short": ["too short"], "silent": ["silent"]}
    good = next(c for c in report.clips if c.id == "good")
    assert good.loudness_lufs == pytest.approx(measure_lufs(sound(1.0, RATE, 440.0, 0.3), RATE), abs=0.2)
    assert good.peak_dbfs == pytest.approx(20 * math.log10(0.3), abs=0.1) and good.clipped_samples == 0
    assert good.prompt == "a click" and good.silent_fraction == 0.0
    silent = next(c for c in report.clips if c.id == "silent")
    assert silent.loudness_lufs is None and silent.silent_fraction == 1.0
    assert next(c for c in report.clips if c.id == "clipped").clipped_samples > 100
    text = table_text(report)
    assert "| silent | 1.00 | 1.00 | - | - | 0 | 100% | silent | a click |" in text
    assert "5 clip(s), 4 flagged" in text


def test_report_node_and_command(model, out_dir, capsys):
    from comfyui_selva.selva.cli import main

    report_dataset(model, out_dir / "ds")
    image, path = run_node("SelvaDatasetReport", dataset_dir="ds")
    assert path == str(out_dir / "ds" / "dataset_report.md")
    assert image.dim() == 4 and image.shape[0] == 1 and image.shape[-1] == 3 and image.shape[1] > 200
    assert json.loads((out_dir / "ds" / "dataset_report.json").read_text())["flag_counts"]["silent"] == 1
    assert main(["dataset-report", str(out_dir / "ds")]) == 0
    assert "| clipped | 1.00 |" in capsys.readouterr().out


# ----------------------------------------------------------------------------- one reader
def test_browser_reads_datasets_made_either_way(model, out_dir, tmp_path):
    extract(model, name="bell", audio=audio(sound(1.0, RATE)), cache_dir="by_hand")
    video, audio_path, frames_dir, label, total = run_node("SelvaDatasetBrowser", dataset_json="by_hand", index=0)
    assert (video, frames_dir, label, total) == ("", "", "a click", 1)
    assert audio_path == str(out_dir / "by_hand" / "bell_001.wav")
    videos = tmp_path / "videos"
    videos.mkdir()
    write_av(videos / "v.mkv", 1.0, sound(1.0, RATE), seed=1)
    folder, count = run_node("SelvaDatasetFromFolder", model=model, videos_dir=str(videos), out_dir="made",
                             prompt="a hum", clip_seconds=8.0)
    assert (folder, count) == (str(out_dir / "made"), 1)
    video, audio_path, _, label, total = run_node("SelvaDatasetBrowser", dataset_json="made", index=0)
    assert (video, label, total) == (str(videos / "v.mkv"), "a hum", 1)
    assert audio_path == str(out_dir / "made" / "v_000.wav")


def test_reader_never_counts_the_hidden_cache(model, out_dir):
    extract(model, name="tick", audio=audio(sound(1.0, RATE)), cache_dir="ds")
    assert list((out_dir / "ds" / ".selva_cache" / "features").glob("*.npz"))  # the copy is there
    assert [c.stem for c in read_dataset(out_dir / "ds")] == ["tick_001"]


def test_prepare_dataset_command_line_options():
    from comfyui_selva.selva.cli import build_parser
    from comfyui_selva.selva.datasets.cli import prepare_options

    args = build_parser().parse_args(["prepare-dataset", "--videos", "v", "--out", "d", "--prompt", "rain",
                                      "--clip-seconds", "4", "--hop-seconds", "2", "--min-loudness-lufs", "-40",
                                      "--target-lufs", "-23", "--no-captions"])
    opts = prepare_options(args)
    assert (opts.clip_seconds, opts.hop_seconds, opts.min_loudness_lufs, opts.target_lufs, opts.captions) == (
        4.0, 2.0, -40.0, -23.0, False)
    defaults = prepare_options(build_parser().parse_args(["prepare-dataset", "--videos", "v", "--out", "d"]))
    assert (defaults.min_loudness_lufs, defaults.target_lufs, defaults.captions, defaults.hop_seconds) == (
        -50.0, None, True, 0.0)
    with pytest.raises(SelvaError, match="hop_seconds must be 0"):
        F.PrepareOptions(videos_dir="v", out_dir="d", hop_seconds=-1).validate()
