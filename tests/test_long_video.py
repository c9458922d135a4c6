"""Long videos without models: the window plan, the blend weights, tiled decoding."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from comfyui_selva.selva.blending import even_spans, overlap_weights
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.long_video import (DEFAULT_OVERLAP_SECONDS, DEFAULT_WINDOW_SECONDS, UNIT,
                                            WindowOptions, blended_velocity, default_decode_spans,
                                            plan_windows)
from comfyui_selva.selva.tiled_decode import decode_tiles
from comfyui_selva.selva.variants import get_variant

VARIANTS = ("small_16k", "small_44k")


def _latent_rate(spec) -> Fraction:
    return Fraction(spec.sample_rate, spec.hop * 2)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("duration", [0.64, 5.0, 8.0, 8.3])
def test_up_to_one_window_is_the_whole_clip(name, duration):
    spec = get_variant(name)
    plan = plan_windows(spec, duration)
    seq = spec.seq_lengths(duration)
    assert plan.single and plan.total == seq
    (w,) = plan.windows
    assert w.latent == (0, seq.latent) and w.sync == (0, seq.sync) and w.clip == (0, seq.clip)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("duration", [8.4, 20.0, 33.33, 40.0, 600.0])
@pytest.mark.parametrize("options", [WindowOptions(), WindowOptions(6.0, 1.0), WindowOptions(10.0, 5.0)])
def test_windows_cover_the_clip_on_the_sync_and_latent_grids(name, duration, options):
    spec = get_variant(name)
    plan = plan_windows(spec, duration, options)
    seq = plan.total
    if duration <= options.window_seconds + float(UNIT):
        assert plan.single
        return
    assert len(plan.windows) > 1
    w_units = math.floor(Fraction(options.window_seconds).limit_denominator(1000) / UNIT)
    o_units = round(Fraction(options.overlap_seconds).limit_denominator(1000) / UNIT)
    rate = _latent_rate(spec)
    first, last = plan.windows[0], plan.windows[-1]
    assert first.latent[0] == 0 and first.sync[0] == 0 and first.clip[0] == 0
    assert last.latent[1] == seq.latent and last.sync[1] == seq.sync and last.clip[1] == seq.clip
    for w in plan.windows:
        k = Fraction(w.start).limit_denominator(1000) / UNIT
        assert k.denominator == 1, "a window starts on the 0.32 s sync grid"
        t = k * UNIT
        assert w.sync == (8 * int(k), 8 * (int(k) + w_units - 1)), "its sync tokens are the clip's own"
        # the nearest latent frame to the start: exact at 16 kHz, within half a frame at 44.1 kHz
        assert abs(w.latent[0] - t * rate) <= Fraction(1, 2)
        if spec.name == "small_16k":
            assert w.latent[0] == t * rate
        assert abs(w.clip[0] - t * 8) <= 1
    for prev, nxt in zip(plan.windows, plan.windows[1:]):
        assert nxt.start > prev.start
        overlap = prev.latent[1] - nxt.latent[0]
        assert overlap >= math.floor(o_units * UNIT * rate), "every join overlaps by at least the overlap"
        assert nxt.sync[0] - prev.sync[0] <= 8 * (w_units - o_units), "never more than one stride apart"


@pytest.mark.parametrize("name", VARIANTS)
def test_window_sizes_that_bound_memory_do_not_grow_with_the_duration(name):
    """What bounds sampling and decoding memory: every window (and decoder tile) is at most the
    window length + 0.32 s, at 10 s as at 40 s and 600 s; only the number of windows grows."""
    spec = get_variant(name)
    longest = spec.seq_lengths(DEFAULT_WINDOW_SECONDS + float(UNIT))
    sizes = {}
    for duration in (10.0, 40.0, 600.0):
        plan = plan_windows(spec, duration)
        lat, clip, sync = zip(*(w.lengths for w in plan.windows))
        assert max(lat) <= longest.latent and max(sync) <= longest.sync and max(clip) <= longest.clip
        sizes[duration] = len(plan.windows)
        spans = default_decode_spans(spec, plan.total.latent)
        assert max(b - a for a, b in spans) <= longest.latent
    assert sizes[10.0] == 2 and sizes[40.0] == 7
    # the cost of the default overlap: windows = ceil((D - 8) / 5.44) + 1
    assert sizes[600.0] == math.ceil((600 - 8) / (8 - DEFAULT_OVERLAP_SECONDS)) + 1


def test_bad_window_options_say_what_to_change():
    spec = get_variant("small_16k")
    with pytest.raises(SelvaError, match="overlap_seconds.*shorter than window_seconds.*Lower"):
        plan_windows(spec, 30.0, WindowOptions(window_seconds=4.0, overlap_seconds=4.0))
    with pytest.raises(SelvaError, match="overlap_seconds.*shorter than window_seconds"):
        plan_windows(spec, 30.0, WindowOptions(window_seconds=4.0, overlap_seconds=6.0))
    with pytest.raises(SelvaError, match="at least 0.32 s"):
        plan_windows(spec, 30.0, WindowOptions(overlap_seconds=0.0))
    with pytest.raises(SelvaError, match="too short"):
        plan_windows(spec, 30.0, WindowOptions(window_seconds=0.5, overlap_seconds=0.32))
    with pytest.raises(SelvaError, match="finite"):
        plan_windows(spec, 30.0, WindowOptions(window_seconds=float("nan")))


@pytest.mark.parametrize("duration", [8.4, 20.0, 41.7])
def test_blend_weights_sum_to_one_and_fade_smoothly(duration):
    plan = plan_windows(get_variant("small_44k"), duration)
    weights = plan.weights()
    total = torch.zeros(plan.total.latent)
    for w, weight in zip(plan.windows, weights):
        assert weight.shape == (w.latent[1] - w.latent[0],) and bool((weight > 0).all())
        total[w.latent[0]:w.latent[1]] += weight
        assert float(weight.diff().abs().max()) < 0.05, "no step inside a window's weights"
    torch.testing.assert_close(total, torch.ones_like(total))
    assert float(weights[0][0]) == 1.0 and float(weights[-1][-1]) == 1.0


@pytest.mark.parametrize("duration", [20.0, 41.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equal_window_velocities_blend_to_exactly_that_velocity(duration, dtype):
    plan = plan_windows(get_variant("small_44k"), duration)
    g = torch.Generator().manual_seed(0)
    whole = torch.randn(2, plan.total.latent, 40, generator=g).to(dtype)
    calls = []

    def window_velocity(i, t, x):
        a, b = plan.windows[i].latent
        assert x.shape[1] == b - a
        return whole[:, a:b].clone()

    blended = blended_velocity(plan, window_velocity, on_window=lambda: calls.append(1))(0.5, torch.zeros_like(whole))
    assert len(plan.windows) > 2 and len(calls) == len(plan.windows)
    assert blended.dtype == dtype and torch.equal(blended, whole)


def test_distinct_window_velocities_give_the_hand_weighted_sum():
    plan = plan_windows(get_variant("small_16k"), 30.0)
    g = torch.Generator().manual_seed(1)
    per_window = [torch.randn(1, w.latent[1] - w.latent[0], 20, generator=g) for w in plan.windows]
    blended = blended_velocity(plan, lambda i, t, x: per_window[i])(0.3, torch.zeros(1, plan.total.latent, 20))
    expected = torch.zeros(1, plan.total.latent, 20, dtype=torch.float64)
    for w, weight, v in zip(plan.windows, plan.weights(), per_window):
        a, b = w.latent
        for j in range(b - a):  # frame by frame, from the plan's own weights
            expected[0, a + j] += float(weight[j]) * v[0, j].double()
    torch.testing.assert_close(blended.double(), expected, rtol=0, atol=2e-6)
    # not simply the last window (or any single one) where windows overlap
    a, b = plan.windows[1].latent
    assert not torch.allclose(blended[:, a:a + 3], per_window[1][:, :3])


def test_even_spans_and_their_errors():
    assert even_spans(100, 120, 10) == [(0, 100)]
    spans = even_spans(1000, 250, 80)
    assert spans[0][0] == 0 and spans[-1][1] == 1000
    assert all(b - a == 250 for a, b in spans)
    assert all(p[1] - n[0] >= 80 for p, n in zip(spans, spans[1:]))
    with pytest.raises(ValueError):
        even_spans(1000, 250, 250)
    with pytest.raises(ValueError, match="cover"):
        overlap_weights([(0, 10), (20, 30)], 30)


def test_tiled_decode_of_a_local_decoder_equals_the_whole():
    """A decoder whose output depends only on nearby input (a conv) and a smooth blend: tiles
    give the single-piece result away from the edges, and exactly the same length."""
    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose1d(4, 2, kernel_size=8, stride=4, padding=2)
    x = torch.randn(3, 4, 500)
    with torch.no_grad():
        whole = conv(x)
        tiled = decode_tiles(conv, x, even_spans(500, 120, 30), 4)
        assert torch.equal(decode_tiles(conv, x, [(0, 500)], 4), whole), "one tile = one piece"
    assert tiled.shape == whole.shape
    # only the few edge samples of each tile differ, and those carry almost no weight
    torch.testing.assert_close(tiled, whole, atol=1e-3, rtol=0)
    calls = []
    decode_tiles(lambda t: conv(t).detach(), x, even_spans(500, 120, 30), 4,
                 on_tile=lambda d, n: calls.append((d, n)))
    assert calls == [(i, len(calls)) for i in range(1, len(calls) + 1)] and len(calls) > 3


def test_tiled_decode_rejects_a_decoder_of_the_wrong_length():
    with pytest.raises(ValueError, match="decoded to"):
        decode_tiles(lambda t: t[..., :-1], torch.zeros(1, 1, 100), even_spans(100, 40, 10), 1)
