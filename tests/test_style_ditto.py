"""DITTO: the noise optimiser lowers its style loss, 0 steps is the Sampler, errors and interrupts."""
from __future__ import annotations

import pytest
import torch

from comfy_pack import pack_module
from node_helpers import dog_features, env_for_models, run_node
from style_helpers import reference_dir, write_wav

SelvaError = pack_module("selva.errors").SelvaError
hooks_mod = pack_module("selva.hooks")
ditto = pack_module("selva.style.ditto")
reference = pack_module("selva.style.reference")


@pytest.fixture(scope="module")
def features(model, tmp_path_factory):
    return dog_features(model, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return reference_dir(tmp_path_factory.mktemp("ditto"))


def run_ditto(model, features, refs, **kw):
    args = dict(model=model, features=features, prompt="", negative_prompt="", reference_dir=str(refs),
                n_opt_steps=2, opt_lr=0.1, n_ode_steps=3, n_grad_steps=2, style_weight=1.0, steps=2,
                cfg_strength=4.5, seed=0, normalize=False)
    args.update(kw)
    (audio,) = run_node("SelvaDittoOptimizer", **args)
    return audio


def sampler(model, features, **kw):
    args = dict(model=model, features=features, prompt="", negative_prompt="", duration=0.0, steps=2,
                cfg_strength=4.5, seed=0, normalize=False, batch_size=1)
    args.update(kw)
    (audio,) = run_node("SelvaSampler", **args)
    return audio


def stats_of(model, refs):
    return reference.REFERENCE_CACHE.get_or_compute(model, reference.find_audio_files(refs))


def test_zero_opt_steps_is_the_sampler_bit_for_bit(model, features, refs):
    for kw in ({}, {"negative_prompt": "music", "seed": 7, "prompt": "rain"}):
        plain = sampler(model, features, **kw)["waveform"]
        zero = run_ditto(model, features, refs, n_opt_steps=0, **kw)["waveform"]
        assert torch.equal(plain, zero)


def test_optimising_inside_inference_mode_changes_the_audio(model, features, refs):
    plain = sampler(model, features)["waveform"]
    tuned = run_ditto(model, features, refs, n_opt_steps=2)["waveform"]  # run_node: inference mode
    assert tuned.shape == plain.shape and torch.isfinite(tuned).all()
    assert not torch.allclose(plain, tuned)


def test_style_loss_goes_down_over_steps(model, features, refs):
    target = stats_of(model, refs)
    config = ditto.DittoConfig(n_opt_steps=12, opt_lr=0.1, n_ode_steps=4, n_grad_steps=2, steps=2)
    with torch.inference_mode():
        x0, losses, best = ditto.optimise_noise(model, features, target, config)
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    assert best == min(losses) and best < 0.92 * losses[0]
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 9  # mostly monotone
    # x0 stays on the Gaussian shell of the seed's noise
    seq = model.variant.seq_lengths(features.duration)
    start = pack_module("selva.sampling").initial_noise(1, seq.latent, x0.shape[-1], seed=0,
                                                       device="cpu", dtype=torch.float32)
    assert x0.shape == start.shape and not torch.equal(x0, start)
    torch.testing.assert_close(x0.norm(), start.norm(), rtol=1e-5, atol=1e-5)


def test_the_returned_noise_is_the_best_one_even_when_the_last_step_was_worse(model, features, refs,
                                                                            monkeypatch):
    """The noise handed to the final pass is the one whose style loss was the reported best."""
    target = stats_of(model, refs)
    integrated = []  # the noise each optimisation step integrated (its loss is losses[i])
    real_integrate = ditto._integrate

    def spy(velocity, x, grid, n_grad_steps):
        integrated.append(x.detach().clone())
        return real_integrate(velocity, x, grid, n_grad_steps)

    class AscendOnce(torch.optim.Adam):
        """Adam, except that its 4th step climbs the gradient: the 5th (last) loss is worse."""

        steps = 0

        def step(self, closure=None):
            AscendOnce.steps += 1
            if AscendOnce.steps != 4:
                return super().step(closure)
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.add_(p.grad / p.grad.norm() * p.norm())

    monkeypatch.setattr(ditto, "_integrate", spy)
    monkeypatch.setattr(torch.optim, "Adam", AscendOnce)
    config = ditto.DittoConfig(n_opt_steps=5, opt_lr=0.1, n_ode_steps=2, n_grad_steps=1, steps=1)
    with torch.inference_mode():
        x0, losses, best = ditto.optimise_noise(model, features, target, config)
    assert len(integrated) == len(losses) == 5
    assert losses[-1] > min(losses), losses  # the premise: the last step made it worse
    assert best == min(losses)
    assert losses.index(best) == 3 and torch.equal(x0, integrated[3])
    assert not torch.equal(x0, integrated[-1])


def test_a_non_finite_style_loss_says_what_to_change(model, features, refs, monkeypatch):
    monkeypatch.setattr(ditto, "style_loss", lambda mel, target, w: (mel * float("nan")).mean())
    config = ditto.DittoConfig(n_opt_steps=2, n_ode_steps=2, n_grad_steps=1, steps=1)
    with torch.inference_mode(), pytest.raises(SelvaError) as e:
        ditto.optimise_noise(model, features, stats_of(model, refs), config)
    assert str(e.value) == ("DITTO's style loss became nan at step 1. Lower opt_lr, or load the model "
                            "in fp32 or bf16 instead of fp16.")


def test_weights_stay_frozen(model, features, refs):
    gen = model.manager.get("generator")
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    run_ditto(model, features, refs, n_opt_steps=2)
    after = gen.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in gen.parameters())


def test_reference_statistics_are_cached_per_set(model, features, refs, tmp_path):
    cache = reference.ReferenceStatsCache()
    files = reference.find_audio_files(refs)
    assert len(files) == 3  # the nested one is found too
    a = cache.get_or_compute(model, files)
    b = cache.get_or_compute(model, files)
    assert a is b and cache.computed == 1
    other = reference.find_audio_files(reference_dir(tmp_path, n=4))
    c = cache.get_or_compute(model, other)
    assert cache.computed == 2 and not torch.equal(a.mean, c.mean)
    assert a.gram.shape == (a.mean.shape[0],) * 2
    torch.testing.assert_close(a.gram, a.gram.T)


def test_reference_audio_input_replaces_the_folder(model, features, refs):
    wave = torch.sin(torch.linspace(0, 2000, 16000))[None, None] * 0.3
    audio = run_ditto(model, features, "", reference_audio={"waveform": wave, "sample_rate": 16000})
    assert torch.isfinite(audio["waveform"]).all()
    # the default folder may not exist: with reference_audio connected it is skipped
    again = run_ditto(model, features, str(refs / "not_there"),
                      reference_audio={"waveform": wave, "sample_rate": 16000})
    assert torch.equal(again["waveform"], audio["waveform"])


def test_empty_reference_folder_is_a_clear_error(model, features, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SelvaError, match="holds no .wav"):
        run_ditto(model, features, tmp_path / "empty")
    with pytest.raises(SelvaError, match="does not exist"):
        run_ditto(model, features, tmp_path / "missing")
    with pytest.raises(SelvaError, match="No reference audio"):
        run_ditto(model, features, "")


def test_unreadable_audio_names_the_file(model, features, tmp_path):
    folder = tmp_path / "bad"
    write_wav(folder / "good.wav")
    (folder / "broken.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(SelvaError, match="broken.wav"):
        run_ditto(model, features, folder)


def test_more_grad_steps_than_ode_steps_is_refused(model, features, refs):
    with pytest.raises(SelvaError, match="n_grad_steps"):
        run_ditto(model, features, refs, n_ode_steps=3, n_grad_steps=4)


def test_interrupt_stops_between_steps_and_returns_nothing(model, features, refs):
    target = stats_of(model, refs)
    calls = []

    def interrupted():
        calls.append(1)
        return len(calls) > 3

    config = ditto.DittoConfig(n_opt_steps=20, n_ode_steps=2, n_grad_steps=1, steps=2)
    with torch.inference_mode(), pytest.raises(hooks_mod.Interrupted):
        ditto.ditto_generate(model, features, target, config,
                             hooks=hooks_mod.Hooks(interrupted=interrupted))
    assert len(calls) == 4  # stopped at the first check that saw the cancel


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_stays_finite(models_dir, features, refs, precision, monkeypatch):
    env_for_models(monkeypatch, models_dir)
    pipeline = pack_module("selva.pipeline")
    pipe = pipeline.SelvaPipeline.load(pipeline.LoadOptions(variant="tiny_16k", precision=precision,
                                                            device="cpu", models_dir=models_dir))
    target = stats_of(pipe, refs)
    config = ditto.DittoConfig(n_opt_steps=3, n_ode_steps=3, n_grad_steps=2, steps=2)
    with torch.inference_mode():
        result = ditto.ditto_generate(pipe, features, target, config)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert torch.isfinite(result.waveform).all()


def test_ditto_through_a_lora_view(model, features, refs):
    """A LoRA loaded (and first used) inside inference mode still lets DITTO differentiate."""
    adapters = pack_module("selva.adapters")
    with torch.inference_mode():
        gen = model.manager.get("generator")
        adapter_set = adapters.LoraSet.create(copy_of(gen), adapters.LoraConfig(rank=2, targets=("attn.qkv",)))
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in adapter_set.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        adapter = adapter_set.to_adapter(variant="tiny_16k")
    view = model.with_patches([adapters.LoraPatch(adapter, 1.0)])
    plain = sampler(model, features)["waveform"]
    lora_plain = sampler(view, features)["waveform"]  # builds the LoRA's frozen weights in inference mode
    assert not torch.allclose(plain, lora_plain)
    assert torch.equal(run_ditto(view, features, refs, n_opt_steps=0)["waveform"], lora_plain)
    tuned = run_ditto(view, features, refs, n_opt_steps=2)["waveform"]
    assert torch.isfinite(tuned).all() and not torch.allclose(tuned, lora_plain)


def copy_of(gen):
    import copy

    with torch.inference_mode(False):
        return copy.deepcopy(gen)


def test_progress_shows_the_loss_curve(model, features, refs):
    target = stats_of(model, refs)
    seen = []
    hooks = hooks_mod.Hooks(progress=lambda *a: None, preview=lambda stage, d, n, image: seen.append((stage, d, image)))
    config = ditto.DittoConfig(n_opt_steps=3, n_ode_steps=2, n_grad_steps=1, steps=2)
    with torch.inference_mode():
        ditto.optimise_noise(model, features, target, config, hooks=hooks)
    assert seen and seen[-1][:2] == ("DITTO", 3)  # the last step always re-draws
    assert seen[-1][2].size[0] > 100


def test_hidden_files_in_the_reference_folder_are_not_clips(model, features, tmp_path):
    """A folder copied from a Mac holds ``._name.wav`` resource forks (not audio); a trash or cache
    folder is hidden too: like the dataset readers, the reference set skips them."""
    folder = tmp_path / "refs"
    write_wav(folder / "a.wav", freq=330.0)
    write_wav(folder / "nested" / "b.wav", freq=660.0, seed=2)
    (folder / "._a.wav").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    write_wav(folder / ".Trash-1000" / "old.wav", freq=110.0)
    assert reference.find_audio_files(folder) == [folder / "a.wav", folder / "nested" / "b.wav"]
    run_ditto(model, features, folder, n_opt_steps=1)  # the resource fork is never decoded
