"""Muxing the generated audio into the source video (selva.media): every frame of the span kept and
playable for the recordings users bring, made here with PyAV (no binary test data)."""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_selva.selva import media
from comfyui_selva.selva.errors import SelvaError

FPS = 25
SECONDS = 4
RATE = 16000


def _clip(path: Path, codec: str, bframes: int = 0, pix_fmt: str = "yuv420p") -> Path:
    """A 4 s, 25 fps clip whose frame i is a flat grey of 20 + 2 i, with a keyframe every second."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        if codec == "libx264":
            # x264's defaults (and OBS's) use B-frames; bf=0 is the "no B-frames" encode
            stream.options = {"bf": str(bframes), "g": str(FPS), "keyint_min": str(FPS),
                              "sc_threshold": "0"}
        elif codec == "libvpx-vp9":
            stream.options = {"g": str(FPS), "deadline": "realtime", "cpu-used": "8"}
        else:
            stream.codec_context.gop_size = FPS
            stream.codec_context.bit_rate = 4_000_000  # fine enough that each frame's grey reads back
        for i in range(SECONDS * FPS):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 + 2 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _frames(path: Path) -> list[tuple[float, float]]:
    """(time from the stream's start, source frame number read from the grey) of each decoded frame."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        origin = v.start_time or 0
        return [(float((f.pts - origin) * v.time_base), (float(f.to_ndarray(format="gray").mean()) - 20) / 2)
                for f in c.decode(v)]


def _first_packet_is_keyframe(path: Path) -> bool:
    import av

    with av.open(str(path)) as c:
        return next(p for p in c.demux(c.streams.video[0]) if p.size).is_keyframe


def _audio(path: Path) -> tuple[float, np.ndarray]:
    import av

    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        decoded = list(c.decode(a))
        first = float(decoded[0].pts * a.time_base)
        return first, np.concatenate([f.to_ndarray() for f in decoded], axis=-1)[0]


CLIPS = [  # (file name, codec, B-frames)
    ("h264_b.mp4", "libx264", 3), ("h264.mp4", "libx264", 0),
    ("h264_b.mkv", "libx264", 3), ("h264.mkv", "libx264", 0),
    ("h264_b.mov", "libx264", 3), ("h264.mov", "libx264", 0),
    ("vp9.webm", "libvpx-vp9", 0), ("mpeg4.avi", "mpeg4", 0),
]


def _check(src: Path, out: Path, start: float, duration: float, wave: torch.Tensor) -> None:
    source = [(t, n) for t, n in _frames(src) if start <= t < start + duration]
    muxed = _frames(out)
    first_audio, samples = _audio(out)
    onset = first_audio + np.argmax(np.abs(samples) > 0.25) / RATE
    # the generated audio begins at `start` of the source: the muxed frames under it are the same
    under_audio = [(t, n) for t, n in muxed if onset - 0.5 / FPS <= t < onset + duration - 0.5 / FPS]
    assert _first_packet_is_keyframe(out)
    assert abs(len(under_audio) - len(source)) <= 1, (len(under_audio), len(source))
    assert under_audio[0][1] == pytest.approx(source[0][1], abs=1.5)  # the frame shown at `start`
    assert onset == pytest.approx(muxed[0][0] + start - _keyframe_before(src, start), abs=0.03)
    assert all(abs(b[1] - a[1] - 1) < 1.5 for a, b in zip(muxed, muxed[1:])), "no frame is lost"
    heard = len(samples) - round((onset - first_audio) * RATE)
    assert abs(heard - wave.shape[-1]) <= 2048  # AAC pads to whole frames


def _keyframe_before(src: Path, start: float) -> float:
    import av

    with av.open(str(src)) as c:
        v = c.streams.video[0]
        origin = v.start_time or 0
        keys = [float((p.pts - origin) * v.time_base) for p in c.demux(v) if p.size and p.is_keyframe]
    return max(k for k in keys if k <= start + 1e-6)


@pytest.mark.parametrize("name,codec,bframes", CLIPS)
def test_mux_keeps_every_frame_of_the_span(tmp_path, name, codec, bframes):
    src = _clip(tmp_path / name, codec, bframes)
    wave = torch.full((1, 2 * RATE), 0.5)
    out = media.mux_video(src, wave, RATE, tmp_path / f"out{'.mkv' if name.endswith(('.webm', '.avi')) else src.suffix}")
    _check(src, out, 0.0, 2.0, wave)


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_mux_of_bframe_matroska_from_a_later_start(tmp_path, suffix):
    """The OBS case: Matroska H.264 with B-frames, whose first packets carry no DTS, cut at 1.3 s."""
    import av

    src = _clip(tmp_path / "obs.mkv", "libx264", 3)
    with av.open(str(src)) as c:  # the premise: leading packets without a DTS
        assert any(p.dts is None for p in c.demux(c.streams.video[0]) if p.size)
    wave = torch.full((1, 2 * RATE), 0.5)
    out = media.mux_video(src, wave, RATE, tmp_path / f"out{suffix}", duration=2.0, start=1.3)
    _check(src, out, 1.3, 2.0, wave)


def test_the_check_catches_a_picture_that_starts_on_a_b_frame(tmp_path):
    """What the old copy produced (packets without DTS dropped): the check must refuse it."""
    import av

    src = _clip(tmp_path / "obs.mkv", "libx264", 3)
    broken = tmp_path / "broken.mkv"
    with av.open(str(src)) as c, av.open(str(broken), "w") as out:
        v_out = out.add_stream_from_template(c.streams.video[0])
        for packet in c.demux(c.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = v_out
            out.mux(packet)
    assert media.check_playable(broken) == "its first picture packet is not a keyframe"
    assert media.check_playable(src) is None


def test_a_codec_the_container_cannot_hold_is_re_encoded_with_one_log_line(tmp_path, caplog):
    src = _clip(tmp_path / "raw.avi", "rawvideo")
    wave = torch.full((1, RATE), 0.5)
    with caplog.at_level(logging.WARNING, logger=media.__name__):
        out = media.mux_video(src, wave, RATE, tmp_path / "out.mp4")
    lines = [r.getMessage() for r in caplog.records if r.name == media.__name__]
    assert len(lines) == 1 and "'mp4' format does not support 'rawvideo'" in lines[0], lines
    import av

    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    _check(src, out, 0.0, 1.0, wave)


def test_a_container_without_aac_is_refused_with_a_way_out(tmp_path):
    src = _clip(tmp_path / "vp9.webm", "libvpx-vp9")
    with pytest.raises(SelvaError) as e:
        media.mux_video(src, torch.zeros(1, RATE), RATE, tmp_path / "out.webm")
    assert str(e.value) == ("A .webm file cannot hold AAC audio; write the muxed video as .mp4, "
                            ".mkv or .mov instead.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vp9.webm"]  # no half file left


def test_the_node_container_is_mp4_when_it_can_hold_the_picture(tmp_path):
    """MP4 stores decode times (Save Video's copy keeps every packet); Matroska takes the rest."""
    assert media.copy_suffix(_clip(tmp_path / "obs.mkv", "libx264", 3)) == ".mp4"
    assert media.copy_suffix(_clip(tmp_path / "vp9.webm", "libvpx-vp9")) == ".mp4"
    assert media.copy_suffix(_clip(tmp_path / "raw.avi", "rawvideo")) == ".mkv"


def test_plan_and_copy_seek_to_the_same_point_without_a_stream_start_time():
    # The packet plan and the stream copy must read the same packets. A stream without a start
    # time (PyAV's None) once had the copy seek from the first packet's pts the plan had seen
    # (here 5 s in) while the plan sought from 0: the copy then read other packets.
    from types import SimpleNamespace

    _seek = media._seek
    seeks = []
    src = SimpleNamespace(seek=lambda offset, stream, backward: seeks.append(offset))
    stream = SimpleNamespace(start_time=None, time_base=Fraction(1, 1000))
    _seek(src, stream, 0, 2.0)
    _seek(src, SimpleNamespace(start_time=7200, time_base=Fraction(1, 90000)), 7200, 1.0)
    _seek(src, stream, 0, 0.0)  # from the start: no seek at all
    assert seeks == [2000, 7200 + 90000]


def test_mux_from_a_later_start_of_a_stream_without_a_start_time(tmp_path):
    """Raw MJPEG (as webcams write it) has no stream start time: frame times still count from its
    first frame, not from the first frame after the seek to `start` (which once cut the picture
    1.3 s too long and delayed the audio by 1.3 s)."""
    import av

    src = _clip(tmp_path / "cam.mjpeg", "mjpeg", pix_fmt="yuvj420p")
    with av.open(str(src)) as c:  # the premise
        assert c.streams.video[0].start_time is None
    wave = torch.full((1, 2 * RATE), 0.5)
    out = media.mux_video(src, wave, RATE, tmp_path / "out.mkv", duration=2.0, start=1.3)
    _check(src, out, 1.3, 2.0, wave)


def test_a_full_range_picture_keeps_its_levels_when_re_encoded(tmp_path, monkeypatch):
    """MJPEG (and some phones' video) is full range: the H.264 re-encode, tagged limited range,
    once kept the full-range values, so players stretched every grey (20 + 2 * 10 read back as
    frame 4's grey instead of frame 10's)."""
    src = _clip(tmp_path / "cam.mjpeg", "mjpeg", pix_fmt="yuvj420p")

    def refuse(*args):
        raise media._NotCopyable("a re-encode is what this test checks")

    monkeypatch.setattr(media, "_copy_picture", refuse)
    wave = torch.full((1, 2 * RATE), 0.5)
    out = media.mux_video(src, wave, RATE, tmp_path / "out.mp4", duration=2.0, start=1.3)
    _check(src, out, 1.3, 2.0, wave)


@pytest.mark.parametrize("rate", [44100, 16000])
def test_opus_is_written_at_a_rate_it_supports(tmp_path, rate):
    """Opus encodes 8, 12, 16, 24 and 48 kHz only: a 44.1 kHz model's audio once failed with
    'avcodec_open2("libopus", {})' returned 22; it is resampled to 48 kHz now."""
    import av

    t = torch.arange(rate) / rate
    wave = 0.5 * torch.sin(2 * np.pi * 440 * t)[None]
    path = media.write_audio(tmp_path / "out.opus", wave, rate)
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        samples = np.concatenate([f.to_ndarray() for f in c.decode(a)], axis=-1)[0]
        encoded = a.codec_context.sample_rate
    assert encoded == 48000  # what every Opus decoder gives back
    assert abs(len(samples) / 48000 - 1.0) < 0.03  # one second, whatever the source rate
    assert np.sqrt(np.mean(samples[4800:-4800] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def _recording(path: Path, codec: str, pix_fmt: str, times: np.ndarray, **options: str) -> Path:
    """A clip whose frame i (shown at ``times[i]`` s) is a flat grey of 20 + 2 i, rotated 90
    degrees by its display matrix as phones record portrait video."""
    import av

    time_base = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        stream.options = options
        stream.codec_context.time_base = time_base
        stream.set_display_rotation(90)
        for i, t in enumerate(times):
            rgb = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 + 2 * i, np.uint8), format="rgb24")
            frame = rgb.reformat(format=pix_fmt)
            frame.pts, frame.time_base = round(t / time_base), time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


_VFR = np.concatenate([[0.0], np.cumsum(np.random.default_rng(0).uniform(1 / 40, 1 / 20, 99))])


@pytest.mark.parametrize("name,codec,pix_fmt,times,options", [
    ("phone_vfr.mp4", "libx264", "yuv420p", _VFR, {"bf": "2"}),  # variable rate, B-frames
    ("ten_bit.mkv", "libx264", "yuv420p10le", np.arange(100) / FPS, {"bf": "3"}),
    ("prores.mov", "prores_ks", "yuv422p10le", np.arange(100) / FPS, {}),
])
def test_recordings_users_bring_decode_and_mux(tmp_path, name, codec, pix_fmt, times, options):
    from comfyui_selva.selva import video

    src = _recording(tmp_path / name, codec, pix_fmt, times, **options)
    start = 0.7
    frames = video.decode_video(src, 2.0, start=start)
    first = int(np.searchsorted(times, start - 1e-9))  # the first frame shown at or after `start`
    assert frames.sync_indices[0] == first and frames.duration == 2.0
    grey = frames.sync_u8[0].float().mean().item()
    assert grey == pytest.approx(20 + 2 * first, abs=2)
    wave = torch.full((1, 2 * RATE), 0.5)
    out = media.mux_video(src, wave, RATE, tmp_path / f"out{media.copy_suffix(src)}", start=start)
    assert media.check_playable(out) is None
    _check(src, out, start, 2.0, wave)
