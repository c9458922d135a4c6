"""``python -m selva batch``: manifests, names, skip/resume, failures, --batch-rows, torchrun."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comfy_pack import pack_module
from node_helpers import frames, write_video

cli = pack_module("selva.cli")
B = pack_module("selva.batch")
SelvaError = pack_module("selva.errors").SelvaError
TINY_CLI = str(Path(__file__).resolve().parent / "tiny_cli.py")


def common(models_dir):
    return ["--variant", "tiny_16k", "--precision", "fp32", "--device", "cpu", "--models-dir",
            str(models_dir), "--offline"]


def read_samples(path):
    import av
    import numpy as np

    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=-1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three short videos (two lengths) in nested folders, plus a text file that is ignored."""
    root = tmp_path_factory.mktemp("batch_videos")
    (root / "b").mkdir()
    write_video(root / "a.mp4", frames(1.0, seed=1), fps=25)
    write_video(root / "b" / "c.mp4", frames(1.0, seed=2), fps=25)
    write_video(root / "b" / "a.mp4", frames(1.28, seed=3), fps=25)  # same stem as ../a.mp4
    (root / "notes.txt").write_text("not a video")
    return root


# ----------------------------------------------------------------------------- rows, manifests
def test_folder_rows_are_sorted_recursive_and_uniquely_named(clips):
    rows = B.rows_from_folder(clips, B.RowDefaults(prompt="rain"))
    assert [r.source for r in rows] == ["a.mp4", "b/a.mp4", "b/c.mp4"]
    names = [r.name for r in rows]
    assert names[2] == "c" and len(set(names)) == 3
    assert names[0].startswith("a-") and names[1].startswith("a-")
    # the same input gets the same name, whatever else is in the folder
    only = B.rows_from_folder(clips / "b", B.RowDefaults(prompt="rain"))
    again = B.rows_from_folder(clips, B.RowDefaults(prompt="rain"))
    assert [r.name for r in again] == names and [r.name for r in only] == ["a", "c"]


def test_csv_and_jsonl_manifests(clips, tmp_path):
    sub = tmp_path / "lists"
    sub.mkdir()
    csv = sub / "m.csv"
    rel = os.path.relpath(clips / "a.mp4", sub)
    csv.write_text(f"video,prompt,seed,duration,name\n{rel},rain,7,0.5,first\n"
                   f"{clips / 'b' / 'c.mp4'},,,,\n\n")
    rows = B.rows_from_manifest(csv, B.RowDefaults(prompt="wind", seed=3, duration=8.0))
    assert [r.video for r in rows] == [sub / rel, clips / "b" / "c.mp4"]
    assert (rows[0].prompt, rows[0].seed, rows[0].duration, rows[0].name) == ("rain", 7, 0.5, "first")
    assert (rows[1].prompt, rows[1].seed, rows[1].duration, rows[1].name) == ("wind", 3, 8.0, "c")
    jsonl = sub / "m.jsonl"
    jsonl.write_text(json.dumps({"video": rel, "negative_prompt": "music", "start": 0.2}) + "\n\n"
                     + json.dumps({"video": str(clips / "b" / "a.mp4"), "prompt": "birds"}) + "\n")
    rows = B.rows_from_manifest(jsonl, B.RowDefaults(prompt="wind"))
    assert rows[0].video == sub / rel and rows[0].negative_prompt == "music" and rows[0].start == 0.2
    assert rows[1].prompt == "birds" and rows[1].source == "m.jsonl line 3"
    # both stems are "a": each row gets a digest of what it is
    assert rows[0].name.startswith("a-") and rows[1].name.startswith("a-") and rows[0].name != rows[1].name


@pytest.mark.parametrize("text,message", [
    ("prompt,seed\nrain,1\n", "m.csv line 2: the required column 'video' is missing or empty."),
    ("video,prompt,volume\na.mp4,rain,3\n", "m.csv line 1 (the header): unknown column 'volume'; the columns are "
                                           "video, prompt, negative_prompt, seed, start, duration, name."),
    ("video,duration\na.mp4,4\nb.mp4,four\n", "m.csv line 3: duration 'four' is not a number."),
    ("video,seed\na.mp4,1.5\n", "m.csv line 2: seed '1.5' is not a whole number."),
    ("video,name\na.mp4,x\nb.mp4,x\n", "m.csv line 3: name 'x' is already used by m.csv line 2; names must be unique."),
])
def test_bad_csv_rows_are_clear_errors(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(SelvaError) as e:
        B.rows_from_manifest(tmp_path / "m.csv", B.RowDefaults())
    assert str(e.value) == message


@pytest.mark.parametrize("lines,message", [
    ([{"prompt": "rain"}], "m.jsonl line 1: the required column 'video' is missing or empty."),
    ([{"video": "a.mp4"}, {"video": "b.mp4", "gain": 2}], "m.jsonl line 2: unknown column 'gain'; the columns "
                                                         "are video, prompt, negative_prompt, seed, start, duration, name."),
    ([{"video": "a.mp4", "duration": "long"}], "m.jsonl line 1: duration 'long' is not a number."),
    ([{"video": "a.mp4", "start": -1}], "m.jsonl line 1: start must not be negative, got -1."),
])
def test_bad_jsonl_rows_are_clear_errors(tmp_path, lines, message):
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(SelvaError) as e:
        B.rows_from_manifest(tmp_path / "m.jsonl", B.RowDefaults())
    assert str(e.value) == message


def test_manifest_errors_stop_the_command_before_loading(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("video,duration\na.mp4,x\n")
    rc = cli.main(["batch", "--manifest", str(tmp_path / "m.csv"), "--out-dir", str(tmp_path / "o"),
                   "--models-dir", str(tmp_path / "nothing"), "--offline"])
    assert rc == 1 and "m.csv line 2: duration 'x' is not a number." in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ running rows
def test_batch_skips_resumes_and_records_a_failing_row(models_dir, clips, tmp_path, capsys):
    videos = tmp_path / "videos"
    shutil.copytree(clips, videos)
    (videos / "broken.mp4").write_text("this is not a video")  # a video extension, no stream
    out = tmp_path / "out"
    args = ["batch", "--videos", str(videos), "--prompt", "rain", "--out-dir", str(out), "--steps", "1",
            "--duration", "0", "--format", "wav", *common(models_dir)]
    assert cli.main(args) == 1  # a row failed
    assert capsys.readouterr().out.strip().splitlines()[-1] == "3 done, 0 skipped, 1 failed"
    results = B.read_results(out / "results.jsonl")
    assert [r["status"] for r in results] == ["done", "done", "done", "failed"]
    assert set(results[0]) == {"name", "video", "prompt", "seed", "status", "error", "seconds", "outputs"}
    broken = results[3]
    assert broken["name"] == "broken" and broken["error"].startswith(f"Could not decode {videos / 'broken.mp4'}")
    assert broken["outputs"] == [] and not (out / "broken.wav").exists()
    for r in results[:3]:
        assert r["outputs"] == [str(out / f"{r['name']}.wav")] and r["seconds"] > 0 and r["error"] is None
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{r['name']}.wav" for r in results[:3]]
                                                           + ["results.jsonl"])  # no temporary files
    first = {r["name"]: (out / f"{r['name']}.wav").stat().st_mtime_ns for r in results[:3]}

    # the broken file is replaced by a real video: the re-run does only that row
    (videos / "broken.mp4").unlink()
    write_video(videos / "broken.mp4", frames(1.0, seed=9), fps=25)
    assert cli.main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "1 done, 3 skipped, 0 failed"
    results = B.read_results(out / "results.jsonl")
    assert [r["status"] for r in results] == ["skipped", "skipped", "skipped", "done"]
    assert all((out / f"{n}.wav").stat().st_mtime_ns == t for n, t in first.items())
    # --overwrite redoes every row
    assert cli.main(args + ["--overwrite"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "4 done, 0 skipped, 0 failed"


def test_an_output_must_not_replace_an_input(models_dir, clips, tmp_path, capsys):
    videos = tmp_path / "v"
    shutil.copytree(clips / "b", videos)
    rc = cli.main(["batch", "--videos", str(videos), "--prompt", "rain", "--out-dir", str(videos), "--mux",
                   *common(models_dir)])
    assert rc == 1 and "would replace the input video of a.mp4" in capsys.readouterr().err


def test_rows_sampled_together_equal_generate_alone(models_dir, clips, tmp_path):
    """--batch-rows: each row's audio is bit for bit what ``generate`` makes for it alone."""
    manifest = tmp_path / "m.jsonl"
    lines = [{"video": str(clips / "a.mp4"), "prompt": "rain", "seed": 3, "negative_prompt": "music"},
             {"video": str(clips / "b" / "c.mp4"), "prompt": "a dog barking", "seed": 5},
             {"video": str(clips / "b" / "a.mp4"), "prompt": "wind", "seed": 1, "duration": 1.0, "name": "third"}]
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    rc = cli.main(["batch", "--manifest", str(manifest), "--out-dir", str(out), "--steps", "2",
                   "--batch-rows", "3", "--format", "flac", "--no-normalize", "--duration", "0",
                   *common(models_dir)])
    assert rc == 0
    names = [r["name"] for r in B.read_results(out / "results.jsonl")]
    assert names == ["a", "c", "third"]
    for line, name in zip(lines, names):
        single = tmp_path / f"single_{name}.flac"
        assert cli.main(["generate", "--video", line["video"], "--prompt", line["prompt"], "--seed",
                         str(line["seed"]), "--negative-prompt", line.get("negative_prompt", ""),
                         "--duration", str(line.get("duration", 0)), "--steps", "2", "--no-normalize",
                         "--out", str(single), *common(models_dir)]) == 0
        assert (read_samples(single) == read_samples(out / f"{name}.flac")).all(), name


def test_grouped_sampling_is_bit_exact_in_float(models_dir, monkeypatch):
    """The float waveforms themselves (not only 16-bit files) match ``generate``, and a group
    of one length runs through the generator in one pass per step."""
    P = pack_module("selva.pipeline")
    grouped = pack_module("selva.batch.grouped")
    G = pack_module("selva.models.generator").SelvaGenerator
    pipe = P.SelvaPipeline.load(P.LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                              models_dir=models_dir, allow_download=False))
    feats = [pipe.extract_features(frames(1.0, seed=s), 25.0, p) for s, p in ((1, "rain"), (2, "dogs"), (3, ""))]
    windows = pack_module("selva.long_video").WindowOptions()
    assert len({grouped.group_key(pipe, f, windows) for f in feats}) == 1
    batches, predict = [], G.predict_flow
    monkeypatch.setattr(G, "predict_flow", lambda self, x, t, c: batches.append(len(x)) or predict(self, x, t, c))
    negatives, seeds = ["music", "", "speech"], [4, 5, 6]
    waves = grouped.generate_group(pipe, feats, negatives, seeds, steps=2, cfg_strength=4.5, windows=windows)
    assert batches == [6, 6]  # 3 clips x (conditional, unconditional), 2 steps
    for f, neg, seed, wave in zip(feats, negatives, seeds, waves):
        assert torch.equal(wave, pipe.generate(f, negative_prompt=neg, seed=seed, steps=2))


# ------------------------------------------------------------------------------------ torchrun
def test_torchrun_two_processes_give_the_files_of_one(models_dir, clips, tmp_path):
    """2 gloo processes on the CPU write exactly the files 1 process (one thread) writes."""
    base = ["batch", "--videos", str(clips), "--prompt", "rain", "--steps", "1", "--duration", "0",
            "--format", "wav", *common(models_dir)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    one = subprocess.run([sys.executable, TINY_CLI, *base, "--out-dir", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", TINY_CLI, *base, "--out-dir", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr
    assert two.stdout.strip().splitlines()[-1] == "3 done, 0 skipped, 0 failed"  # rank 0 only
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in files:
        if name.endswith(".wav"):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "outputs")} for r in rs]  # noqa: E731
    r1, r2 = B.read_results(tmp_path / "one" / "results.jsonl"), B.read_results(tmp_path / "two" / "results.jsonl")
    assert strip(r1) == strip(r2) and len(r2) == 3


def test_unreadable_rows_fail_with_the_single_clip_message(models_dir, clips, tmp_path, capsys):
    """No video stream, a start past the end: recorded as failed with generate's own message."""
    P = pack_module("selva.pipeline")
    m4a = cli.write_audio(tmp_path / "sound.m4a", torch.zeros(1, 16000), 16000)
    audio_only = m4a.rename(tmp_path / "audio_only.mp4")  # a video extension, no video stream
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video,start\n{clips / 'a.mp4'},\n{audio_only},\n{clips / 'b' / 'c.mp4'},5\n")
    out = tmp_path / "out"
    rc = cli.main(["batch", "--manifest", str(manifest), "--prompt", "rain", "--out-dir", str(out), "--steps", "1",
                   "--duration", "0", *common(models_dir)])
    assert rc == 1 and capsys.readouterr().out.strip().splitlines()[-1] == "1 done, 0 skipped, 2 failed"
    rows = B.read_results(out / "results.jsonl")
    assert [r["status"] for r in rows] == ["done", "failed", "failed"]
    pipe = P.SelvaPipeline.load(P.LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                              models_dir=models_dir, allow_download=False))
    for row, (video, start) in zip(rows[1:], [(audio_only, 0.0), (clips / "b" / "c.mp4", 5.0)]):
        with pytest.raises(SelvaError) as single:
            pipe.extract_features(video, None, "rain", start=start)
        assert row["error"] == str(single.value)
    assert "has no video stream" in rows[1]["error"] and "beyond the end" in rows[2]["error"]
