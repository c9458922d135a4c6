"""``python -m selva``: argument handling, weights errors, and a full run on tiny models."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from comfy_pack import REPO_ROOT, pack_module
from node_helpers import frames, write_video

cli = pack_module("selva.cli")


def run_module(*args, env=None, timeout=120):
    """``python -m selva ...`` from the repository root: selva is then a top-level package."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "selva", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, env=full_env, timeout=timeout)


def test_help_lists_the_commands():
    out = run_module("--help")
    assert out.returncode == 0, out.stderr
    for command in ("generate", "download", "features", "cache"):
        assert command in out.stdout
    gen = run_module("generate", "--help")
    for option in ("--video", "--prompt", "--out", "--negative-prompt", "--variant", "--precision",
                   "--offload", "--duration", "--steps", "--cfg", "--seed", "--batch-size",
                   "--no-normalize", "--target-lufs", "--models-dir", "--cache-dir", "--clip-frames",
                   "--mux"):
        assert option in gen.stdout, option


def test_download_offline_lists_every_missing_file(tmp_path):
    out = run_module("download", "--variant", "small_16k", "--models-dir", str(tmp_path / "m"),
                     "--offline", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert out.returncode == 1
    assert out.stdout == ""
    for name in ("video_enc_sup_5.pth", "generator_small_16k_sup_5.pth", "v1-16.pth", "best_netG.pt",
                 "flan-t5-base", "DFN5B-CLIP-ViT-H-14-384"):
        assert name in out.stderr, name
    assert "https://huggingface.co/jnwnlee/SelVA/resolve/main/weights/video_enc_sup_5.pth" in out.stderr


def test_missing_arguments_are_usage_errors():
    out = run_module("generate", "--prompt", "x")
    assert out.returncode == 2 and "--out" in out.stderr
    out = run_module("features", "--prompt", "x", "--out", "f.npz")
    assert out.returncode == 2 and "--video" in out.stderr


# ------------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("cli") / "in.mp4", frames(2.0, seed=3), fps=25)


def _common(models_dir):
    return ["--variant", "tiny_16k", "--precision", "fp32", "--device", "cpu", "--models-dir",
            str(models_dir), "--offline"]


def _read_audio(path):
    import av

    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        rate = stream.sample_rate
        samples = sum(f.samples for f in c.decode(stream))
    return rate, samples


def test_generate_writes_audio_and_a_muxed_video(models_dir, video_file, tmp_path):
    out = tmp_path / "out" / "sound.wav"
    mux = tmp_path / "out" / "with_sound.mp4"
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    rc = cli.main(["generate", "--video", str(video_file), "--prompt", "a dog barking", "--out",
                   str(out), "--mux", str(mux), "--steps", "2", "--seed", "1", "--duration", "0",
                   "--negative-prompt", "music", "--cache-dir", str(tmp_path / "cache"),
                   *_common(models_dir)])
    assert rc == 0
    assert (root.level, list(root.handlers)) == before
    rate, samples = _read_audio(out)
    spec = pack_module("selva.variants").VARIANTS["tiny_16k"]
    assert rate == 16000 and samples == spec.seq_lengths(2.0).audio_samples
    import av

    with av.open(str(mux)) as c:
        kinds = sorted(s.type for s in c.streams)
        assert kinds == ["audio", "video"]
        assert c.streams.video[0].codec_context.name == "mpeg4"  # copied, not re-encoded
        n_video = sum(1 for _ in c.decode(video=0))
    assert n_video == 50
    assert list((tmp_path / "cache").glob("*.npz")), "--cache-dir should keep the features"


def test_batch_writes_numbered_files(models_dir, video_file, tmp_path):
    out = tmp_path / "batch.flac"
    rc = cli.main(["generate", "--video", str(video_file), "--prompt", "rain", "--out", str(out),
                   "--steps", "1", "--batch-size", "2", "--duration", "1", *_common(models_dir)])
    assert rc == 0
    for i in range(2):
        rate, samples = _read_audio(tmp_path / f"batch_{i}.flac")
        assert rate == 16000 and samples > 0
    assert not out.exists()


def test_features_command_writes_a_loadable_file(models_dir, video_file, tmp_path):
    out = tmp_path / "feats.npz"
    rc = cli.main(["features", "--video", str(video_file), "--prompt", "a dog barking", "--out", str(out),
                   "--duration", "1.5", *_common(models_dir)])
    assert rc == 0
    feats = pack_module("selva.features").Features.load(out)
    assert feats.prompt == "a dog barking" and feats.duration == pytest.approx(1.5)


def test_errors_are_reported_not_raised(models_dir, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        rc = cli.main(["generate", "--video", str(tmp_path / "missing.mp4"), "--prompt", "x", "--out",
                       str(tmp_path / "o.wav"), *_common(models_dir)])
    assert rc == 1
    rc = cli.main(["generate", "--video", str(tmp_path / "missing.mp4"), "--prompt", "x", "--out",
                   str(tmp_path / "o.xyz"), *_common(models_dir)])
    assert rc == 1


def test_mask_image_is_read_as_a_static_mask(models_dir, video_file, tmp_path):
    import av
    import numpy as np

    mask_png = tmp_path / "mask.png"
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, 32:] = 255
    with av.open(str(mask_png), "w", format="image2") as c:
        s = c.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = 64, 48, "rgb24"
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    mask = pack_module("selva.media").read_mask(mask_png)
    assert mask.shape == (1, 48, 64)
    assert float(mask[0, 0, 0]) == 0.0 and float(mask[0, 0, -1]) == 1.0
    rc = cli.main(["generate", "--video", str(video_file), "--prompt", "x", "--out", str(tmp_path / "m.wav"),
                   "--mask", str(mask_png), "--steps", "1", "--duration", "1", *_common(models_dir)])
    assert rc == 0


def test_video_options_are_checked_before_any_model_loads(video_file, tmp_path, capfd):
    # no weights under --models-dir: an error about them would mean the model was loaded first
    none = ["--models-dir", str(tmp_path / "none"), "--offline", "--variant", "tiny_16k"]
    for cmd, out in (("generate", "o.wav"), ("features", "f.npz")):
        rc = cli.main([cmd, "--video", str(video_file), "--prompt", "x", "--out", str(tmp_path / out),
                       "--mask", str(tmp_path / "missing.png"), *none])
        assert rc == 1 and f"Could not read the mask image {tmp_path / 'missing.png'}" in capfd.readouterr().err
    # text to audio: a video option has no video to act on; it was silently ignored
    for flag, value, why in (("--mask", str(tmp_path / "m.png"), "--mask needs --video: there is no video to mask."),
                             ("--start", "2", "--start needs --video: there is no video to start into.")):
        rc = cli.main(["generate", "--prompt", "x", "--duration", "1", "--out", str(tmp_path / "t.wav"),
                       flag, value, *none])
        assert rc == 1 and why in capfd.readouterr().err


def test_write_audio_formats(tmp_path, capfd):
    wave = 0.2 * torch.sin(torch.linspace(0, 400, 8000))[None]
    for suffix in (".wav", ".flac", ".m4a"):
        path = pack_module("selva.media").write_audio(tmp_path / f"a{suffix}", wave, 16000)
        rate, samples = _read_audio(path)
        assert rate == 16000 and samples >= 8000
    unsupported = r"Unsupported audio format '.xyz'; use one of .aac, .flac, .m4a, .mp3, .opus, .wav\.$"
    with pytest.raises(pack_module("selva.errors").SelvaError, match=unsupported):
        pack_module("selva.media").write_audio(tmp_path / "a.xyz", wave, 16000)
    # generate refuses it before any work (the video is there, the weights are not)
    rc = cli.main(["generate", "--video", str(tmp_path / "a.wav"), "--prompt", "x", "--out",
                   str(tmp_path / "o.xyz"), "--models-dir", str(tmp_path / "none"), "--offline"])
    assert rc == 1 and "Unsupported audio format '.xyz'" in capfd.readouterr().err


def test_existing_outputs_and_inputs_are_never_overwritten(models_dir, video_file, tmp_path):
    out = tmp_path / "mine.wav"
    out.write_bytes(b"the user's own file")
    args = ["generate", "--video", str(video_file), "--prompt", "rain", "--steps", "1",
            "--duration", "1", *_common(models_dir)]
    assert cli.main([*args, "--out", str(out)]) == 1
    assert out.read_bytes() == b"the user's own file"
    video_bytes = video_file.read_bytes()
    assert cli.main([*args, "--out", str(tmp_path / "new.wav"), "--mux", str(video_file),
                     "--overwrite"]) == 1
    assert video_file.read_bytes() == video_bytes and not (tmp_path / "new.wav").exists()
    assert cli.main([*args, "--out", str(out), "--overwrite"]) == 0
    assert _read_audio(out)[0] == 16000
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files


def test_one_path_for_two_outputs_is_refused_before_any_work(models_dir, video_file, tmp_path, capfd):
    # --out and --mux naming one file: the muxed video once replaced the audio just written there
    out, same = tmp_path / "take.m4a", tmp_path / "sub" / ".." / "take.m4a"
    rc = cli.main(["generate", "--video", str(video_file), "--prompt", "rain", "--out", str(out),
                   "--mux", str(same), *_common(models_dir)])
    assert rc == 1 and not out.exists()
    assert f"{same} would be written twice by this run (--out and --mux)" in capfd.readouterr().err


def test_mux_starts_picture_and_sound_together(tmp_path):
    """A picture that starts at 2 s in its file (MPEG-TS) is muxed to start with the audio at 0 s."""
    import av
    import numpy as np
    from fractions import Fraction

    src = tmp_path / "late.ts"
    with av.open(str(src), "w", format="mpegts") as out:
        s = out.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(50):  # 2 s of frames shown from 2.0 s to 4.0 s
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 4 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = 50 + i, Fraction(1, 25)
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    with av.open(str(src)) as c:
        assert c.streams.video[0].start_time * c.streams.video[0].time_base == 2  # the premise
    wave = 0.1 * torch.sin(torch.linspace(0, 2000, 16000))[None]  # 1 s at 16 kHz
    muxed = pack_module("selva.media").mux_video(src, wave, 16000, tmp_path / "muxed.mp4")
    with av.open(str(muxed)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        starts = [float(st.start_time * st.time_base) for st in (v, a)]
    with av.open(str(muxed)) as c:
        times = [float(f.time) for f in c.decode(video=0)]
    assert abs(starts[0] - starts[1]) < 1 / 25
    # the picture is cut to the audio's 1 s counted from the first frame, not from 0 s of the file
    assert len(times) == 25 and times[0] < 1 / 25 and times[-1] < 1.0


def test_text_to_audio_needs_a_duration_and_writes_it(models_dir, tmp_path, capfd):
    out = tmp_path / "rain.wav"
    assert cli.main(["generate", "--prompt", "rain", "--out", str(out), *_common(models_dir)]) == 1
    assert "Without --video (text to audio), --duration is required" in capfd.readouterr().err
    rc = cli.main(["generate", "--prompt", "rain", "--out", str(out), "--duration", "1.5", "--steps", "1",
                   *_common(models_dir)])
    assert rc == 0
    spec = pack_module("selva.variants").VARIANTS["tiny_16k"]
    assert _read_audio(out) == (16000, spec.seq_lengths(1.5).audio_samples)


def test_regenerate_keeps_the_init_audio_outside_the_range(models_dir, video_file, tmp_path, capfd):
    from style_helpers import write_wav

    take = write_wav(tmp_path / "take.wav", seconds=2.0)
    out = tmp_path / "edited.flac"
    rc = cli.main(["generate", "--video", str(video_file), "--prompt", "a dog", "--out", str(out),
                   "--steps", "1", "--duration", "2", "--no-normalize", "--init-audio", str(take),
                   "--regenerate", "0.5:1.2", *_common(models_dir)])
    assert rc == 0
    read = pack_module("selva.train.audio_files").read_audio
    got, _ = read(out)
    want, _ = read(take)
    assert (got[0, :7000] - want[0, :7000]).abs().max() < 1e-3
    assert (got[0, 8000:19000] - want[0, 8000:19000]).abs().max() > 1e-2
    capfd.readouterr()
    rc = cli.main(["generate", "--prompt", "a dog", "--out", str(tmp_path / "x.wav"), "--duration", "2",
                   "--init-audio", str(take), "--regenerate", "1-2", *_common(models_dir)])
    assert rc == 1 and "--regenerate takes START:END in seconds, e.g. 2.5:4, got '1-2'." in capfd.readouterr().err


def test_generate_and_batch_share_the_sampling_flags_and_their_defaults():
    options = pack_module("selva.options")
    parser = cli.build_parser()
    gen = parser.parse_args(["generate", "--out", "x.wav", "--prompt", "rain", "--duration", "2"])
    batch = parser.parse_args(["batch", "--videos", "v", "--prompt", "rain", "--out-dir", "o"])
    keys = ("steps", "cfg", "no_normalize", "target_lufs", "window_seconds", "overlap_seconds")
    assert {k: getattr(gen, k) for k in keys} == {k: getattr(batch, k) for k in keys}
    d = options.SamplingOptions()
    assert (gen.steps, gen.cfg, gen.target_lufs) == (d.steps, d.cfg_strength, -27.0)
    assert options.windows_from_args(batch) == pack_module("selva.long_video").WindowOptions()
    batch_options = pack_module("selva.batch.cli").batch_options(batch)
    assert (batch_options.steps, batch_options.cfg_strength, batch_options.windows) == (
        d.steps, d.cfg_strength, options.windows_from_args(gen))
