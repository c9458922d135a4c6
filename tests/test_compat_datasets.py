"""The earlier pack's datasets (layouts built here): its dataset.json array and its feature .npz
files (no text features) train as they did there."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.features import Features
from comfyui_selva.selva.train.dataset import load_dataset

from node_helpers import run_node
from train_data import make_dataset


@pytest.fixture(scope="module")
def pipe(models_dir):
    from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline

    # the earlier pack always kept CLIP frame features
    return SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False, clip_frames=True))


def write_earlier_npz(ours: Features, path, variant=None, **drop):
    """What the earlier Feature Extractor saved with np.savez."""
    entries = dict(clip_features=ours.clip_features.float().numpy(),
                   sync_features=ours.sync_features.float().numpy(), duration=float(ours.duration),
                   prompt=np.array(ours.prompt), variant=np.array(variant or ours.variant))
    for key in drop:
        entries.pop(key)
    np.savez(path, **entries)


def _earlier_folder(pipe, tmp_path, clips=2):
    ours = make_dataset(pipe, tmp_path / "ours", clips=clips)
    old = tmp_path / "earlier"
    old.mkdir()
    for npz in sorted(ours.glob("*.npz")):
        write_earlier_npz(Features.load(npz), old / npz.name)
        (old / npz.with_suffix(".wav").name).write_bytes(npz.with_suffix(".wav").read_bytes())
    return ours, old


def test_earlier_features_train_as_ours_and_the_text_is_cached(pipe, tmp_path, monkeypatch):
    ours, old = _earlier_folder(pipe, tmp_path)
    want, got = load_dataset(pipe, ours), load_dataset(pipe, old)
    assert [c.prompt for c in got.clips] == [c.prompt for c in want.clips]
    for a, b in zip(got.clips, want.clips):
        # the text features computed from the stored prompt; clip/sync features as stored
        assert torch.equal(a.conditions.text_clip, b.conditions.text_clip)
        assert torch.equal(a.conditions.sync_f, b.conditions.sync_f)
        assert torch.equal(a.conditions.clip_f, b.conditions.clip_f)
        assert torch.equal(a.latent_mean, b.latent_mean)
    assert len(list((old / ".selva_cache" / "earlier_features").glob("*.npz"))) == 2

    def no_encoding(*a, **k):
        raise AssertionError("the text encoders ran again")

    monkeypatch.setattr(pipe.encoding, "encode_text", no_encoding)
    again = load_dataset(pipe, old)
    assert torch.equal(again.clips[0].conditions.text_clip, got.clips[0].conditions.text_clip)


def test_a_caption_changes_the_text_and_keeps_the_stored_sync_features(pipe, tmp_path):
    _, old = _earlier_folder(pipe, tmp_path, clips=1)
    stored = np.load(old / "clip_000.npz")["sync_features"]
    (old / "prompts.txt").write_text("clip_000.npz: a metal clang\n")
    (clip,) = load_dataset(pipe, old).clips
    assert clip.prompt == "a metal clang"  # as the earlier trainer: text of the caption,
    assert torch.equal(clip.conditions.text_clip, pipe.encoding.encode_text("a metal clang").clip[0].float())
    assert np.array_equal(clip.conditions.sync_f.numpy(), stored[0, :clip.seq.sync])  # sync as stored


def test_earlier_features_errors_name_the_reextract_command(pipe, tmp_path):
    ours = make_dataset(pipe, tmp_path / "ours", clips=1)
    feats = Features.load(ours / "clip_000.npz")
    for case, kwargs in (("variant", {"variant": "large_44k"}), ("missing", {"prompt": None})):
        folder = tmp_path / case
        folder.mkdir()
        if case == "missing":
            write_earlier_npz(feats, folder / "clip_000.npz", prompt=None)
        else:
            write_earlier_npz(feats, folder / "clip_000.npz", **kwargs)
        (folder / "clip_000.wav").write_bytes((ours / "clip_000.wav").read_bytes())
        with pytest.raises(SelvaError, match=r"python -m selva prepare-dataset --videos"):
            load_dataset(pipe, folder)


def test_dataset_browser_reads_the_earlier_array(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "door_01.flac").write_bytes(b"")
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps([{"path": str(tmp_path / "door_01"), "label": "a door creaks"},
                                {"path": str(tmp_path / "door_02"), "label": "a door slams"}]))
    video_path, audio_path, frames_dir, label, total = run_node("SelvaDatasetBrowser",
                                                                dataset_json=str(path), index=0)
    assert (video_path, label, total) == (str(tmp_path / "door_01") + ".mp4", "a door creaks", 2)
    assert audio_path == str(tmp_path / "features" / "door_01.flac")
    assert frames_dir == str(tmp_path / "door_01")
    assert run_node("SelvaDatasetBrowser", dataset_json=str(path), index=1)[1] == \
        str(tmp_path / "features" / "door_02.wav")
    path.write_text(json.dumps([{"label": "no path"}]))
    with pytest.raises(SelvaError, match='entry 0 has no "path"'):
        run_node("SelvaDatasetBrowser", dataset_json=str(path), index=0)


def test_a_lora_trains_on_earlier_features_with_eval_samples(pipe, tmp_path):
    from comfyui_selva.selva.train.lora_trainer import LoraTrainOptions, train_lora

    _, old = _earlier_folder(pipe, tmp_path)
    options = LoraTrainOptions(steps=2, rank=2, alpha=2.0, save_every=2, warmup_steps=1, grad_accum=1,
                               eval_steps=2, eval_samples=True)
    run = train_lora(pipe, old, tmp_path / "out", options)
    assert run.result.status == "finished" and run.result.exported.is_file()
    assert list(run.result.exported.parent.rglob("*.wav")) or list(run.result.exported.parent.rglob("*.flac"))
