"""Issue 23's vocoder-tuning options: the phase-aware loss, GAFilters, LoRA-generated mels."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.train.loop import run_training
from comfyui_selva.selva.vocoder_tuning import checkpoint as ck
from comfyui_selva.selva.vocoder_tuning.gafilter import attach_gafilters, gafilter_kernel_size
from comfyui_selva.selva.vocoder_tuning.losses import MultiResolutionSTFTLoss, phase_aware_stft
from comfyui_selva.selva.vocoder_tuning.params import clone_vocoder
from comfyui_selva.selva.vocoder_tuning.stage import with_tuned_vocoder
from comfyui_selva.selva.vocoder_tuning.tuner import VocoderTuner, VocoderTuningConfig, loop_config, tune_vocoder
from vocoder_helpers import audio_folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return audio_folder(tmp_path_factory.mktemp("voc_data"))


def cfg(data_dir, tmp_path, **kw):
    base = dict(data_dir=data_dir, output_path=tmp_path, batch_size=2, segment_seconds=0.3, steps=2,
                save_every=0, lr=1e-2)
    return VocoderTuningConfig(**{**base, **kw})


def test_phase_loss_sees_what_magnitude_losses_cannot():
    y = torch.randn(2, 1, 4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(phase_aware_stft(y, y), torch.zeros(2))
    flipped = -y  # the same magnitudes, every phase turned by pi
    assert float(MultiResolutionSTFTLoss()(flipped, y).max()) < 1e-5
    assert bool((phase_aware_stft(flipped, y) > 0.1).all())


def test_lambda_phase_adds_the_phase_term_to_the_loss(model, data_dir, tmp_path):
    with torch.inference_mode():
        plain = VocoderTuner(model, cfg(data_dir, tmp_path))
        phased = VocoderTuner(model, cfg(data_dir, tmp_path, lambda_phase=2.0))
    y = torch.stack([plain.data.segment(0, torch.Generator().manual_seed(1))])[:, None]
    with torch.no_grad():
        a, terms_a = plain.losses(y)
        b, terms_b = phased.losses(y)
    assert terms_a.phase is None and float(terms_b.phase) > 0
    assert float(b) == pytest.approx(float(a) + 2.0 * float(terms_b.phase), rel=1e-5)


def test_gafilters_start_as_the_identity(model):
    base = clone_vocoder(model.manager.get("vocoder"), torch.device("cpu"))
    mel = torch.randn(1, base.cfg.num_mels, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = base(mel)
        n = attach_gafilters(base, 5)
        after = base(mel)
    assert n > 0 and torch.allclose(before, after, atol=1e-6)
    with pytest.raises(SelvaError, match="gafilter_kernel_size must be an odd number, got 4"):
        VocoderTuningConfig(data_dir=Path("."), output_path=Path("."), use_gafilter=True,
                            gafilter_kernel_size=4).validate()


def test_gafilter_tuning_trains_saves_and_loads_them(model, data_dir, tmp_path):
    with torch.inference_mode():
        path, result = tune_vocoder(model, cfg(data_dir, tmp_path, use_gafilter=True, gafilter_kernel_size=5))
    tuned = ck.read_tuned_vocoder(path)
    filters = {k: v for k, v in tuned.tensors.items() if ".gafilter." in k}
    assert filters and gafilter_kernel_size(tuned.tensors) == 5
    identity = torch.zeros(5)
    identity[2] = 1
    assert any(not torch.allclose(v[:, 0], identity.expand_as(v[:, 0])) for v in filters.values())
    # the Loader attaches the filters again: the loaded vocoder is the tuned one
    view = with_tuned_vocoder(model, path)
    mel = torch.randn(1, model.variant.mel.num_mels, 10,
                      generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), view.manager.use(view.stage_name("vocoder")) as loaded, \
            model.manager.use("vocoder") as base:
        tuned_out, base_out = loaded(mel), base(mel)
        fresh = clone_vocoder(base, torch.device("cpu"))
        attach_gafilters(fresh, 5)
        ck.apply_tuned(fresh, tuned)
        assert torch.allclose(tuned_out.cpu(), fresh(mel), atol=1e-6)
        assert not torch.allclose(tuned_out, base_out, atol=1e-4)


def _random_adapter(model, path):
    from comfyui_selva.selva.adapters import LoraConfig, LoraSet, save_adapter
    from comfyui_selva.selva.train.lora_trainer import clone_generator

    gen = clone_generator(model)
    lora = LoraSet.create(gen, LoraConfig(rank=2, alpha=2.0), rng=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for _, layer in lora.items():
            layer.up.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    save_adapter(lora.to_adapter(variant=model.variant.name), path)
    return path


def test_lora_adapter_trains_on_the_adapted_generators_mels(model, tmp_path):
    from comfyui_selva.selva.vocoder_tuning.lora_mels import lora_mel_pairs
    from train_data import make_dataset

    data = make_dataset(model, tmp_path / "clips", clips=2)
    adapter = _random_adapter(model, tmp_path / "adapter.safetensors")
    with torch.inference_mode():
        pairs = lora_mel_pairs(model, data, adapter, seed=0, segment_frames=8)
        tuner = VocoderTuner(model, cfg(data, tmp_path, lora_adapter=str(adapter)))
    assert len(pairs) == 2 and tuner.pairs is not None and len(tuner.data) == 2
    hop = model.variant.mel.hop_size
    assert all(a.numel() == m.shape[-1] * hop for m, a in zip(pairs.mels, pairs.audios))
    # the mels are the adapted generator's: a zero-strength adapter (the base) makes others
    zero = _random_adapter(model, tmp_path / "zero.safetensors")
    from comfyui_selva.selva.adapters import load_adapter, save_adapter
    a = load_adapter(zero)
    for w in a.modules.values():
        w.up.zero_()
    save_adapter(a, tmp_path / "zero2.safetensors")
    with torch.inference_mode():
        base_pairs = lora_mel_pairs(model, data, tmp_path / "zero2.safetensors", seed=0, segment_frames=8)
    assert not torch.allclose(pairs.mels[0], base_pairs.mels[0], atol=1e-4)
    assert torch.equal(pairs.audios[0], base_pairs.audios[0])
    loop = dataclasses.replace(loop_config(tuner.cfg), steps=2, eval_samples=True)
    with torch.inference_mode():
        result = run_training(tuner, loop, tmp_path / "run")
    assert result.steps_done == 2 and (result.run_dir / "samples" / "step_000002.wav").is_file()
