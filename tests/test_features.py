"""Features files, the feature cache and cache keys."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.features import FeatureCache, Features, content_hash


def make_features(clip=True, weight=True) -> Features:
    return Features(
        variant="small_16k", prompt="a dog barks", duration=2.0, fps=25.0,
        text_t5=torch.randn(1, 6, 768), text_t5_mask=torch.ones(1, 6, dtype=torch.long),
        text_clip=torch.randn(1, 77, 1024), sync_features=torch.randn(1, 40, 768).bfloat16(),
        sync_frames_u8=torch.randint(0, 255, (50, 224, 224, 3), dtype=torch.uint8),
        clip_features=torch.randn(1, 16, 1024) if clip else None,
        sync_mask=torch.rand(1, 224, 224) if weight else None, mask_strength=0.7)


@pytest.mark.parametrize("optional", [True, False])
def test_save_load_roundtrip(tmp_path, optional):
    f = make_features(clip=optional, weight=optional)
    f.save(tmp_path / "f.npz")
    g = Features.load(tmp_path / "f.npz")
    assert (g.variant, g.prompt, g.duration, g.fps) == (f.variant, f.prompt, f.duration, f.fps)
    assert torch.equal(g.sync_features, f.sync_features.float())  # bf16 values kept exactly
    assert torch.equal(g.sync_frames_u8, f.sync_frames_u8) and g.sync_frames_u8.dtype == torch.uint8
    assert torch.equal(g.text_t5_mask, f.text_t5_mask)
    assert (g.clip_features is not None) == optional and (g.sync_mask is not None) == optional
    assert g.mask_strength == 0.7


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    make_features().save(tmp_path / "a" / "f.npz")
    assert sorted(os.listdir(tmp_path / "a")) == ["f.npz"]


@pytest.mark.parametrize("name", ["feats", "feats.bin"])
def test_save_to_a_name_without_npz_writes_that_file(tmp_path, name):
    # np.savez appends ".npz" to a path that lacks it: the features went into a stray temp file
    # and the named file was left empty.
    f = make_features(clip=False, weight=False)
    f.save(tmp_path / name, compress=name == "feats")
    assert os.listdir(tmp_path) == [name]
    assert torch.equal(Features.load(tmp_path / name).text_clip, f.text_clip)


def test_load_rejects_foreign_and_corrupt_files(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(SelvaError, match="other.npz"):
        Features.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SelvaError, match="extract the features again"):
        Features.load(tmp_path / "junk.npz")


def test_header_without_a_field_is_an_unreadable_entry_not_a_crash(tmp_path):
    # A header lacking a field raised KeyError, which the cache (catching SelvaError) let through.
    import json
    arrays = {name: np.zeros((1, 2)) for name in ("text_t5", "text_t5_mask", "text_clip", "sync_features",
                                                 "sync_frames_u8")}
    header = json.dumps({"format": "selva-features", "version": 1, "prompt": "x", "duration": 1, "fps": 25})
    cache = FeatureCache(tmp_path, max_bytes=10**9)
    np.savez(cache.path("0" * 40), header=np.frombuffer(header.encode(), dtype=np.uint8), **arrays)
    with pytest.raises(SelvaError, match=r"lacks variant; extract the features again\."):
        Features.load(cache.path("0" * 40))
    assert cache.get("0" * 40) is None and cache.path("0" * 40).with_suffix(".corrupt").is_file()


def test_cache_hit_miss_and_corrupt_entry_set_aside(tmp_path):
    cache = FeatureCache(tmp_path)
    assert cache.get("k") is None
    cache.put("k", make_features())
    assert cache.get("k").prompt == "a dog barks"
    cache.path("k").write_bytes(b"garbage")
    assert cache.get("k") is None
    assert (tmp_path / "k.corrupt").read_bytes() == b"garbage"  # kept, not deleted


def test_cache_unwritable_directory_is_not_fatal(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = FeatureCache(blocker / "sub")  # a directory below a file can't be created
    assert cache.put("k", make_features()) is None
    assert cache.get("k") is None


def test_content_hash_sees_every_byte_and_every_field():
    x = torch.zeros(100, 64, 64, 3, dtype=torch.uint8)
    base = content_hash([x, "prompt", 25.0])
    y = x.clone()
    y[57, 33, 12, 1] = 1  # one value deep inside
    assert content_hash([y, "prompt", 25.0]) != base
    assert content_hash([x, "prompt!", 25.0]) != base
    assert content_hash([x, "prompt", 24.0]) != base
    assert content_hash([x.float(), "prompt", 25.0]) != base
    assert content_hash([x.clone(), "prompt", 25.0]) == base
    assert content_hash([torch.ones(2).bfloat16(), None]) != content_hash([torch.ones(2).half(), None])
