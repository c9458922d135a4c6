"""Long videos end to end on tiny models: windows, tiles, streamed encoders, start offsets."""
from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
import torch

from comfyui_selva.selva import long_video, sampling
from comfyui_selva.selva import streamed_encode
from comfyui_selva.selva import video as video_ops
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.features import Features
from comfyui_selva.selva.hooks import Hooks, Interrupted
from comfyui_selva.selva.long_video import WindowOptions
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline
from comfyui_selva.selva.sampling import euler_sample, initial_noise
from comfyui_selva.selva.variants import LATENT_DOWNSAMPLE

from node_helpers import frames as make_frames

STEPS = 3


def load(models_dir, variant="tiny_16k", **kw) -> SelvaPipeline:
    return SelvaPipeline.load(LoadOptions(variant=variant, precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False, **kw))


@pytest.fixture(scope="module")
def pipe(models_dir):
    return load(models_dir)


@pytest.fixture(scope="module")
def text(pipe):
    return pipe.encoding.encode_text("a dog barking")


def synthetic_features(pipe, text, duration: float, seed: int = 0) -> Features:
    """Features of ``duration`` seconds with random sync features: the samplers only read the
    tensors, and running the tiny encoders over 30 s of frames would cost most of the test."""
    seq = pipe.variant.seq_lengths(duration)
    g = torch.Generator().manual_seed(seed)
    sync = torch.randn(1, seq.sync, pipe.variant.generator.sync_dim, generator=g)
    return Features(variant=pipe.variant.name, prompt="a dog barking", duration=duration, fps=25.0,
                    text_t5=text.t5.float(), text_t5_mask=text.t5_mask, text_clip=text.clip.float(),
                    sync_features=sync, sync_frames_u8=torch.zeros(1, 224, 224, 3, dtype=torch.uint8))


def todays_output(pipe, features, duration, steps, cfg, seed, negative=""):
    """The one-piece sampler and decoder as they were before windows existed."""
    seq = pipe.variant.seq_lengths(duration)
    neg = pipe.encoding.encode_clip_text([negative])
    with pipe.use_generator() as gen:
        gen.set_seq_lengths(seq.latent, seq.clip, seq.sync)
        sync = features.sync_features[:, :seq.sync]
        cond = gen.preprocess_conditions(gen.empty_clip_sequence(1), sync, features.text_clip)
        uncond = gen.empty_conditions(1, negative_text_clip_f=neg)
        x0 = initial_noise(1, seq.latent, gen.latent_dim, seed=seed, device="cpu", dtype=torch.float32)
        latent = gen.unnormalize(euler_sample(lambda t, x: gen.cfg_velocity(t, x, cond, uncond, cfg),
                                              x0, steps))
    with pipe.manager.use("vae") as vae:
        mel = vae.decode(latent.transpose(1, 2))
    with pipe.manager.use("vocoder") as vocoder:
        return vocoder(mel).float()


# ------------------------------------------------------------------------------ one window
@pytest.mark.parametrize("duration, options", [
    (8.0, WindowOptions()),
    (8.3, WindowOptions()),  # up to 0.32 s past the window is still one window
    (3.0, WindowOptions(window_seconds=1.0, overlap_seconds=0.32)),  # a short clip, short windows: many
    (11.0, WindowOptions(window_seconds=12.0)),
])
def test_at_most_one_window_gives_todays_output_bit_for_bit(pipe, text, duration, options):
    f = synthetic_features(pipe, text, duration)
    got = pipe.generate(f, steps=STEPS, seed=4, cfg_strength=4.5, negative_prompt="music",
                        windows=options)
    single = long_video.plan_windows(pipe.variant, duration, options).single
    want = todays_output(pipe, f, duration, STEPS, 4.5, 4, "music")
    if single:
        assert torch.equal(got, want)
    else:
        assert got.shape == want.shape and not torch.equal(got, want)


# ------------------------------------------------------------------------------ long clips
@pytest.mark.parametrize("variant, duration", [("tiny_16k", 20.0), ("tiny_16k", 33.33),
                                               ("tiny_44k", 21.7)])
def test_long_output_is_exact_to_the_sample(models_dir, text, variant, duration):
    p = load(models_dir, variant)
    f = synthetic_features(p, text, duration)
    audio = p.generate(f, steps=2, seed=0)
    assert not p.plan(f).single
    assert audio.shape == (1, 1, p.variant.seq_lengths(duration).audio_samples)
    assert torch.isfinite(audio).all() and audio.abs().max() > 0


def test_noise_is_one_latent_for_the_whole_duration_and_runs_repeat(pipe, text, monkeypatch):
    f = synthetic_features(pipe, text, 20.0)
    seen = []
    real = sampling.euler_sample
    monkeypatch.setattr(sampling, "euler_sample", lambda fn, x0, steps, **kw: seen.append(x0) or real(fn, x0, steps, **kw))
    a = pipe.generate(f, steps=2, seed=11, batch_size=2)
    seq = pipe.variant.seq_lengths(20.0)
    want = initial_noise(2, seq.latent, pipe.variant.generator.latent_dim, seed=11, device="cpu",
                         dtype=torch.float32)
    assert torch.equal(seen[0], want)
    assert torch.equal(a, pipe.generate(f, steps=2, seed=11, batch_size=2)), "same inputs, same audio"
    # batch variations still work: variation i is a single run with seed + i
    torch.testing.assert_close(a[1:], pipe.generate(f, steps=2, seed=12), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[0], a[1])


def test_progress_counts_windows_times_steps_and_cancel_stops_between_steps(pipe, text):
    f = synthetic_features(pipe, text, 20.0)
    n = len(pipe.plan(f).windows)
    log = []
    pipe.sample_latent(f, steps=STEPS, hooks=Hooks(progress=lambda s, d, t: log.append((s, d, t))))
    sampling_log = [(d, t) for s, d, t in log if s == "sampling"]
    assert sampling_log == [(i, n * STEPS) for i in range(1, n * STEPS + 1)]

    calls = []
    with pipe.use_generator() as gen:
        handle = gen.final_layer.register_forward_hook(lambda *a: calls.append(1))
    try:
        hooks = Hooks(progress=lambda s, d, t: None, interrupted=lambda: len(calls) >= 5)
        with pytest.raises(Interrupted):
            pipe.sample_latent(f, steps=STEPS, hooks=hooks)
    finally:
        handle.remove()
    # the cancel is seen after each window: at most the window that was running finishes
    # (one generator pass per window with batched guidance, two without)
    assert 5 <= len(calls) <= 6 < n * STEPS


class _ScaleOutput:
    """A generator patch (as LoRA / steering loaders attach them) that counts its uses."""

    def __init__(self, scale: float):
        self.scale, self.calls = scale, 0

    @contextlib.contextmanager
    def attach(self, generator):
        def hook(module, args, out):
            self.calls += 1
            return out * self.scale
        handle = generator.final_layer.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def test_generator_patches_apply_to_every_window(pipe, text):
    f = synthetic_features(pipe, text, 20.0)
    n = len(pipe.plan(f).windows)
    patch = _ScaleOutput(0.5)
    patched = pipe.with_patches(generator=[patch]).sample_latent(f, steps=STEPS, seed=2)
    assert patch.calls >= n * STEPS and patch.calls % (n * STEPS) == 0
    base = pipe.sample_latent(f, steps=STEPS, seed=2)
    assert not torch.allclose(patched, base)
    assert torch.equal(pipe.with_patches(generator=[]).sample_latent(f, steps=STEPS, seed=2), base)


# ----------------------------------------------------------------------------------- seams
def _jumps(audio: torch.Tensor) -> torch.Tensor:
    return (audio[1:] - audio[:-1]).abs()


def _flux(audio: torch.Tensor, n_fft: int = 512, hop: int = 128) -> torch.Tensor:
    spec = torch.stft(audio, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs()
    return (spec[:, 1:] - spec[:, :-1]).clamp(min=0).pow(2).sum(0).sqrt()  # per frame step


def _seam_report(audio: torch.Tensor, joins: list[int], radius: int = 256, hop: int = 128):
    """(max jump near joins, max jump elsewhere, max flux near joins, max flux elsewhere)."""
    jumps, flux = _jumps(audio), _flux(audio, hop=hop)
    near = torch.zeros_like(jumps, dtype=torch.bool)
    near_f = torch.zeros_like(flux, dtype=torch.bool)
    for j in joins:
        near[max(j - radius, 0):j + radius] = True
        near_f[max(j // hop - 4, 0):j // hop + 4] = True
    return (float(jumps[near].max()), float(jumps[~near].max()),
            float(flux[near_f].max()), float(flux[~near_f].max()))


def test_no_seams_at_the_joins(pipe, text):
    f = synthetic_features(pipe, text, 30.0, seed=3)
    plan = pipe.plan(f)
    audio = pipe.generate(f, steps=4, seed=1)[0, 0]
    per_latent = pipe.variant.hop * LATENT_DOWNSAMPLE
    # every window edge inside the clip: where a sampling window or a decoder tile begins or ends
    joins = sorted({w.latent[0] * per_latent for w in plan.windows[1:]} |
                   {w.latent[1] * per_latent for w in plan.windows[:-1]})
    assert len(joins) >= 2 * (len(plan.windows) - 1) - 1
    jump_near, jump_else, flux_near, flux_else = _seam_report(audio, joins)
    assert jump_near <= jump_else and flux_near <= flux_else

    # the same check sees a real seam: a level step spliced into the same audio
    cut = (joins[0] + joins[1]) // 2
    spliced = torch.cat([audio[:cut], 4 * audio[cut:cut + 20000], audio[cut + 20000:]])
    jn, je, fn, fe = _seam_report(spliced, [cut])
    assert jn > je or fn > fe


def test_tiled_decode_matches_the_single_piece_closely(pipe, text):
    f = synthetic_features(pipe, text, 20.0)
    plan = pipe.plan(f)
    latent = pipe.sample_latent(f, steps=2)
    tiled = pipe.decode(latent, spans=[w.latent for w in plan.windows])
    whole = pipe.decode(latent, spans=[(0, latent.shape[1])])
    assert tiled.shape == whole.shape
    error = (tiled - whole).pow(2).mean() / whole.pow(2).mean()
    assert float(error) < 1e-3, f"tiled decode is {10 * torch.log10(error):.1f} dB off"
    # without spans a long latent is tiled by default (as close), a short one is not
    default = pipe.decode(latent)
    assert not torch.equal(default, whole)
    assert float((default - whole).pow(2).mean() / whole.pow(2).mean()) < 1e-3
    short = latent[:, :200]
    assert torch.equal(pipe.decode(short), pipe.decode(short, spans=[(0, 200)]))


def test_sampling_and_decoding_never_see_more_than_a_window(pipe, text):
    f = synthetic_features(pipe, text, 40.0)
    longest = pipe.variant.seq_lengths(long_video.DEFAULT_WINDOW_SECONDS + float(long_video.UNIT))
    sizes = {"generator": [], "vae": [], "vocoder": []}
    with pipe.use_generator() as gen:
        hooks = [gen.audio_input_proj.register_forward_hook(lambda m, a, o: sizes["generator"].append(a[0].shape[1]))]
    with pipe.manager.use("vae") as vae:
        hooks.append(vae.decoder.register_forward_hook(lambda m, a, o: sizes["vae"].append(a[0].shape[-1])))
    with pipe.manager.use("vocoder") as voc:
        hooks.append(voc.register_forward_hook(lambda m, a, o: sizes["vocoder"].append(a[0].shape[-1])))
    try:
        audio = pipe.generate(f, steps=1)
    finally:
        for h in hooks:
            h.remove()
    assert audio.shape[-1] == pipe.variant.seq_lengths(40.0).audio_samples
    assert max(sizes["generator"]) <= longest.latent
    assert max(sizes["vae"]) <= longest.latent
    assert max(sizes["vocoder"]) <= longest.latent * LATENT_DOWNSAMPLE


# ----------------------------------------------------------------------- streamed features
def test_streamed_sync_and_clip_encoding_equal_the_one_piece_encoders(models_dir, text):
    p = load(models_dir, clip_frames=True)
    fr = video_ops.prepare_frames(make_frames(4.0), fps=25.0)
    mask = torch.rand(fr.sync_u8.shape[0], 224, 224)
    with p.manager.use("text_synch") as net:
        t5, m = net.prepend_sup_tokens(text.t5, text.t5_mask)
        frames = video_ops.normalize_sync(video_ops.apply_mask(video_ops.to_float01(fr.sync_u8), mask, 0.7))
        whole = net.encode(frames[None], t5, m)
        for chunk in (1, 3, 100):
            got = streamed_encode.encode_sync(net, fr.sync_u8, mask, 0.7, t5, m, segments_per_chunk=chunk)
            assert torch.equal(got, whole), chunk
            # the text-independent half alone (textual inversion's clip_t5 training keeps it)
            tokens = streamed_encode.sync_backbone_tokens(net, fr.sync_u8, mask, 0.7, segments_per_chunk=chunk)
            assert torch.equal(net.encode_tokens(tokens, t5, m), whole), chunk
    clip_mask = torch.rand(fr.clip_u8.shape[0], 384, 384)
    with p.manager.use("clip") as clip:
        frames01 = video_ops.apply_mask(video_ops.to_float01(fr.clip_u8), clip_mask, 1.0)
        whole = clip.encode_frames(frames01[None], batch_size=40)
        got = streamed_encode.encode_clip(clip, fr.clip_u8, clip_mask, 1.0, torch.float32, batch_size=7)
    torch.testing.assert_close(got, whole, atol=1e-6, rtol=1e-6)


def test_sync_encoder_sees_one_chunk_of_frames_at_a_time(pipe):
    seen = []
    fr = video_ops.prepare_frames(make_frames(20.0), fps=25.0)
    with pipe.manager.use("text_synch") as net:
        real = net.encode
        net.encode = lambda frames, *a, **k: seen.append(frames.shape[1]) or real(frames, *a, **k)
        try:
            feats = pipe.encode(pipe.prepare(make_frames(20.0), 25.0), "rain")
        finally:
            del net.encode
    per_chunk = (streamed_encode.SYNC_SEGMENTS_PER_CHUNK - 1) * 8 + 16  # frames of one chunk
    assert max(seen) <= per_chunk and len(seen) == -(-((fr.sync_u8.shape[0] - 16) // 8 + 1) // 24)
    assert feats.sync_features.shape[1] == pipe.variant.seq_lengths(20.0).sync


# ---------------------------------------------------------------------------------- start
def test_start_skips_into_the_video(pipe, tmp_path):
    from node_helpers import write_video

    video = make_frames(6.0)
    shifted = pipe.prepare(video, 25.0, start=2.0, duration=3.0).frames
    direct = pipe.prepare(video[50:], 25.0, duration=3.0).frames
    assert torch.equal(shifted.sync_u8, direct.sync_u8) and torch.equal(shifted.clip_u8, direct.clip_u8)
    assert shifted.start == 2.0 and shifted.duration == 3.0
    # the same from a file, decoded in a stream
    path = write_video(tmp_path / "six.mp4", video)
    from_file = pipe.prepare(path, start=2.0, duration=3.0).frames
    whole_file = pipe.prepare(path).frames
    assert torch.equal(from_file.sync_u8, whole_file.sync_u8[50:125])
    assert from_file.start == 2.0
    # without a duration it runs to the end
    assert pipe.prepare(video, 25.0, start=2.0).frames.duration == pytest.approx(4.0)


@pytest.mark.parametrize("from_file", [False, True])
def test_bad_start_is_a_clear_error(pipe, tmp_path, from_file):
    from node_helpers import write_video

    video = make_frames(3.0)
    path = write_video(tmp_path / "three.mp4", video) if from_file else None

    def prepare(start, duration=None):
        if from_file:
            return pipe.prepare(path, start=start, duration=duration)
        return pipe.prepare(video, 25.0, start=start, duration=duration)

    with pytest.raises(SelvaError, match=r"start 5.00 s is at or beyond the end of the video \(3.00 s"):
        prepare(5.0)
    with pytest.raises(SelvaError, match=r"start 2.60 s leaves only 0.40 s.*at most 2.33 s"):
        prepare(2.6, 4.0)
    with pytest.raises(SelvaError, match="negative"):
        prepare(-1.0)
    assert prepare(2.33).frames.duration == pytest.approx(0.64)  # the latest start it names
    with pytest.raises(SelvaError, match="at most 2.33 s"):
        prepare(2.34)


def test_features_keep_their_start(pipe, tmp_path):
    f = pipe.extract_features(make_frames(3.0), 25.0, "rain", start=1.0)
    assert f.start == 1.0
    f.save(tmp_path / "f.npz")
    assert Features.load(tmp_path / "f.npz").start == 1.0
    # the prompt override keeps it too
    assert replace(f, prompt="x").start == 1.0
