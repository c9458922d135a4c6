"""LoRA training on the tiny models and a synthetic dataset made here."""
from __future__ import annotations

import json

import pytest
import torch

from comfyui_selva.selva.adapters import load_adapter
from comfyui_selva.selva.datasets.reader import find_clips
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline
from comfyui_selva.selva.train import dataset as D
from comfyui_selva.selva.train.lora_trainer import LoraTrainOptions, train_lora

from train_data import make_dataset


def load(models_dir, variant="tiny_16k"):
    return SelvaPipeline.load(LoadOptions(variant=variant, precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False))


@pytest.fixture(scope="module")
def pipe(models_dir):
    return load(models_dir)


@pytest.fixture(scope="module")
def data_dir(pipe, tmp_path_factory):
    return make_dataset(pipe, tmp_path_factory.mktemp("data") / "my_sounds")


def opts(**kw):
    base = dict(steps=6, rank=4, alpha=4.0, lr=1e-3, warmup_steps=2, batch_size=2, grad_accum=1,
                save_every=3, seed=5, eval_samples=False)
    base.update(kw)
    return LoraTrainOptions(**base)


def test_lora_training_writes_a_loadable_adapter(pipe, data_dir, tmp_path):
    run = train_lora(pipe, data_dir, tmp_path, opts(eval_samples=True, eval_steps=2))
    r = run.result.run_dir
    assert r.name == "lora_001"
    for name in ("adapter_final.safetensors", "adapter_step_000003.safetensors", "meta.json",
                 "loss_curve.png", "checkpoints/step_000003.pt", "samples/step_000000.wav",
                 "samples/step_000006.png"):
        assert (r / name).is_file(), name
    adapter = load_adapter(r / "adapter_final.safetensors")
    assert adapter.meta.variant == "tiny_16k" and adapter.meta.rank == 4
    assert adapter.meta.steps == 6 and adapter.meta.dataset_digest == run.dataset.digest
    assert any(w.up.abs().sum() > 0 for w in adapter.modules.values())
    meta = json.loads((r / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["settings"]["targets"] == ["attn.qkv"]


def adapter_tensors(path):
    a = load_adapter(path)
    return {k: (w.down, w.up) for k, w in a.modules.items()}


@pytest.mark.parametrize("init", ["default", "pissa"])
def test_resume_gives_bit_identical_adapters(pipe, data_dir, tmp_path, init):
    full = train_lora(pipe, data_dir, tmp_path / "a", opts(init=init))
    part = train_lora(pipe, data_dir, tmp_path / "b", opts(init=init, steps=4))
    resumed = train_lora(pipe, data_dir, tmp_path / "b", opts(init=init),
                         resume=str(part.result.run_dir / "checkpoints" / "step_000003.pt"))
    a = adapter_tensors(full.result.exported)
    b = adapter_tensors(resumed.result.exported)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]), k
    assert resumed.result.losses == full.result.losses


def test_loss_goes_down_on_a_learnable_target(pipe, tmp_path):
    one = make_dataset(pipe, tmp_path / "one", clips=1)
    run = train_lora(pipe, one, tmp_path / "out", opts(steps=60, rank=8, alpha=8.0, lr=3e-3, batch_size=4,
                                                       save_every=0, target="attn.qkv linear1 ffn.w1 ffn.w2",
                                                       warmup_steps=5))
    losses = run.result.losses
    assert sum(losses[-15:]) / 15 < 0.8 * sum(losses[:15]) / 15


def test_both_layer_kinds_train_and_a_wrong_target_lists_suffixes(pipe, data_dir, tmp_path):
    run = train_lora(pipe, data_dir, tmp_path, opts(steps=2, target="attn.qkv, ffn.w1 linear1"))
    adapter = load_adapter(run.result.exported)
    conv = [n for n, w in adapter.modules.items() if w.up.dim() == 3]
    linear = [n for n, w in adapter.modules.items() if w.up.dim() == 2]
    assert conv and linear
    for name in conv + linear:
        assert adapter.modules[name].up.abs().sum() > 0, name
    with pytest.raises(SelvaError, match="attn.qkv"):
        train_lora(pipe, data_dir, tmp_path, opts(steps=1, target="nonexistent.layer"))


def test_training_inside_inference_mode_changes_the_adapter(model, data_dir, tmp_path):
    with torch.inference_mode():  # as ComfyUI runs nodes; `model` was loaded the same way
        run = train_lora(model, data_dir, tmp_path, opts(steps=2))
    adapter = load_adapter(run.result.exported)
    assert all(w.up.abs().sum() > 0 for w in adapter.modules.values())


def test_resume_with_other_settings_is_refused(pipe, data_dir, tmp_path):
    first = train_lora(pipe, data_dir, tmp_path, opts(steps=1))
    with pytest.raises(SelvaError, match="rank: checkpoint 4, this run 8"):
        train_lora(pipe, data_dir, tmp_path, opts(rank=8), resume=str(first.result.checkpoint))
    with pytest.raises(SelvaError, match="targets"):
        train_lora(pipe, data_dir, tmp_path, opts(target="linear1"), resume="latest")


def test_bad_options_are_clear_errors(pipe, data_dir, tmp_path):
    with pytest.raises(SelvaError, match="timestep_sampling"):
        train_lora(pipe, data_dir, tmp_path, opts(timestep_sampling="cosine"))
    with pytest.raises(SelvaError, match="rank"):
        train_lora(pipe, data_dir, tmp_path, opts(rank=0))
    with pytest.raises(SelvaError, match="steps"):
        train_lora(pipe, data_dir, tmp_path, opts(steps=0))
    with pytest.raises(SelvaError, match="Unknown LoRA training option"):
        LoraTrainOptions.from_dict({"rnak": 3})


# ------------------------------------------------------------------------------- datasets
def test_dataset_errors_name_the_problem(pipe, data_dir, tmp_path, models_dir):
    with pytest.raises(SelvaError, match="does not exist"):
        find_clips(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SelvaError, match="No clips found"):
        find_clips(tmp_path / "empty")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "a.npz").write_bytes((data_dir / "clip_000.npz").read_bytes())
    (lonely / "b.npz").write_bytes((data_dir / "clip_001.npz").read_bytes())
    (lonely / "b.flac").write_bytes(b"")
    with pytest.raises(SelvaError, match="a.npz"):
        find_clips(lonely)
    other = load(models_dir, "tiny_44k")
    with pytest.raises(SelvaError, match="variant 'tiny_16k', but the model is 'tiny_44k'"):
        D.load_dataset(other, data_dir)
    old = tmp_path / "old"
    old.mkdir()
    import numpy as np
    np.savez(old / "x.npz", header=np.frombuffer(b'{"format": "selva-features", "version": 0}', dtype=np.uint8))
    (old / "x.wav").write_bytes((data_dir / "clip_000.wav").read_bytes())
    with pytest.raises(SelvaError, match="Clip x: .*version"):
        D.load_dataset(pipe, old)


def test_prompt_priority_and_reencoding_only_when_needed(models_dir, data_dir, tmp_path):
    import shutil
    folder = tmp_path / "door_sounds"
    shutil.copytree(data_dir, folder)
    (folder / "prompts.txt").write_text("clip_000.npz: squeaky door\n# comment\n")
    (folder / "clip_000.txt").write_text("ignored caption")
    (folder / "clip_001.txt").write_text("a caption")
    fresh = load(models_dir)
    ds = D.load_dataset(fresh, folder)
    assert [c.prompt for c in ds.clips] == ["squeaky door", "a caption", "a car horn"]
    stored = ds.clips[2].features
    assert ds.clips[0].features.prompt == "squeaky door"
    assert not torch.equal(ds.clips[0].conditions.sync_f, D.Features.load(folder / "clip_000.npz").sync_features[0])
    # same prompts as stored: no text encoder or sync encoder is loaded, not even for training
    # with eval samples
    untouched = load(models_dir)
    train_lora(untouched, data_dir, tmp_path / "runs", opts(steps=1, eval_samples=True, eval_steps=1))
    assert not any(untouched.manager.is_loaded(s) for s in ("t5", "clip", "text_synch"))
    assert stored.prompt == "a car horn"


def test_posteriors_are_cached_by_audio_content(pipe, data_dir, tmp_path, monkeypatch):
    import shutil
    folder = tmp_path / "d"
    shutil.copytree(data_dir, folder, ignore=shutil.ignore_patterns(".selva_cache"))
    first = D.load_dataset(pipe, folder)
    calls = []
    real = D.encode_posterior
    monkeypatch.setattr(D, "encode_posterior", lambda *a: calls.append(1) or real(*a))
    again = D.load_dataset(pipe, folder)
    assert calls == [] and torch.equal(first.clips[1].latent_mean, again.clips[1].latent_mean)
    # other audio content -> encoded again (only that clip)
    from train_data import tone
    from comfyui_selva.selva.train.files import write_wav
    write_wav(folder / "clip_001.wav", tone(1.0, 16000, 999.0), 16000)
    changed = D.load_dataset(pipe, folder)
    assert calls == [1] and not torch.equal(first.clips[1].latent_mean, changed.clips[1].latent_mean)
    assert changed.digest != first.digest
    # a damaged cache entry (a cut-off copy, another file under its name) costs one re-encode
    for entry in (folder / ".selva_cache").rglob("*.safetensors"):
        entry.write_bytes(b"not a safetensors file")
    calls.clear()
    again = D.load_dataset(pipe, folder)
    assert len(calls) == len(again.clips) and torch.equal(again.clips[1].latent_mean, changed.clips[1].latent_mean)


@pytest.mark.parametrize("suffix", [".flac", ".mp3", ".ogg", ".aiff"])
def test_audio_of_any_format_rate_and_channels(tmp_path, suffix):
    import av
    from comfyui_selva.selva.media import write_audio
    from comfyui_selva.selva.train.audio_files import fit_audio, read_audio
    from train_data import tone
    wave = tone(0.5, 44100, 440.0, channels=2)
    path = tmp_path / f"a{suffix}"
    if suffix == ".ogg":  # Opus in an Ogg container
        write_audio(tmp_path / "a.opus", wave, 48000)
        (tmp_path / "a.opus").rename(path)
        rate_written = 48000
    elif suffix == ".aiff":
        rate_written = 44100
        with av.open(str(path), "w", format="aiff") as c:
            s = c.add_stream("pcm_s16be", rate=44100, layout="stereo")
            frame = av.AudioFrame.from_ndarray((wave.T.reshape(1, -1).numpy() * 32767).astype("int16"),
                                               format="s16", layout="stereo")
            frame.sample_rate = 44100
            for pkt in list(s.encode(frame)) + list(s.encode(None)):
                c.mux(pkt)
    else:
        rate_written = 44100
        write_audio(path, wave, 44100)
    read, rate = read_audio(path)
    assert rate == rate_written and read.shape[0] == 2 and read.abs().max() > 0.1
    fitted = fit_audio(read, rate, 16000, 16000)
    assert fitted.shape == (1, 16000) and fitted[:, -100:].abs().max() == 0  # padded with silence


def test_gradient_checkpointing_trains_the_same_adapter(pipe, data_dir, tmp_path):
    plain = train_lora(pipe, data_dir, tmp_path / "a", opts(steps=3, target="attn.qkv linear1"))
    ckpt = train_lora(pipe, data_dir, tmp_path / "b", opts(steps=3, target="attn.qkv linear1",
                                                         gradient_checkpointing=True))
    a, b = adapter_tensors(plain.result.exported), adapter_tensors(ckpt.result.exported)
    for k in a:
        torch.testing.assert_close(a[k][1], b[k][1], rtol=1e-5, atol=1e-7)
    assert any(v[1].abs().sum() > 0 for v in b.values())
    # the run's hooks are gone afterwards: the working copy is left as it was
    assert all(not m._forward_hooks for m in pipe.manager.get("generator").modules())
