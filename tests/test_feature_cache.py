"""The feature cache: what its key holds, compressed entries, the size cap and LRU eviction,
and ``python -m selva cache``."""
from __future__ import annotations

import os
import shutil
import time
import zipfile

import pytest
import torch

from comfyui_selva.selva import features as F
from comfyui_selva.selva import precision as precision_choice
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.features import FeatureCache, Features
from comfyui_selva.selva.encoding import PreparedInput
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline
from comfyui_selva.selva import weights as W
from comfy_pack import pack_module

KEY = "0" * 40


def key(i: int) -> str:
    return f"{i:040x}"


def small_features(seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed)
    return Features(variant="tiny_16k", prompt="p", duration=1.0, fps=25.0,
                    text_t5=torch.randn(1, 4, 8, generator=g), text_t5_mask=torch.ones(1, 4),
                    text_clip=torch.randn(1, 77, 8, generator=g),
                    sync_features=torch.randn(1, 16, 8, generator=g),
                    # frames of a real video are smooth: compression has something to find
                    sync_frames_u8=torch.full((25, 224, 224, 3), 7, dtype=torch.uint8))


def load(models_dir, precision="fp32", **kw) -> SelvaPipeline:
    return SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision=precision, device="cpu",
                                          models_dir=models_dir, allow_download=False, **kw))


def prepared(pipe: SelvaPipeline, seed: int = 0) -> PreparedInput:
    g = torch.Generator().manual_seed(seed)
    return pipe.prepare(torch.rand(25, 32, 32, 3, generator=g), 25.0)


# ------------------------------------------------------------------------------ entries
def test_entries_are_compressed_and_load_back(tmp_path):
    cache = FeatureCache(tmp_path)
    f = small_features()
    path = cache.put(KEY, f)
    with zipfile.ZipFile(path) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    f.save(tmp_path / "plain.npz")
    assert path.stat().st_size < 0.5 * (tmp_path / "plain.npz").stat().st_size
    got = cache.get(KEY)
    assert torch.equal(got.sync_features, f.sync_features)
    assert torch.equal(got.sync_frames_u8, f.sync_frames_u8)


def _age(path, seconds_ago):
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def test_size_cap_evicts_the_least_recently_used(tmp_path):
    cache = FeatureCache(tmp_path, max_bytes=10**9)
    paths = [cache.put(key(i), small_features(i)) for i in range(3)]
    for age, p in zip((300, 200, 100), paths):
        _age(p, age)  # 0 is the oldest
    assert cache.get(key(0)) is not None  # a hit makes 0 the most recently used
    size = paths[0].stat().st_size
    cache.max_bytes = 3 * size + size // 2  # room for three and a half entries
    (tmp_path / "mine.npz").write_bytes(b"x" * (10 * size))  # not a cache entry: never touched
    cache.put(key(3), small_features(3))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert f"{key(1)}.npz" not in names  # the least recently used went
    assert {f"{key(i)}.npz" for i in (0, 2, 3)} <= set(names) and "mine.npz" in names
    info = cache.info()
    assert info.entries == 3 and info.total_bytes == sum(
        (tmp_path / f"{key(i)}.npz").stat().st_size for i in (0, 2, 3))


def test_an_entry_larger_than_the_cap_is_kept_until_the_next_one(tmp_path):
    cache = FeatureCache(tmp_path, max_bytes=1)
    first = cache.put(key(0), small_features())
    assert first.is_file()  # the entry just written stays
    cache.put(key(1), small_features())
    assert not first.exists() and cache.path(key(1)).is_file()


def test_cap_from_environment(monkeypatch):
    monkeypatch.delenv(F.CACHE_MAX_ENV, raising=False)
    assert F.cache_max_bytes() == int(F.DEFAULT_CACHE_MAX_GB * F.GB)
    monkeypatch.setenv(F.CACHE_MAX_ENV, "0.5")
    assert FeatureCache("x").max_bytes == F.GB // 2
    assert F.cache_max_bytes(2) == 2 * F.GB  # an explicit value wins
    monkeypatch.setenv(F.CACHE_MAX_ENV, "lots")
    with pytest.raises(SelvaError, match=F.CACHE_MAX_ENV):
        F.cache_max_bytes()
    with pytest.raises(SelvaError, match="0 GB or more"):
        F.cache_max_bytes(-1)
    # inf used to escape as an OverflowError (int(inf)) from --max-gb inf or the variable
    with pytest.raises(SelvaError, match=r"must be a finite number of GB, 0 GB or more, got inf\."):
        F.cache_max_bytes(float("inf"))
    monkeypatch.setenv(F.CACHE_MAX_ENV, "inf")
    with pytest.raises(SelvaError, match="finite"):
        F.cache_max_bytes()


def test_cli_cache_info_and_prune(tmp_path, capsys):
    cli = pack_module("selva.cli")
    cache = FeatureCache(tmp_path, max_bytes=10**9)
    paths = [cache.put(key(i), small_features(i)) for i in range(3)]
    for age, p in zip((300, 200, 100), paths):
        _age(p, age)
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["cache", "--info", "--dir", str(tmp_path)]) == 0
    assert "3 entries" in capsys.readouterr().out
    size = paths[0].stat().st_size
    cap_gb = (size + size // 2) / F.GB  # room for one entry
    assert cli.main(["cache", "--prune", "--dir", str(tmp_path), "--max-gb", str(cap_gb)]) == 0
    assert "1 entries" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key(2)}.npz", "notes.txt"]
    assert cli.main(["cache", "--prune", "--dir", str(tmp_path), "--max-gb", "0"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------------------------- keys
@pytest.fixture()
def own_models(models_dir, tmp_path):
    """A private copy of the tiny models folder (its files' times may be changed)."""
    dst = tmp_path / "models"
    shutil.copytree(models_dir, dst)
    return dst


def test_key_changes_when_an_encoder_file_is_replaced(own_models):
    pipe = load(own_models)
    inp = prepared(pipe)
    before = pipe.encoding.keys.features(inp, "a dog")
    assert pipe.encoding.keys.features(inp, "a dog") == before
    path = own_models / W.FILES["video_enc"].path
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new file in its place
    assert pipe.encoding.keys.features(inp, "a dog") != before
    t5_cfg = own_models / "hf" / W.HUB["t5"].local_name / "config.json"
    again = pipe.encoding.keys.features(inp, "a dog")
    t5_cfg.write_text(t5_cfg.read_text() + " ")
    assert pipe.encoding.keys.features(inp, "a dog") != again


def test_key_holds_the_dtype_really_used(models_dir, monkeypatch):
    inp = prepared(load(models_dir))
    fp16 = load(models_dir, "fp16").encoding.keys.features(inp, "a dog")
    bf16 = load(models_dir, "bf16").encoding.keys.features(inp, "a dog")
    assert fp16 != bf16 != load(models_dir).encoding.keys.features(inp, "a dog")
    monkeypatch.setattr(precision_choice, "device_caps", lambda device: precision_choice.DeviceCaps("cpu", False))
    monkeypatch.delenv(precision_choice.ALLOW_EMULATED_BF16_ENV, raising=False)
    fallback = load(models_dir, "bf16")
    assert fallback.dtype == torch.float32
    # bf16 that fell back (emulated on this CPU) is fp32
    assert fallback.encoding.keys.features(inp, "a dog") == load(models_dir).encoding.keys.features(inp, "a dog")


def test_key_changes_with_the_frames_and_the_prompt(models_dir):
    pipe = load(models_dir)
    inp = prepared(pipe)
    plain = pipe.encoding.keys.features(inp, "a dog")
    assert pipe.encoding.keys.features(prepared(pipe, seed=1), "a dog") != plain
    assert pipe.encoding.keys.features(inp, "a cat") != plain
