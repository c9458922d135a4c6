"""SelVA Feature Extractor through NODE_CLASS_MAPPINGS: inputs, caching, masks, bad inputs."""
from __future__ import annotations

import io
import logging
import tempfile

import pytest
import torch

from comfy_pack import pack_module
from node_helpers import (H, W, FakeVideoFromFile, VideoFromComponents, decode_video,
                          env_for_models, frames, run_node, write_video)


@pytest.fixture()
def spy(model, monkeypatch):
    """Counts calls of the pipeline's encoders (the expensive part the cache must skip)."""
    calls = []
    real = model.encoding._encode

    def encode(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(model.encoding, "_encode", encode)
    return calls


@pytest.fixture()
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


def extract(model, video, cache_dir, **kw):
    args = dict(model=model, video=video, prompt="a dog barking", fps=25.0, duration=0.0,
                cache_dir=cache_dir, mask_strength=1.0, mask_clip=True, mask_sync=True)
    args.update(kw)
    return run_node("SelvaFeatureExtractor", **args)


SelvaError = pack_module("selva.errors").SelvaError


# ----------------------------------------------------------------------------------- outputs
def test_outputs_types_and_shapes(model, cache_dir):
    feats, fps, prompt = extract(model, frames(1.0), cache_dir)
    assert isinstance(fps, float) and fps == 25.0
    assert prompt == "a dog barking" and feats.prompt == prompt
    assert feats.variant == "tiny_16k" and feats.duration == pytest.approx(1.0)
    seq = model.variant.seq_lengths(1.0)
    assert feats.sync_features.shape[:2] == (1, seq.sync)
    assert torch.isfinite(feats.sync_features).all()


def test_duration_zero_means_the_whole_video_and_a_given_one_is_used(model, cache_dir):
    whole, _, _ = extract(model, frames(2.0), cache_dir)
    part, _, _ = extract(model, frames(2.0), cache_dir, duration=1.5)
    assert whole.duration == pytest.approx(2.0) and part.duration == pytest.approx(1.5)


def test_duration_longer_than_the_video_is_clamped_with_a_warning(model, cache_dir, caplog):
    with caplog.at_level(logging.WARNING):
        feats, _, _ = extract(model, frames(1.0), cache_dir, duration=5.0)
    assert feats.duration == pytest.approx(1.0)
    assert any(r.levelno == logging.WARNING and "1.000" in r.getMessage() for r in caplog.records)


def test_video_info_sets_the_frame_rate(model, cache_dir):
    # 25 frames that really are 12.5 fps (VHS select_every_nth=2) cover 2 s, not 1 s
    feats, fps, _ = extract(model, frames(1.0), cache_dir, fps=0.0,
                            video_info={"loaded_fps": 12.5, "source_fps": 25.0})
    assert fps == 12.5 and feats.duration == pytest.approx(2.0, abs=0.05)


def test_image_batch_without_a_frame_rate_is_refused(model, cache_dir):
    with pytest.raises(SelvaError, match="fps"):
        extract(model, frames(1.0), cache_dir, fps=0.0)


# ------------------------------------------------------------------------------ VIDEO input
@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames(1.0, seed=5), fps=25)


def test_native_video_is_streamed_and_matches_the_decoded_frames(model, cache_dir, video_file):
    streamed, fps, _ = extract(model, FakeVideoFromFile(str(video_file)), cache_dir, fps=0.0)
    images, rate = decode_video(video_file)
    in_memory, _, _ = extract(model, images, cache_dir, fps=rate)
    assert fps == pytest.approx(25.0)
    assert torch.equal(streamed.sync_frames_u8, in_memory.sync_frames_u8)
    torch.testing.assert_close(streamed.sync_features, in_memory.sync_features)


def test_native_video_from_memory_stream(model, cache_dir, video_file):
    buffer = io.BytesIO(video_file.read_bytes())
    feats, fps, _ = extract(model, FakeVideoFromFile(buffer), cache_dir, fps=0.0)
    assert fps == pytest.approx(25.0) and feats.duration == pytest.approx(1.0)


def test_video_built_from_images_uses_its_frames(model, cache_dir):
    images = frames(1.0, seed=9)
    a, fps, _ = extract(model, VideoFromComponents(images, 25.0), cache_dir, fps=0.0)
    b, _, _ = extract(model, images, cache_dir, fps=25.0)
    assert fps == 25.0
    assert torch.equal(a.sync_features, b.sync_features)


# ---------------------------------------------------------------------------------- caching
def test_second_run_loads_the_cache_without_the_encoders(model, cache_dir, spy):
    video = frames(1.0, seed=1)
    first, _, _ = extract(model, video, cache_dir)
    assert len(spy) == 1
    second, _, _ = extract(model, video.clone(), cache_dir)
    assert len(spy) == 1, "the encoders ran again for identical inputs"
    torch.testing.assert_close(second.sync_features, first.sync_features)
    torch.testing.assert_close(second.text_t5, first.text_t5)


def _one_pixel_changed(video):
    out = video.clone()
    out[-1, -1, -1, 0] = 1.0 - out[-1, -1, -1, 0]
    return out


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("shared_cache"))


@pytest.mark.parametrize("change", [
    "last_pixel", "fps", "duration", "prompt", "mask", "mask_values", "mask_strength", "mask_sync",
])
def test_any_changed_input_misses_the_cache(model, shared_cache, spy, change, tmp_path):
    video = frames(1.0, seed=2)
    mask = torch.ones(1, H, W)
    mask[:, :, :W // 2] = 0.0
    base = dict(video=video, fps=25.0, duration=0.0, prompt="a dog barking", mask=mask,
                mask_strength=0.8, mask_sync=True)
    extract(model, cache_dir=shared_cache, **base)  # encoded once for all parameters
    # each parameter starts from a copy holding only the unchanged entry (two changes may
    # rightly share a key, e.g. no mask vs. a mask applied to no path)
    import shutil

    cache_dir = str(tmp_path / "cache")
    shutil.copytree(shared_cache, cache_dir)
    extract(model, cache_dir=cache_dir, **base)
    before = len(spy)
    changed = dict(base)
    if change == "last_pixel":
        changed["video"] = _one_pixel_changed(video)
    elif change == "fps":
        changed["fps"] = 30.0
    elif change == "duration":
        changed["duration"] = 0.8
    elif change == "prompt":
        changed["prompt"] = "a dog barking."
    elif change == "mask":
        changed["mask"] = None
    elif change == "mask_values":
        m = mask.clone()
        m[0, 0, 40] = 0.5
        changed["mask"] = m
    elif change == "mask_strength":
        changed["mask_strength"] = 0.7
    elif change == "mask_sync":
        changed["mask_sync"] = False
    extract(model, cache_dir=cache_dir, **changed)
    assert len(spy) == before + 1, f"changing {change} hit the cache"
    extract(model, cache_dir=cache_dir, **base)
    assert len(spy) == before + 1, "the unchanged inputs should still hit"


def test_other_precision_misses_the_cache(model, models_dir, cache_dir, spy, monkeypatch):
    env_for_models(monkeypatch, models_dir)
    video = frames(1.0, seed=3)
    extract(model, video, cache_dir)
    (bf16,) = run_node("SelvaModelLoader", variant="tiny_16k", precision="bf16",
                       offload_strategy="auto")
    calls = []
    real = bf16.encode
    monkeypatch.setattr(bf16, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    extract(bf16, video, cache_dir)
    assert calls == [1]


def test_corrupt_cache_file_is_set_aside_and_recomputed(model, cache_dir, spy, tmp_path):
    video = frames(1.0, seed=4)
    extract(model, video, cache_dir)
    files = list((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 1
    files[0].write_bytes(b"not a zip file at all")
    feats, _, _ = extract(model, video, cache_dir)
    assert len(spy) == 2 and torch.isfinite(feats.sync_features).all()
    assert list((tmp_path / "cache").glob("*.corrupt")), "the bad entry should be kept aside"


def test_unwritable_cache_dir_only_costs_the_cache(model, spy, tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING):
        feats, _, _ = extract(model, frames(1.0, seed=6), str(blocker / "cache"))
    assert torch.isfinite(feats.sync_features).all()
    assert any("cache" in r.getMessage().lower() for r in caplog.records if r.levelno >= logging.WARNING)


def test_empty_cache_dir_uses_the_system_temp_folder(model, spy, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systemp"))
    extract(model, frames(1.0, seed=7), "")
    assert list((tmp_path / "systemp" / "selva_features").glob("*.npz"))
    # the folder `python -m selva cache` reads by default
    assert pack_module("selva.features").default_cache_dir() == tmp_path / "systemp" / "selva_features"


# ------------------------------------------------------------------------------------ masks
def test_mask_strength_zero_has_no_effect(model, cache_dir):
    video = frames(1.0, seed=8)
    plain, _, _ = extract(model, video, cache_dir)
    zero = torch.zeros(1, H, W)
    masked, _, _ = extract(model, video, cache_dir, mask=zero, mask_strength=0.0)
    torch.testing.assert_close(masked.sync_features, plain.sync_features)


def test_all_keep_mask_has_no_effect(model, cache_dir):
    video = frames(1.0, seed=8)
    plain, _, _ = extract(model, video, cache_dir)
    masked, _, _ = extract(model, video, cache_dir, mask=torch.ones(H, W))
    torch.testing.assert_close(masked.sync_features, plain.sync_features)


def test_full_background_mask_is_a_neutral_fill(model, cache_dir):
    """Everything masked at strength 1: the encoder sees only grey, whatever the video was."""
    zero = torch.zeros(1, H, W)
    a, _, _ = extract(model, frames(1.0, seed=10), cache_dir, mask=zero)
    b, _, _ = extract(model, frames(1.0, seed=11), cache_dir, mask=zero)
    plain, _, _ = extract(model, frames(1.0, seed=10), cache_dir)
    torch.testing.assert_close(a.sync_features, b.sync_features)
    assert not torch.allclose(a.sync_features, plain.sync_features)


def test_mask_can_be_switched_off_for_the_sync_path(model, cache_dir):
    video = frames(1.0, seed=12)
    plain, _, _ = extract(model, video, cache_dir)
    off, _, _ = extract(model, video, cache_dir, mask=torch.zeros(1, H, W), mask_sync=False)
    torch.testing.assert_close(off.sync_features, plain.sync_features)


def test_per_frame_mask_is_accepted(model, cache_dir):
    video = frames(1.0, seed=13)
    mask = torch.rand(video.shape[0], H, W)
    feats, _, _ = extract(model, video, cache_dir, mask=mask)
    assert torch.isfinite(feats.sync_features).all()


def test_mask_with_the_wrong_frame_count_is_refused(model, cache_dir):
    video = frames(1.0, seed=14)
    with pytest.raises(SelvaError, match="frames"):
        extract(model, video, cache_dir, mask=torch.ones(video.shape[0] + 3, H, W))


def test_mask_of_another_resolution_is_resized(model, cache_dir):
    video = frames(1.0, seed=15)
    small = torch.zeros(1, H // 2, W // 2)
    a, _, _ = extract(model, video, cache_dir, mask=small)
    b, _, _ = extract(model, video, cache_dir, mask=torch.zeros(1, H, W))
    torch.testing.assert_close(a.sync_features, b.sync_features)


def test_mask_of_a_wrong_shape_is_refused(model, cache_dir):
    with pytest.raises(SelvaError, match="mask"):
        extract(model, frames(1.0), cache_dir, mask=torch.ones(2, 3, H, W))


# ------------------------------------------------------------------------------- bad inputs
def test_empty_video_is_refused(model, cache_dir):
    with pytest.raises(SelvaError, match="(?i)empty|no frames"):
        extract(model, torch.zeros(0, H, W, 3), cache_dir)


def test_video_shorter_than_a_sync_segment_is_refused(model, cache_dir):
    with pytest.raises(SelvaError, match="(?i)too short|shorter"):
        extract(model, frames(0.4), cache_dir)  # 10 frames < one 16-frame segment


def test_something_else_than_a_video_is_refused(model, cache_dir):
    with pytest.raises(SelvaError, match="IMAGE"):
        extract(model, "clip.mp4", cache_dir)


def test_clip_frames_mode_uses_the_clip_mask(models_dir, cache_dir, monkeypatch):
    env_for_models(monkeypatch, models_dir)
    (with_clip,) = run_node("SelvaModelLoader", variant="tiny_16k", precision="fp32",
                            offload_strategy="auto", clip_frames=True)
    video = frames(1.0, seed=16)
    mask = torch.zeros(1, H, W)
    calls = []
    real = with_clip.encode
    monkeypatch.setattr(with_clip, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    on, _, _ = extract(with_clip, video, cache_dir, mask=mask, mask_clip=True)
    off, _, _ = extract(with_clip, video, cache_dir, mask=mask, mask_clip=False)
    assert len(calls) == 2, "mask_clip changes the CLIP features, so it must miss the cache"
    assert on.clip_features is not None and on.clip_features.shape[1] == 8  # 8 fps for 1 s
    assert not torch.allclose(on.clip_features, off.clip_features)
    torch.testing.assert_close(on.sync_features, off.sync_features)


def test_rgba_and_grey_image_batches_are_accepted():
    resolve = pack_module("nodes.video_input").resolve_video
    rgb = frames(1.0)
    rgba = torch.cat([rgb, torch.ones_like(rgb[..., :1])], dim=-1)
    assert torch.equal(resolve(rgba, fps=25.0).frames, rgb)
    grey = resolve(rgb[..., :1], fps=25.0).frames
    assert grey.shape == rgb.shape and torch.equal(grey[..., 2], rgb[..., 0])


def test_named_clips_take_a_number_free_for_both_the_features_and_the_audio(model, tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "dog_001.wav").write_bytes(b"a recording the user put here")  # no .npz of that number
    (folder / "dog_002.npz").write_bytes(b"features from before")
    audio = {"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}
    extract(model, frames(1.0), str(folder), name="dog", audio=audio)
    extract(model, frames(1.0), str(folder), name="dog", audio=audio)
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert names == ["dog_001.wav", "dog_002.npz", "dog_003.npz", "dog_003.wav", "dog_004.npz", "dog_004.wav"]
    assert (folder / "dog_001.wav").read_bytes() == b"a recording the user put here"
    assert (folder / "dog_002.npz").read_bytes() == b"features from before"
