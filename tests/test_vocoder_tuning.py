"""Vocoder tuning core: parameter selection, losses, data, discriminators, tuned files, the stage."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from comfyui_selva.bigvgan.discriminator_loading import load_discriminators
from comfyui_selva.bigvgan.discriminators import (BIGVGAN_V2_44K_DISCRIMINATORS, DiscriminatorConfig,
                                                  MultiPeriodDiscriminator, build_second)
from comfyui_selva.bigvgan.errors import BigVGANError
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.vocoder_tuning import checkpoint as ck
from comfyui_selva.selva.vocoder_tuning.data import AudioSegments, find_audio_files, read_audio
from comfyui_selva.selva.vocoder_tuning.losses import MultiResolutionSTFTLoss, l2sp
from comfyui_selva.selva.vocoder_tuning.params import is_snake_parameter, trainable_parameters
from comfyui_selva.selva.vocoder_tuning.stage import with_tuned_vocoder
from comfyui_selva.selva.train.loop import TrainResult, run_training
from comfyui_selva.selva.vocoder_tuning.tuner import VocoderTuner, VocoderTuningConfig, loop_config
from vocoder_helpers import audio_folder, write_discriminator_file, write_tone

# Small discriminators with the release's structure (fewer channels and octaves).
TINY_DISC = DiscriminatorConfig(sampling_rate=44_100, second="cqtd", discriminator_channel_mult=0.125,
                                cqtd_filters=8, cqtd_max_filters=16, cqtd_n_octaves=(3, 3, 3))
TINY_DISC_16K_MRD = DiscriminatorConfig(sampling_rate=16_000, second="mrd", discriminator_channel_mult=0.125)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return audio_folder(tmp_path_factory.mktemp("voc_data"))


def _config(data_dir, tmp_path, **kw) -> VocoderTuningConfig:
    base = dict(data_dir=data_dir, output_path=tmp_path / "tuned.safetensors", batch_size=2, segment_seconds=0.3)
    return VocoderTuningConfig(**{**base, **kw})


def _feature_matching(tuner: VocoderTuner) -> float:
    """The feature-matching term of a training segment (None when the run has no discriminators)."""
    y = tuner.data.segment(0, torch.Generator().manual_seed(0))[None, None]
    with torch.no_grad():
        return float(tuner.losses(y)[1].feature_matching.mean())


def _train(tuner: VocoderTuner, steps: int, tmp_path=None, **loop) -> TrainResult:
    """Run the shared training loop the way ComfyUI runs a node: inside inference mode."""
    import tempfile

    cfg = dataclasses.replace(loop_config(tuner.cfg), steps=steps, eval_samples=False, save_every=0,
                              warmup_steps=0, **loop)
    out = tmp_path or Path(tempfile.mkdtemp(prefix="voc_run_"))
    with torch.inference_mode():
        return run_training(tuner, cfg, out)


def _tuner(model, data_dir, tmp_path, **kw) -> VocoderTuner:
    with torch.inference_mode():  # ComfyUI builds it inside inference mode too
        return VocoderTuner(model, _config(data_dir, tmp_path, **kw))


# ------------------------------------------------------------------------- parameter selection
def test_snake_alpha_only_changes_only_alpha_and_beta_inside_inference_mode(model, data_dir, tmp_path):
    base = model.manager.get("vocoder")
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    tuner = _tuner(model, data_dir, tmp_path)
    before = {k: v.clone() for k, v in tuner.vocoder.state_dict().items()}
    _train(tuner, 3)
    after = tuner.vocoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    snake = {k for k in before if is_snake_parameter(k)}
    assert snake and changed == snake  # every alpha/beta moved, nothing else did (bit-equal)
    assert all(k.endswith((".alpha", ".beta")) for k in changed)
    # the pipeline's vocoder is untouched
    assert all(torch.equal(v, base_before[k]) for k, v in model.manager.get("vocoder").state_dict().items())


def test_all_params_trains_the_convolutions_too(model, data_dir, tmp_path):
    tuner = _tuner(model, data_dir, tmp_path, train_mode="all_params")
    w0 = tuner.vocoder.conv_pre.weight.detach().clone()
    _train(tuner, 2)
    assert not torch.equal(w0, tuner.vocoder.conv_pre.weight)


def test_unknown_train_mode_is_refused(model, data_dir, tmp_path):
    with pytest.raises(SelvaError, match="train_mode"):
        _tuner(model, data_dir, tmp_path, train_mode="everything")


def test_trainable_parameters_snake_names(model):
    names = set(trainable_parameters(model.manager.get("vocoder"), "snake_alpha_only"))
    assert "activation_post.act.alpha" in names and "activation_post.act.beta" in names
    assert not any("conv" in n.split(".")[-1] for n in names)


# ------------------------------------------------------------------------------------- losses
def _distance_to_anchor(tuner) -> float:
    return float(l2sp({n: p.detach() for n, p in tuner.params.items()}, tuner.anchor))


def test_l2sp_pulls_toward_the_pretrained_weights(model, data_dir, tmp_path):
    free = _tuner(model, data_dir, tmp_path, lambda_l2sp=0.0, lr=3e-2)
    held = _tuner(model, data_dir, tmp_path, lambda_l2sp=50.0, lr=3e-2)
    _train(free, 6)
    _train(held, 6)
    assert _distance_to_anchor(held) < 0.5 * _distance_to_anchor(free)


def test_l2sp_is_zero_at_the_anchor_and_grows_with_distance():
    p = {"a": torch.ones(3)}
    assert float(l2sp(p, {"a": torch.ones(3)})) == 0.0
    assert float(l2sp(p, {"a": torch.zeros(3)})) == pytest.approx(3.0)


def test_stft_loss_is_zero_for_identical_audio_and_positive_otherwise():
    loss = MultiResolutionSTFTLoss()
    x = torch.randn(2, 1, 4096)
    assert loss(x, x).shape == (2,)
    assert float(loss(x, x).abs().max()) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(x * 0.5, x).min()) > 0.1


def test_training_lowers_the_reconstruction_loss(model, data_dir, tmp_path):
    tuner = _tuner(model, data_dir, tmp_path, train_mode="all_params", lr=3e-3, batch_size=2)
    y = torch.stack([tuner.data.segment(0, torch.Generator().manual_seed(s)) for s in range(2)])[:, None]
    with torch.no_grad():
        first = float(tuner.losses(y)[0].mean())
    _train(tuner, 12)
    with torch.no_grad():
        assert float(tuner.losses(y)[0].mean()) < first


def test_losses_are_per_item(model, data_dir, tmp_path):
    tuner = _tuner(model, data_dir, tmp_path)
    y = torch.stack([tuner.data.segment(i % 2, torch.Generator().manual_seed(i)) for i in range(3)])[:, None]
    with torch.no_grad():
        total, terms = tuner.losses(y)
        single, _ = tuner.losses(y[1:2])
    assert total.shape == (3,) and terms.feature_matching is None and terms.phase is None
    torch.testing.assert_close(total[1:2], single, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------- data
def test_audio_of_any_format_is_found_recursively_and_resampled(tmp_path):
    write_tone(tmp_path / "x" / "stereo.flac", 0.5, 48000, 300.0, channels=2, codec="flac")
    write_tone(tmp_path / "mono.wav", 0.25, 22050, 300.0)
    (tmp_path / "notes.txt").write_text("not audio")
    files = find_audio_files(tmp_path)
    assert [f.name for f in files] == ["mono.wav", "stereo.flac"]
    assert read_audio(files[1], 16000).shape == (8000,)
    assert read_audio(files[0], 44100).shape[0] == pytest.approx(11025, abs=2)


def test_hidden_files_and_folders_are_not_training_audio(tmp_path):
    """macOS leaves an AppleDouble ``._name.wav`` beside each file copied to some drives: it is
    not audio, and neither is anything in a hidden folder; they must not fail the run."""
    write_tone(tmp_path / "mono.wav", 0.25, 22050, 300.0)
    (tmp_path / "._mono.wav").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    write_tone(tmp_path / ".trash" / "deleted.wav", 0.25, 22050, 300.0)
    assert [f.name for f in find_audio_files(tmp_path)] == ["mono.wav"]


def test_segments_depend_only_on_their_generator(data_dir):
    data = AudioSegments.from_folder(data_dir, 16000, 256 * 10)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    assert len(data) == 2
    assert torch.equal(data.segment(0, g(3)), data.segment(0, g(3)))
    assert not torch.equal(data.segment(0, g(3)), data.segment(0, g(4)))
    assert data.segment(1, g(0)).shape == (2560,)
    short = AudioSegments(data.clips, data.files, 16000, 16000 * 5)  # longer than the clips: zero-padded
    assert short.segment(0, g(0)).shape == (80000,) and short.segment(0, g(0))[-100:].abs().sum() == 0


def test_empty_or_missing_data_dir_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SelvaError, match="No audio files"):
        find_audio_files(tmp_path / "empty")
    with pytest.raises(SelvaError, match="not a folder"):
        find_audio_files(tmp_path / "nowhere")


def test_unreadable_audio_names_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(SelvaError, match="broken.wav"):
        read_audio(bad, 16000)


# ----------------------------------------------------------------------------- discriminators
def _tiny_networks(cfg):
    torch.manual_seed(0)
    return MultiPeriodDiscriminator(cfg), build_second(cfg)


@pytest.mark.parametrize("cfg", [TINY_DISC, TINY_DISC_16K_MRD], ids=["mpd+cqtd", "mpd+mrd"])
def test_discriminator_file_of_the_release_layout_loads_strictly(tmp_path, cfg):
    mpd, second = _tiny_networks(cfg)
    path = tmp_path / "bigvgan_discriminator_optimizer.pt"
    written = write_discriminator_file(path, mpd, second, cfg.second)
    disc = load_discriminators(path, cfg)
    # the folded weight equals weight_v scaled to the stored gain (= the value written)
    got = disc.mpd.state_dict()
    for k, v in written["mpd"].items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)
    assert set(disc.second.state_dict()) == set(written["mrd"])
    assert not any(p.requires_grad for p in disc.mpd.parameters())
    maps = disc.feature_maps(torch.randn(1, 1, 8192) * 0.1)
    assert len(maps) == 6 * len(cfg.mpd_reshapes) + (5 if cfg.second == "cqtd" else 6) * 3


def test_release_layout_names(tmp_path):
    """Key names as NVIDIA's file spells them (weight norm on the MPD convs, plain CQT pre-convs)."""
    mpd, second = _tiny_networks(TINY_DISC)
    path = tmp_path / "d.pt"
    write_discriminator_file(path, mpd, second, "cqtd")
    obj = torch.load(path, weights_only=True)
    assert {"mpd", "mrd", "optim_g", "optim_d", "steps", "epoch"} <= set(obj)
    assert "discriminators.0.convs.0.weight_g" in obj["mpd"]
    assert "discriminators.4.conv_post.weight_v" in obj["mpd"]
    for key in ("discriminators.0.conv_pres.0.weight", "discriminators.0.convs.0.weight",
                "discriminators.2.convs.1.weight_g", "discriminators.1.conv_post.weight_v",
                "discriminators.0.cqt_transform.cqt_kernels_real", "discriminators.0.resample.kernel"):
        assert key in obj["mrd"], key
    load_discriminators(path, TINY_DISC)


def test_discriminator_file_with_wrong_layout_is_refused(tmp_path):
    mpd, second = _tiny_networks(TINY_DISC)
    path = tmp_path / "d.pt"
    write_discriminator_file(path, mpd, second, "cqtd")
    obj = torch.load(path, weights_only=True)
    # an extra key
    bad = {**obj, "mpd": {**obj["mpd"], "discriminators.9.convs.0.bias": torch.zeros(1)}}
    torch.save(bad, tmp_path / "extra.pt")
    with pytest.raises(BigVGANError, match="unexpected key"):
        load_discriminators(tmp_path / "extra.pt", TINY_DISC)
    # weight norm where the reference has a plain conv
    w = obj["mrd"]["discriminators.0.conv_pres.0.weight"]
    mrd = {k: v for k, v in obj["mrd"].items() if k != "discriminators.0.conv_pres.0.weight"}
    mrd["discriminators.0.conv_pres.0.weight_g"] = w.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    mrd["discriminators.0.conv_pres.0.weight_v"] = w
    torch.save({**obj, "mrd": mrd}, tmp_path / "wn.pt")
    with pytest.raises(BigVGANError, match="not in BigVGAN's layout"):
        load_discriminators(tmp_path / "wn.pt", TINY_DISC)
    # a file with the other second discriminator
    with pytest.raises(BigVGANError, match="CQT discriminator.*multi-resolution"):
        load_discriminators(path, dataclasses.replace(TINY_DISC, second="mrd"))
    # not a discriminator file at all
    torch.save({"generator": {}}, tmp_path / "g.pt")
    with pytest.raises(BigVGANError, match="'mpd' and 'mrd'"):
        load_discriminators(tmp_path / "g.pt", TINY_DISC)


def test_a_bad_discriminator_file_reaches_the_tuner_as_a_selva_error(model, data_dir, tmp_path):
    """bigvgan/ raises its own BigVGANError; the SelVA side turns it into a SelvaError (what the
    nodes and the command line report), with the same text."""
    torch.save({"generator": {}}, tmp_path / "g.pt")
    with pytest.raises(SelvaError, match="'mpd' and 'mrd'") as e:
        _tuner(model, data_dir, tmp_path, discriminator_path=tmp_path / "g.pt")
    assert isinstance(e.value.__cause__, BigVGANError)


def test_release_config_reads_from_config_json():
    cfg = DiscriminatorConfig.from_json({
        "use_cqtd_instead_of_mrd": True, "cqtd_filters": 128, "cqtd_max_filters": 1024, "cqtd_filters_scale": 1,
        "cqtd_dilations": [1, 2, 4], "cqtd_hop_lengths": [512, 256, 256], "cqtd_n_octaves": [9, 9, 9],
        "cqtd_bins_per_octaves": [24, 36, 48], "mpd_reshapes": [2, 3, 5, 7, 11], "use_spectral_norm": False,
        "discriminator_channel_mult": 1, "sampling_rate": 44100, "num_mels": 128})
    assert cfg == BIGVGAN_V2_44K_DISCRIMINATORS


def test_16k_vocoder_says_it_has_no_released_discriminators(model, data_dir, tmp_path):
    with pytest.raises(SelvaError, match="WITHOUT discriminators"):
        _tuner(model, data_dir, tmp_path, discriminator_path=tmp_path / "missing.pt")


def test_16k_vocoder_accepts_a_users_mpd_mrd_file_and_trains_with_feature_matching(model, data_dir, tmp_path):
    import json

    mpd, second = _tiny_networks(TINY_DISC_16K_MRD)
    path = tmp_path / "run" / "do_00010000"
    path.parent.mkdir()
    write_discriminator_file(path, mpd, second, "mrd")
    # the training run's config.json beside it says which (smaller) discriminators it holds
    (path.parent / "config.json").write_text(json.dumps(
        {"mpd_reshapes": [2, 3, 5, 7, 11], "discriminator_channel_mult": 0.125,
         "resolutions": [[1024, 120, 600], [2048, 240, 1200], [512, 50, 240]], "sampling_rate": 16000}))
    tuner = _tuner(model, data_dir, tmp_path, discriminator_path=path)
    assert tuner.discriminators.config == TINY_DISC_16K_MRD
    before = {k: v.clone() for k, v in tuner.params.items()}
    _train(tuner, 2)
    assert _feature_matching(tuner) > 0 and tuner.weights.feature_matching == 1.0
    assert any(not torch.equal(before[k], p) for k, p in tuner.params.items())
    assert not any(p.requires_grad for p in tuner.discriminators.mpd.parameters())


# ------------------------------------------------------------------------------ tuned files
def _saved(tuner, tmp_path):
    """The tuned file the run's export writes (it records the steps trained so far)."""
    return tuner.export(tmp_path, "test")


def test_tuned_file_round_trips_with_metadata(model, data_dir, tmp_path):
    tuner = _tuner(model, data_dir, tmp_path)
    _train(tuner, 2)
    path = _saved(tuner, tmp_path)
    tuned = ck.read_tuned_vocoder(path)
    assert (tuned.mode, tuned.steps, tuned.variant) == ("snake_alpha_only", 2, "tiny_16k")
    assert tuned.identity == ck.VocoderIdentity("bigvgan_v1", 16000, 80)
    assert set(tuned.tensors) == set(tuner.params)
    for k, v in tuner.params.items():
        assert torch.equal(tuned.tensors[k], v.detach().cpu())


def test_loader_view_has_the_tuned_vocoder_and_the_input_keeps_the_base(model, data_dir, tmp_path):
    tuner = _tuner(model, data_dir, tmp_path)
    _train(tuner, 3)
    path = _saved(tuner, tmp_path)
    latent = torch.randn(1, 12, model.variant.vae.embed_dim)
    with torch.inference_mode():
        base_before = model.decode(latent)
        view = with_tuned_vocoder(model, path)
        tuned_audio = view.decode(latent)
        base_after = model.decode(latent)
        expected = tuner.vocoder(model.manager.get("vae").decode(latent.transpose(1, 2)).float()).cpu()
    assert view.stage_name("vocoder").startswith("vocoder:") and model.stage_name("vocoder") == "vocoder"
    assert torch.equal(base_before, base_after)
    assert not torch.equal(tuned_audio, base_before)
    torch.testing.assert_close(tuned_audio, expected, rtol=1e-4, atol=1e-5)
    # loading the same file again reuses the registered stage
    assert with_tuned_vocoder(model, path).stage_name("vocoder") == view.stage_name("vocoder")


def test_loader_refuses_a_file_for_the_other_vocoder(model, tmp_path):
    other = ck.VocoderIdentity("bigvgan_v2", 44100, 128)
    path = ck.save_tuned_vocoder(tmp_path / "v2.safetensors", {"x.act.alpha": torch.zeros(2)},
                                 ck.metadata(other, mode="snake_alpha_only", steps=1, variant="small_44k"))
    with pytest.raises(SelvaError, match=r"BigVGAN v2.*44100 Hz.*BigVGAN v1.*16000 Hz"):
        with_tuned_vocoder(model, path)


def test_loader_refuses_foreign_files(model, tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "lora.safetensors"), metadata={"format": "selva-lora"})
    with pytest.raises(SelvaError, match="not a tuned SelVA vocoder"):
        with_tuned_vocoder(model, tmp_path / "lora.safetensors")
    with pytest.raises(SelvaError, match="not found"):
        with_tuned_vocoder(model, tmp_path / "nothing.safetensors")


# ----------------------------------------------------------------------- runs (shared loop)
def _run_cfg(data_dir, out, **kw) -> VocoderTuningConfig:
    base = dict(data_dir=data_dir, output_path=out, batch_size=2, segment_seconds=0.3, steps=4, save_every=2,
                lr=1e-2, seed=3)
    return VocoderTuningConfig(**{**base, **kw})


def test_run_writes_tuned_files_samples_and_checkpoints(model, data_dir, tmp_path):
    from comfyui_selva.selva.vocoder_tuning.tuner import tune_vocoder

    with torch.inference_mode():
        final, result = tune_vocoder(model, _run_cfg(data_dir, tmp_path))
    run = result.run_dir
    assert final == run / "vocoder_final.safetensors" and run.parent == tmp_path
    step2 = ck.read_tuned_vocoder(run / "vocoder_step_000002.safetensors")
    assert step2.steps == 2 and ck.read_tuned_vocoder(final).steps == 4
    for step in (0, 2, 4):  # baseline, the save, the end
        assert (run / "samples" / f"step_{step:06d}.wav").is_file()
        assert (run / "samples" / f"step_{step:06d}.png").is_file()
    assert (run / "checkpoints" / "step_000002.pt").is_file() and (run / "loss_curve.png").is_file()
    # a second run never touches the first one's files
    with torch.inference_mode():
        again, _ = tune_vocoder(model, _run_cfg(data_dir, tmp_path))
    assert again.parent != run and final.is_file()


def test_resume_is_exact(model, data_dir, tmp_path):
    from comfyui_selva.selva.vocoder_tuning.tuner import tune_vocoder

    with torch.inference_mode():
        straight, _ = tune_vocoder(model, _run_cfg(data_dir, tmp_path / "a"))
        half, first = tune_vocoder(model, _run_cfg(data_dir, tmp_path / "b", steps=2))
        # resume from the tuned file the save wrote (its checkpoint sits beside it)
        resumed, _ = tune_vocoder(model, _run_cfg(data_dir, tmp_path / "b", resume=half))
    a, b = ck.read_tuned_vocoder(straight), ck.read_tuned_vocoder(resumed)
    assert b.steps == 4 and set(a.tensors) == set(b.tensors)
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k
    assert not torch.equal(ck.read_tuned_vocoder(half).tensors[k], a.tensors[k])


def test_resume_from_another_kind_of_safetensors_says_what_it_is(model, data_dir, tmp_path):
    """A LoRA adapter given as resume is named as an exported file, not looked for as
    'checkpoints/.pt'."""
    from safetensors.torch import save_file

    from comfyui_selva.selva.vocoder_tuning.tuner import tune_vocoder

    adapter = tmp_path / "adapter_final.safetensors"
    save_file({"x": torch.zeros(1)}, str(adapter))
    with torch.inference_mode(), pytest.raises(SelvaError, match=r"is an exported adapter .* not a training "
                                                                 r"checkpoint.*SelVA LoRA Loader"):
        tune_vocoder(model, _run_cfg(data_dir, tmp_path, resume=adapter))


def test_resume_refuses_another_train_mode(model, data_dir, tmp_path):
    from comfyui_selva.selva.vocoder_tuning.tuner import tune_vocoder

    with torch.inference_mode():
        _, first = tune_vocoder(model, _run_cfg(data_dir, tmp_path, steps=2))
        with pytest.raises(SelvaError, match="train_mode"):
            tune_vocoder(model, _run_cfg(data_dir, tmp_path, train_mode="all_params", resume=first.run_dir))


def test_cancel_saves_a_checkpoint_and_stops(model, data_dir, tmp_path):
    from comfyui_selva.selva.hooks import Hooks, Interrupted
    from comfyui_selva.selva.vocoder_tuning.tuner import tune_vocoder

    seen = []
    hooks = Hooks(progress=lambda stage, done, total: seen.append((stage, done)),
                  interrupted=lambda: ("training", 3) in seen)
    with torch.inference_mode(), pytest.raises(Interrupted, match="resume from"):
        tune_vocoder(model, _run_cfg(data_dir, tmp_path, steps=10, save_every=0), hooks)
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (run / "checkpoints" / "step_000003.pt").is_file()
    assert not (run / "vocoder_final.safetensors").exists()


def test_continuing_a_stopped_run_keeps_its_final_file(model, data_dir, tmp_path):
    """A run ended early (a sweep's skip) exported vocoder_final; continuing it in the same run
    folder writes its new final file beside that one and never over it."""
    from comfyui_selva.selva.vocoder_tuning.tuner import tune_vocoder

    steps_done = []
    with torch.inference_mode():
        first, result = tune_vocoder(model, _run_cfg(data_dir, tmp_path, save_every=0),
                                     on_step=lambda info: steps_done.append(info.step),
                                     should_stop=lambda: len(steps_done) >= 2)
        assert result.status == "stopped" and ck.read_tuned_vocoder(first).steps == 2
        second, resumed = tune_vocoder(model, _run_cfg(data_dir, tmp_path, save_every=0, resume=result.run_dir))
        assert resumed.run_dir == result.run_dir and second != first
        assert ck.read_tuned_vocoder(first).steps == 2 and ck.read_tuned_vocoder(second).steps == 4
        # the numbered final file resumes like vocoder_final.safetensors (from the newest checkpoint)
        third, _ = tune_vocoder(model, _run_cfg(data_dir, tmp_path, save_every=0, steps=5, resume=second))
    assert ck.read_tuned_vocoder(third).steps == 5


# ------------------------------------------------------------------------------------ CLI
def test_command_line_trains_and_resumes(models_dir, data_dir, tmp_path, capsys):
    import subprocess
    import sys

    from comfy_pack import REPO_ROOT
    from comfyui_selva.selva.vocoder_tuning.command import main

    common = ["--variant", "tiny_16k", "--precision", "fp32", "--device", "cpu", "--models-dir", str(models_dir),
              "--offline", "--data-dir", str(data_dir), "--output", str(tmp_path), "--batch-size", "2",
              "--segment-seconds", "0.3", "--save-every", "1"]
    assert main([*common, "--steps", "2"]) == 0
    first = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert first.name == "vocoder_final.safetensors" and ck.read_tuned_vocoder(first).steps == 2
    assert main([*common, "--steps", "3", "--resume", "latest"]) == 0
    resumed = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert ck.read_tuned_vocoder(resumed).steps == 3 and first.is_file()
    assert main([*common, "--steps", "2", "--data-dir", str(tmp_path / "nothing")]) == 1
    script = subprocess.run([sys.executable, str(REPO_ROOT / "training" / "train_vocoder.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and "--discriminator" in script.stdout and "--train-mode" in script.stdout


# ------------------------------------------------------------------------------ 44.1 kHz (v2)
@pytest.fixture(scope="module")
def model_44k(models_dir):
    from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        with torch.inference_mode():
            pipe = SelvaPipeline.load(LoadOptions(variant="tiny_44k", precision="fp32", device="cpu",
                                                  models_dir=models_dir, allow_download=False))
        yield pipe


def test_v2_vocoder_tunes_loads_and_refuses_the_16k_file(model, model_44k, data_dir, tmp_path):
    from comfyui_selva.selva.vocoder_tuning.tuner import tune_vocoder

    with torch.inference_mode():
        path44, _ = tune_vocoder(model_44k, _run_cfg(data_dir, tmp_path / "v2", steps=2, save_every=0))
        path16, _ = tune_vocoder(model, _run_cfg(data_dir, tmp_path / "v1", steps=1, save_every=0))
        tuned = ck.read_tuned_vocoder(path44)
        assert tuned.identity == ck.VocoderIdentity("bigvgan_v2", 44100, 128)
        latent = torch.randn(1, 10, model_44k.variant.vae.embed_dim)
        view = with_tuned_vocoder(model_44k, path44)
        assert not torch.equal(view.decode(latent), model_44k.decode(latent))
    with pytest.raises(SelvaError, match=r"BigVGAN v1.*16000 Hz.*BigVGAN v2.*44100 Hz"):
        with_tuned_vocoder(model_44k, path16)
    with pytest.raises(SelvaError, match=r"BigVGAN v2.*44100 Hz.*BigVGAN v1.*16000 Hz"):
        with_tuned_vocoder(model, path44)


def test_v2_discriminator_file_trains_with_the_cqt_discriminator(model_44k, data_dir, tmp_path):
    import json

    mpd, second = _tiny_networks(TINY_DISC)
    path = tmp_path / "bigvgan_discriminator_optimizer.pt"
    write_discriminator_file(path, mpd, second, "cqtd")
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(TINY_DISC).items()
           if k not in ("second", "mrd_channel_mult", "resolutions")}
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "use_cqtd_instead_of_mrd": True}))
    tuner = _tuner(model_44k, data_dir, tmp_path, discriminator_path=path)
    assert tuner.discriminators.config.second == "cqtd"
    before = {k: v.clone() for k, v in tuner.params.items()}
    _train(tuner, 1)
    assert _feature_matching(tuner) > 0
    assert any(not torch.equal(before[k], p) for k, p in tuner.params.items())
