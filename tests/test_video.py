"""Frame selection, resizing, masking and decoding (selva/video.py)."""
from __future__ import annotations

import io
import logging
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from comfyui_selva.selva import video as V
from comfyui_selva.selva.errors import SelvaError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these tensors are small: on a busy machine thread hand-offs cost more than the work
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ the reference, re-implemented
def official_select(times, list_of_fps, end_sec):
    """read_frames()' rule as the reference evaluates it: float accumulation of 1/fps."""
    out = [[] for _ in list_of_fps]
    nxt = [0.0 for _ in list_of_fps]
    delta = [1 / f for f in list_of_fps]
    for i, t in enumerate(times):
        if t < 0:
            continue
        if t > end_sec:
            break
        for j in range(len(list_of_fps)):
            while t >= nxt[j]:
                out[j].append(i)
                nxt[j] += delta[j]
    return out


def official_preprocess(frames_u8, fps, duration, times=None):
    """load_video()'s transforms and duration clamp on in-memory uint8 (T, H, W, 3) frames."""
    if times is None:
        times = [i / fps for i in range(frames_u8.shape[0])]
    clip_i, sync_i = official_select(times, [8.0, 25.0], duration)
    clip_t = v2.Compose([v2.Resize((384, 384), interpolation=v2.InterpolationMode.BICUBIC),
                         v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    sync_t = v2.Compose([v2.Resize((224, 224), interpolation=v2.InterpolationMode.BICUBIC),
                         v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                         v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])
    src = torch.from_numpy(frames_u8)
    clip = clip_t(src[clip_i].permute(0, 3, 1, 2))
    sync = sync_t(src[sync_i].permute(0, 3, 1, 2))
    if clip.shape[0] / 8.0 < duration:
        duration = clip.shape[0] / 8.0
    if sync.shape[0] / 25.0 < duration:
        duration = sync.shape[0] / 25.0
    return clip[:int(8.0 * duration)], sync[:int(25.0 * duration)], duration


def sync_input(p):
    """What the sync encoder is fed: the 25 fps frames in [-1, 1]."""
    return V.normalize_sync(V.to_float01(p.sync_u8))


def random_video(n, h=48, w=64, seed=0):
    g = np.random.default_rng(seed)
    return g.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ selection
def chosen(n, fps, dst_fps, duration, frame_times=None):
    """The source frames prepare_frames picks for its 8 fps (CLIP) or 25 fps (sync) stream."""
    p = V.prepare_frames(random_video(n, 8, 8), fps=fps, duration=duration, frame_times=frame_times)
    return list(p.clip_indices if dst_fps == V.CLIP_FPS else p.sync_indices)


def test_exact_length_25fps_clip_keeps_every_frame():
    assert chosen(50, 25, 25, 2.0) == list(range(50))


def test_reference_float_rule_differs_only_where_floats_tie():
    """The reference's accumulated 1/25 drifts above the frame times: it is not just the last frame.

    Every slot time k/25 coincides with a frame time, so float rounding decides each one; the
    reference skips frames 6 and 18 (a neighbour fills in), shifts every slot from 18 on by one
    frame and loses the last slot. We deliberately keep exact timing instead.
    """
    times = [i / 25 for i in range(50)]
    ref = official_select(times, [25.0], 2.0)[0]
    assert len(ref) == 49
    assert ref[:6] == list(range(6)) and ref[6:8] == [7, 7] and ref[8:18] == list(range(8, 18))
    assert ref[18:] == list(range(19, 50))
    ours = chosen(50, 25, 25, 2.0)
    assert [k for k in range(49) if ours[k] != ref[k]] == [6] + list(range(18, 49))
    assert all(abs(ours[k] - ref[k]) <= 1 for k in range(49))  # never more than one frame apart
    # at 8 fps the step 1/8 is exact in binary: both rules agree
    assert chosen(50, 25, 8, 2.0) == official_select(times, [8.0], 2.0)[0]


def test_8fps_from_25fps_matches_reference_where_floats_are_unambiguous():
    n = 250
    ours = chosen(n, 25, 8, 10.0)
    ref = official_select([i / 25 for i in range(n)], [8.0], 10.0)[0]
    assert len(ours) == 80
    compared = 0
    for k, (a, b) in enumerate(zip(ours, ref)):
        if (k * 25) % 8 == 0:  # slot time k/8 coincides with a frame time: float rounding decides
            continue
        assert a == b, k
        compared += 1
    assert compared > 60
    assert ours[:5] == [0, 4, 7, 10, 13]  # ceil(k * 25 / 8)


def test_never_first_n_frames_for_other_rates():
    # 30 fps source at 25 fps: frames are skipped, not truncated
    idx = chosen(60, 30, 25, 2.0)
    assert len(idx) == 50 and idx[-1] > 50
    assert idx[:7] == [0, 2, 3, 4, 5, 6, 8]  # ceil(k * 30 / 25)
    # 10 fps source at 25 fps: frames repeat
    assert chosen(20, 10, 25, 1.0)[:6] == [0, 1, 1, 2, 2, 2]


def test_fractional_rate_is_exact():
    # NTSC 29.97 as a float snaps to 30000/1001
    idx = chosen(300, 30000 / 1001, 25, 10.0)
    expected = [-(-k * 30000 // (1001 * 25)) for k in range(250)]  # ceil(k * fps / 25)
    assert idx == expected


def test_variable_frame_rate_uses_timestamps():
    times = [0.0, 0.01, 0.1, 0.35, 0.4, 0.9, 1.0]
    # slots at 0, .125, .25, .375, .5, .625, .75, .875: the first frame at or after each
    assert chosen(7, None, 8, 1.0, frame_times=times) == [0, 3, 3, 4, 5, 5, 5, 5]
    with pytest.raises(SelvaError, match="must not decrease"):
        chosen(3, None, 8, 1.0, frame_times=[0.0, 0.2, 0.1])


# ------------------------------------------------------------------------------------- resizing
@pytest.mark.parametrize("shape,size", [((3, 48, 64), 384), ((3, 48, 64), 224), ((2, 37, 53), 224),
                                        ((2, 301, 500), 384), ((2, 500, 301), 224), ((1, 384, 384), 384),
                                        ((2, 241, 427), 384)])
def test_resize_is_bit_identical_to_torchvision(shape, size):
    t, h, w = shape
    thwc = torch.from_numpy(random_video(t, h, w, seed=h * w))
    ref = v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)(
        thwc.permute(0, 3, 1, 2))
    ours = V.resize_uint8(thwc, size)
    assert ours.dtype == torch.uint8 and ours.shape == (t, 3, size, size)
    assert torch.equal(ours, ref)
    # one frame at a time gives the same bytes
    assert torch.equal(V.resize_uint8(thwc[-1:], size)[0], ref[-1])


def test_resize_rejects_float():
    with pytest.raises(SelvaError, match="uint8"):
        V.resize_uint8(torch.zeros(1, 8, 8, 3), 16)


def test_float_conversions_match_torchvision():
    u8 = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, 16, 16)
    x01 = V.to_float01(u8)
    assert torch.equal(x01, v2.ToDtype(torch.float32, scale=True)(u8))
    assert torch.equal(V.normalize_sync(x01), v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3)(x01))


# -------------------------------------------------------------------------------- prepare_frames
def test_prepare_keeps_the_frame_the_reference_drops():
    frames = random_video(50)  # exactly 2 s at 25 fps
    ref_clip, ref_sync, ref_dur = official_preprocess(frames, 25.0, 8.0)
    p = V.prepare_frames(frames, fps=25, duration=8.0)
    # the reference keeps 49 sync frames (1.96 s) and so only int(8 * 1.96) = 15 clip frames
    assert ref_sync.shape[0] == 49 and ref_clip.shape[0] == 15 and ref_dur == pytest.approx(1.96)
    assert p.sync_u8.shape == (50, 3, 224, 224) and p.clip_u8.shape == (16, 3, 384, 384)
    assert p.duration == 2.0 and p.fps == 25.0
    assert p.sync_indices == tuple(range(50)) and p.clip_indices[:3] == (0, 4, 7)
    # our sync frame i is source frame i: every reference sync frame appears, bit for bit
    ref_idx = official_select([i / 25 for i in range(50)], [25.0], 8.0)[0]
    sync = sync_input(p)
    for k in range(49):
        assert torch.equal(sync[ref_idx[k]], ref_sync[k])
    assert torch.equal(p.clip_frames()[:15], ref_clip)


@pytest.mark.parametrize("fps,n,duration", [(25.0, 50, 8.0), (25.0, 60, 2.0), (30.0, 47, 1.3),
                                            (24.0, 40, 8.0), (50.0, 70, 1.0), (12.5, 30, 8.0)])
def test_exact_rule_stays_within_one_frame_of_the_reference(fps, n, duration):
    """Our exact timing vs the reference's float accumulation (re-implemented above).

    Where both rules pick the same source frame the pixels are bit-identical; elsewhere the
    choice is at most one frame apart, and we never cover less of the video than the reference.
    """
    frames = random_video(n, 24, 32, seed=n)
    ref_clip, ref_sync, ref_dur = official_preprocess(frames, fps, duration)
    p = V.prepare_frames(frames, fps=fps, duration=duration)
    assert p.duration >= ref_dur - 1e-12
    assert len(p.sync_indices) >= ref_sync.shape[0] and len(p.clip_indices) >= ref_clip.shape[0]
    ref_clip_idx, ref_sync_idx = official_select([i / fps for i in range(n)], [8.0, 25.0], duration)
    for ours, ref, our_frames, ref_frames in ((p.clip_indices, ref_clip_idx, p.clip_frames(), ref_clip),
                                              (p.sync_indices, ref_sync_idx, sync_input(p), ref_sync)):
        k = ref_frames.shape[0]
        assert all(abs(a - b) <= 1 for a, b in zip(ours[:k], ref[:k]))
        same = [j for j in range(k) if ours[j] == ref[j]]
        assert same and torch.equal(our_frames[same], ref_frames[same])


def test_prepare_equals_reference_wherever_the_same_frame_is_chosen():
    frames = random_video(40, 30, 40, seed=3)  # 30 fps, 1.33 s, asked for 1.0 s
    ref_clip, ref_sync, ref_dur = official_preprocess(frames, 30.0, 1.0)
    p = V.prepare_frames(frames, fps=30, duration=1.0)
    assert p.duration == ref_dur == 1.0
    assert torch.equal(p.clip_frames(), ref_clip)  # 1/8 is exact in binary: same frames
    ref_idx = official_select([i / 30 for i in range(40)], [25.0], 1.0)[0]
    same = [k for k in range(25) if ref_idx[k] == p.sync_indices[k]]
    assert 0 < len(same) < 25  # the float drift moves some slots to the next frame
    assert torch.equal(sync_input(p)[same], ref_sync[same])


def test_whole_video_and_clamping(caplog):
    frames = random_video(51, 16, 16)  # 2.04 s at 25 fps
    whole = V.prepare_frames(frames, fps=25)
    assert whole.duration == 2.04 and whole.clip_u8.shape[0] == 16 and whole.sync_u8.shape[0] == 51
    assert V.prepare_frames(frames, fps=25, duration=0).duration == 2.04
    # as load_video: 16 clip frames (0 .. 15/8 s) cover only 2.0 s of a 2.0 s + 1 frame video
    trimmed = V.prepare_frames(frames[:50], fps=25)
    assert trimmed.duration == 2.0 and trimmed.clip_u8.shape[0] == 16 and trimmed.sync_u8.shape[0] == 50
    ten_fps = V.prepare_frames(frames[:20], fps=10)  # 2 s at 10 fps: 48 sync slots up to 1.9 s
    assert (ten_fps.duration, ten_fps.clip_u8.shape[0], ten_fps.sync_u8.shape[0]) == (1.92, 15, 48)
    short = V.prepare_frames(frames, fps=25, duration=1.5)
    assert (short.duration, short.clip_u8.shape[0], short.sync_u8.shape[0]) == (1.5, 12, 37)
    with caplog.at_level(logging.WARNING, logger=V.__name__):
        long = V.prepare_frames(frames, fps=25, duration=8.0)
    assert long.duration == 2.04 and "covers only 2.040 s" in caplog.text


def test_too_short_or_empty_video_is_an_error():
    with pytest.raises(SelvaError, match="at least 16 frames"):
        V.prepare_frames(random_video(15, 8, 8), fps=25)
    with pytest.raises(SelvaError, match="at least 16 frames"):
        V.prepare_frames(random_video(50, 8, 8), fps=25, duration=0.5)
    # 16 frames (0.64 s) are not enough: the 8 fps stream then covers only 5 / 8 s; 17 are
    with pytest.raises(SelvaError, match="only 0.625 s"):
        V.prepare_frames(random_video(16, 8, 8), fps=25)
    assert V.prepare_frames(random_video(17, 8, 8), fps=25).sync_u8.shape[0] == 17
    with pytest.raises(SelvaError, match="no frames"):
        V.prepare_frames(np.zeros((0, 8, 8, 3), np.uint8), fps=25)
    with pytest.raises(SelvaError, match="fps"):
        V.prepare_frames(random_video(20, 8, 8))
    with pytest.raises(SelvaError, match="fps must be positive, got 0.0"):
        V.prepare_frames(random_video(20, 8, 8), fps=0)


def test_float_frames_give_the_same_bytes_as_uint8():
    u8 = random_video(20, 20, 24)
    from_float = V.prepare_frames(torch.from_numpy(u8).float() / 255, fps=25)
    from_u8 = V.prepare_frames(u8, fps=25)
    assert torch.equal(from_float.clip_u8, from_u8.clip_u8) and torch.equal(from_float.sync_u8, from_u8.sync_u8)
    # out-of-range floats clamp, halves round to even
    x = torch.tensor([-0.1, 1.2, 0.5 / 255, 1.5 / 255]).reshape(1, 1, 4, 1).expand(1, 1, 4, 3)
    assert V._to_uint8_thwc(x)[0, 0, :, 0].tolist() == [0, 255, 0, 2]


def test_frame_times_variant_matches_constant_rate():
    frames = random_video(30, 8, 8)
    by_fps = V.prepare_frames(frames, fps=25)
    by_times = V.prepare_frames(frames, frame_times=[i / 25 for i in range(30)])
    assert by_times.clip_indices == by_fps.clip_indices and by_times.sync_indices == by_fps.sync_indices
    assert by_times.duration == by_fps.duration and by_times.fps == pytest.approx(25.0)


# ----------------------------------------------------------------------------------------- masks
def test_mask_blend():
    x = torch.rand(2, 3, 8, 8)
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0
    assert torch.equal(V.apply_mask(x, mask, 0.0), x)
    full = V.apply_mask(x, mask, 1.0)
    assert torch.equal(full[..., :4], x[..., :4])
    assert bool((full[..., 4:] == 0.5).all())
    assert bool((V.normalize_sync(full)[..., 4:] == 0).all())
    half = V.apply_mask(x, mask, 0.25)
    assert torch.allclose(half[..., 4:], x[..., 4:] * 0.75 + 0.5 * 0.25)


def test_mask_is_resized_to_the_frame():
    x = torch.rand(1, 3, 16, 32)
    mask = torch.zeros(4, 8)
    mask[:, :4] = 1
    out = V.apply_mask(x, mask, 1.0)
    assert torch.equal(out[..., :14], x[..., :14])
    assert bool((out[..., 18:] == 0.5).all())


def test_resize_mask():
    mask = torch.zeros(2, 10, 20, dtype=torch.bool)
    mask[1, :, :10] = True
    out = V.resize_mask(mask, 8)
    assert out.shape == (2, 8, 8) and out.dtype == torch.float32
    assert bool((out[0] == 0).all()) and bool((out[1, :, :3] == 1).all()) and bool((out[1, :, 5:] == 0).all())
    assert V.resize_mask(torch.rand(6, 6), 6).shape == (1, 6, 6)
    # a mask already at the frame size gives the same result as one resized inside apply_mask
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(V.apply_mask(x, out, 0.7), V.apply_mask(x, mask, 0.7))


def test_mask_errors():
    x = torch.rand(3, 3, 8, 8)
    with pytest.raises(SelvaError, match="2 frames"):
        V.apply_mask(x, torch.ones(2, 8, 8), 1.0)
    with pytest.raises(SelvaError, match="empty"):
        V.apply_mask(x, torch.ones(1, 0, 8), 1.0)
    with pytest.raises(SelvaError, match="strength"):
        V.apply_mask(x, torch.ones(1, 8, 8), 1.5)


def test_mask_follows_the_selected_frames():
    frames = random_video(50, 8, 8)
    p = V.prepare_frames(frames, fps=25)
    # mask frame i keeps the left i/50 of the image: the kept area tells which mask frame was used
    mask = torch.zeros(50, 1, 50)
    for i in range(50):
        mask[i, :, :i] = 1.0
    picked = V.mask_for_indices(mask, p.clip_indices, p.n_source_frames)
    assert [int(m.sum()) for m in picked] == list(p.clip_indices)
    clip = V.apply_mask(p.clip_frames(), picked, 1.0)
    assert bool((clip[0] == 0.5).all())  # frame 0: empty mask, all background
    static = V.mask_for_indices(torch.ones(1, 4, 4), p.sync_indices, p.n_source_frames)
    assert static.shape == (1, 4, 4)
    with pytest.raises(SelvaError, match="49 frames but the video has 50"):
        V.mask_for_indices(torch.ones(49, 8, 8), p.clip_indices, p.n_source_frames)


def test_prepare_reports_progress_and_can_be_cancelled():
    frames = random_video(50, 8, 8)
    done = []
    V.prepare_frames(frames, fps=25, on_frame=done.append)
    assert done == [16, 32, 48, 50]  # per chunk of 16 converted frames; every frame is used

    class Stop(Exception):
        pass

    def stop(n):
        raise Stop(n)

    with pytest.raises(Stop):
        V.prepare_frames(frames, fps=25, on_frame=stop)


# -------------------------------------------------------------------------------------- decoding
PALETTE = [(int(r), int(g), int(b)) for r, g, b in
           np.random.default_rng(7).integers(16, 240, size=(50, 3))]


def write_colours(path, first_frame=0, fmt=None):
    """64x48, 25 fps, 2 s; frame i is a flat colour PALETTE[i], shown at (first_frame + i) / 25 s."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.bit_rate = 4_000_000
        for i, colour in enumerate(PALETTE):
            img = np.empty((48, 64, 3), np.uint8)
            img[:] = colour
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = first_frame + i, Fraction(1, 25)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return write_colours(tmp_path_factory.mktemp("video") / "colours.mp4")


@pytest.fixture(scope="module", params=["mp4", "mpegts"])
def late_video(request, tmp_path_factory):
    """The colour video with its first frame at 2.0 s; MPEG-TS does not store a frame count."""
    fmt = request.param
    path = tmp_path_factory.mktemp("late") / f"late.{'ts' if fmt == 'mpegts' else 'mp4'}"
    write_colours(path, first_frame=50, fmt=fmt)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.start_time * s.time_base == 2  # the premise: the stream starts at 2 s
        assert (s.frames == 0) == (fmt == "mpegts")
    return path


def decode_all(path):
    frames, times = [], []
    with av.open(str(path)) as c:
        for f in c.decode(c.streams.video[0]):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(Fraction(f.pts) * f.time_base)
    return np.stack(frames), times


def nearest_colour(frame_chw):
    mean = frame_chw.float().mean(dim=(1, 2))
    d = ((torch.tensor(PALETTE, dtype=torch.float32) - mean) ** 2).sum(1)
    return int(d.argmin())


def test_decode_counts_and_content(mp4):
    p = V.decode_video(mp4)
    assert p.sync_u8.shape == (50, 3, 224, 224) and p.clip_u8.shape == (16, 3, 384, 384)
    assert p.duration == 2.0 and p.fps == 25.0 and p.n_source_frames == 50
    assert [nearest_colour(f) for f in p.sync_u8] == list(range(50))
    assert [nearest_colour(f) for f in p.clip_u8] == list(p.clip_indices)


def test_decode_matches_prepare_frames_on_the_same_frames(mp4):
    frames, times = decode_all(mp4)
    for kw in ({}, {"duration": 1.0}, {"duration": 9.0}):
        a = V.decode_video(mp4, **kw)
        b = V.prepare_frames(frames, fps=25, frame_times=times, **kw)
        assert a.duration == b.duration and a.clip_indices == b.clip_indices
        assert a.sync_indices == b.sync_indices
        assert torch.equal(a.clip_u8, b.clip_u8) and torch.equal(a.sync_u8, b.sync_u8)
    one = V.decode_video(mp4, duration=1.0)
    # decoding stopped after 1 s, the rest was not read
    assert (one.clip_u8.shape[0], one.sync_u8.shape[0], one.n_source_frames) == (8, 25, None)
    counted = V.decode_video(mp4, duration=1.0, count_frames=True)  # the rest only counted
    assert (counted.sync_u8.shape[0], counted.n_source_frames) == (25, 50)


def test_decode_keeps_the_frame_the_reference_reader_drops(mp4):
    frames, times = decode_all(mp4)
    float_times = [float(t) for t in times]  # the float frame.time the reference compares
    ref_clip, ref_sync, ref_dur = official_preprocess(frames, None, 8.0, times=float_times)
    assert (ref_dur, ref_sync.shape[0], ref_clip.shape[0]) == (pytest.approx(1.96), 49, 15)
    p = V.decode_video(mp4, duration=8.0)
    assert (p.duration, p.sync_u8.shape[0], p.clip_u8.shape[0]) == (2.0, 50, 16)
    # on identical frames the pixels are identical
    ref_idx = official_select(float_times, [25.0], 8.0)[0]
    sync = sync_input(p)
    for k in range(49):
        assert torch.equal(sync[ref_idx[k]], ref_sync[k])
    assert torch.equal(p.clip_frames()[:15], ref_clip)


def test_decode_with_start(mp4):
    p = V.decode_video(mp4, start=0.8)
    assert p.duration == pytest.approx(1.2) and p.sync_indices[:2] == (20, 21)
    assert nearest_colour(p.sync_u8[0]) == 20


def test_a_short_duration_after_a_start_blames_the_duration_not_the_start(mp4):
    # The video goes on past start + duration, so the start is not what is short: the error once
    # said "start 0.50 s leaves only 0.42 s of the 0.96 s video; ... choose a start of at most
    # 0.29 s", taking the first frame past the requested end for the end of a 2 s video.
    frames = random_video(50, 8, 8)  # 2 s at 25 fps, as mp4
    for prepare in (lambda: V.prepare_frames(frames, 25, 0.4, start=0.5),
                    lambda: V.decode_video(mp4, 0.4, start=0.5)):
        with pytest.raises(SelvaError, match=r"only 0.400 s could be used\. Use a longer clip or a "
                                             r"longer duration"):
            prepare()
    # a gap in the frames right after the start: none lies in the span, though the video goes on
    with pytest.raises(SelvaError, match="No video frame lies inside the requested time span"):
        V.prepare_frames(frames[:3], duration=0.1, start=0.5, frame_times=[0.0, 0.2, 1.5])


def test_decode_errors(tmp_path):
    with pytest.raises(SelvaError, match="not found"):
        V.decode_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 10)
    with pytest.raises(SelvaError, match="junk.mp4"):
        V.decode_video(junk)


def test_decode_reads_a_binary_stream_like_a_file(mp4):
    import io

    from_path = V.decode_video(mp4, duration=1.0)
    from_stream = V.decode_video(io.BytesIO(mp4.read_bytes()), duration=1.0)
    assert torch.equal(from_path.sync_u8, from_stream.sync_u8)
    assert from_path.sync_indices == from_stream.sync_indices
    assert from_path.source_size == from_stream.source_size


def test_source_size_and_stretched_mask_warning(caplog):
    frames = torch.zeros(20, 48, 64, 3, dtype=torch.uint8)
    p = V.prepare_frames(frames, fps=25)
    assert p.source_size == (48, 64)
    with caplog.at_level("WARNING"):
        V.warn_if_mask_stretched(torch.ones(1, 96, 128), p.source_size)  # same shape, larger
    assert caplog.text == ""
    with caplog.at_level("WARNING"):
        V.warn_if_mask_stretched(torch.ones(1, 64, 64), p.source_size)
    assert "stretched" in caplog.text


# ------------------------------------------------------------------- streams that start after 0 s
def test_late_stream_counts_time_from_its_first_frame(late_video):
    p = V.decode_video(late_video)
    assert p.duration == 2.0 and p.n_source_frames == 50
    assert p.sync_indices == tuple(range(50))
    assert [nearest_colour(f) for f in p.sync_u8] == list(range(50))  # sync frame k is source frame k
    assert [nearest_colour(f) for f in p.clip_u8] == list(p.clip_indices) and p.clip_indices[:3] == (0, 4, 7)
    one = V.decode_video(late_video, duration=1.0)
    assert one.duration == 1.0 and one.sync_indices == tuple(range(25))
    later = V.decode_video(late_video, start=0.8)
    assert later.duration == pytest.approx(1.2) and nearest_colour(later.sync_u8[0]) == 20


def test_mask_is_checked_against_the_whole_video_when_decoding_stops_early(late_video):
    p = V.decode_video(late_video, duration=1.0, count_frames=True)
    assert p.n_source_frames == 50  # counted past the decoded second
    with pytest.raises(SelvaError, match="mask has 40 frames but the video has 50"):
        V.mask_for_indices(torch.ones(40, 4, 4), p.sync_indices, p.n_source_frames)
    mask = torch.arange(50, dtype=torch.float32)[:, None, None].expand(50, 4, 4)
    picked = V.mask_for_indices(mask, p.sync_indices, p.n_source_frames)
    assert picked[:, 0, 0].tolist() == list(range(25))


def test_decode_reports_progress(late_video):
    seen = []
    V.decode_video(late_video, on_frame=seen.append)
    # every 10th decoded frame, in seconds from the stream's start (not from 2.0 s)
    assert seen == pytest.approx([0.36, 0.76, 1.16, 1.56, 1.96])


@pytest.mark.parametrize("error", [KeyError, ValueError])  # ValueError: also a decoding error type
def test_decode_is_cancelled_by_what_on_frame_raises(late_video, error):
    calls = []

    def cancel(seconds):
        calls.append(seconds)
        raise error("interrupted")

    with pytest.raises(error, match="interrupted"):
        V.decode_video(late_video, on_frame=cancel)
    assert len(calls) == 1


# --------------------------------------------------------------------- a short clip of a long file
class CountingReader(io.RawIOBase):
    """A seekable binary file that counts the bytes handed out."""

    def __init__(self, path):
        self._f = open(path, "rb")
        self.bytes_read = 0
        self.name = str(path)

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, buffer):
        n = self._f.readinto(buffer)
        self.bytes_read += n or 0
        return n

    def seek(self, offset, whence=io.SEEK_SET):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def close(self):
        self._f.close()
        super().close()


@pytest.fixture(scope="module")
def two_hour_video(tmp_path_factory):
    """A 2-hour 25 fps mp4 (180 000 frames): one tiny intra frame, muxed over and over."""
    path = tmp_path_factory.mktemp("long") / "two_hours.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 100, np.uint8), format="rgb24")
        frame.pts, frame.time_base = 0, Fraction(1, 25)
        data = bytes(next(iter(stream.encode(frame))))
        for i in range(25 * 7200):
            packet = av.Packet(data)
            packet.pts = packet.dts = i
            packet.time_base, packet.stream, packet.is_keyframe = Fraction(1, 25), stream, True
            out.mux(packet)
    return path


def test_a_short_request_does_not_read_a_long_file(two_hour_video, monkeypatch):
    packets = []
    counting = V._is_frame_packet
    monkeypatch.setattr(V, "_is_frame_packet", lambda p: packets.append(1) or counting(p))
    reader = CountingReader(two_hour_video)
    p = V.decode_video(reader, duration=8.0)
    assert p.duration == 8.0 and p.sync_u8.shape[0] == 200 and p.n_source_frames is None
    assert len(packets) < 25 * 10  # about 8 s of the 7200 s were demuxed
    # the container's index is read, but not the frames of the other 2 hours
    assert reader.bytes_read < 0.2 * two_hour_video.stat().st_size
    reader.close()

    # the frame count, when a per-frame mask asks for it, demuxes the whole file (no decoding)
    packets.clear()
    counted = V.decode_video(two_hour_video, duration=8.0, count_frames=True)
    assert counted.n_source_frames == 25 * 7200 and len(packets) > 25 * 7200  # + the flush packet
