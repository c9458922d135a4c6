"""Activation steering: extract from a feature folder, save/load, steer the Sampler and DITTO."""
from __future__ import annotations

import pytest
import torch

from comfy_pack import pack_module
from node_helpers import frames, run_node, sampler_waveform as sample
from style_helpers import reference_dir

SelvaError = pack_module("selva.errors").SelvaError
hooks_mod = pack_module("selva.hooks")
steering = pack_module("selva.style.steering")


@pytest.fixture(scope="module")
def dataset(model, tmp_path_factory):
    """Three clips' features saved as .npz, a copy in the hidden cache (which the one dataset
    reader never reads, so it must not count), plus the first one in memory."""
    root = tmp_path_factory.mktemp("steer_data")
    feats = []
    for i, prompt in enumerate(["a dog barking", "rain on a roof", "a bell"]):
        f, _, _ = run_node("SelvaFeatureExtractor", model=model, video=frames(1.0, seed=i), prompt=prompt,
                           fps=25.0, duration=0.0, cache_dir="", mask_strength=1.0, mask_clip=True,
                           mask_sync=True)
        f.save(root / f"clip{i}.npz")
        feats.append(f)
    feats[0].save(root / ".selva_cache" / "features" / "copy_of_clip0.npz")
    return root, feats[0]


@pytest.fixture(scope="module")
def extracted(model, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("steer_out") / "style"
    path, chart = run_node("SelvaActivationSteeringExtractor", model=model, data_dir=str(dataset[0]),
                           output_path=str(out), n_samples=4, seed=0, n_timesteps=3)
    return path, chart


def test_extractor_writes_vectors_and_chart(model, extracted):
    path, chart = extracted
    assert path.endswith(".safetensors")
    png = path[: -len(".safetensors")] + ".png"
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert chart.dim() == 4 and chart.shape[-1] == 3 and 0 <= chart.min() and chart.max() <= 1
    (vectors,) = run_node("SelvaActivationSteeringLoader", path=path)
    gen = model.manager.get("generator")
    n_blocks = len(gen.joint_blocks) + len(gen.fused_blocks)
    assert vectors.vectors.shape == (n_blocks, gen.cfg.hidden_dim)
    assert vectors.block_names[0] == "joint_0" and vectors.block_names[-1].startswith("fused_")
    assert vectors.variant == "tiny_16k" and vectors.info["n_samples"] == 4
    assert vectors.info["n_timesteps"] == 3 and vectors.info["clips"] == 3
    torch.testing.assert_close(vectors.magnitudes, vectors.vectors.norm(dim=-1))
    assert (vectors.magnitudes > 0).all() and (vectors.hidden_norms > 0).all()


def test_round_trip_is_exact(tmp_path, extracted):
    (vectors,) = run_node("SelvaActivationSteeringLoader", path=extracted[0])
    copy = steering.SteeringVectors.load(vectors.save(tmp_path / "copy.safetensors"))
    assert torch.equal(copy.vectors, vectors.vectors) and copy.info == vectors.info
    assert copy.block_names == vectors.block_names and copy.variant == vectors.variant


def test_extracting_again_never_overwrites(model, dataset, extracted):
    first = extracted[0]
    before = open(first, "rb").read()
    path, _ = run_node("SelvaActivationSteeringExtractor", model=model, data_dir=str(dataset[0]),
                       output_path=first, n_samples=1, seed=1, n_timesteps=1)
    assert path != first and path.endswith("_00001.safetensors")
    assert open(first, "rb").read() == before


def test_strength_zero_is_the_plain_sampler_and_above_zero_differs(model, dataset, extracted):
    feats = dataset[1]
    (vectors,) = run_node("SelvaActivationSteeringLoader", path=extracted[0])
    plain = sample(model, feats)
    assert torch.equal(plain, sample(model, feats, steering_vectors=vectors, steering_strength=0.0))
    steered = sample(model, feats, steering_vectors=vectors, steering_strength=0.5)
    top1 = sample(model, feats, steering_vectors=vectors, steering_strength=0.5, steering_blocks="top1")
    listed = sample(model, feats, steering_vectors=vectors, steering_strength=0.5, steering_blocks="0, 2")
    assert not torch.allclose(plain, steered) and not torch.allclose(steered, top1)
    assert not torch.allclose(top1, listed)
    # nothing stays attached to the shared generator
    gen = model.manager.get("generator")
    assert not any(b._forward_hooks for b in list(gen.joint_blocks) + list(gen.fused_blocks))
    assert torch.equal(plain, sample(model, feats))


def test_steering_works_in_ditto_too(model, dataset, extracted, tmp_path):
    feats = dataset[1]
    (vectors,) = run_node("SelvaActivationSteeringLoader", path=extracted[0])
    steered = sample(model, feats, steering_vectors=vectors, steering_strength=0.5)
    (audio,) = run_node("SelvaDittoOptimizer", model=model, features=feats, prompt="", negative_prompt="",
                        reference_dir=str(reference_dir(tmp_path)), n_opt_steps=0, opt_lr=0.1,
                        n_ode_steps=2, n_grad_steps=1, style_weight=1.0, steps=2, cfg_strength=4.5,
                        seed=0, normalize=False, steering_vectors=vectors, steering_strength=0.5)
    assert torch.equal(audio["waveform"], steered)
    (tuned,) = run_node("SelvaDittoOptimizer", model=model, features=feats, prompt="", negative_prompt="",
                        reference_dir=str(reference_dir(tmp_path)), n_opt_steps=1, opt_lr=0.1,
                        n_ode_steps=2, n_grad_steps=1, style_weight=1.0, steps=2, cfg_strength=4.5,
                        seed=0, normalize=False, steering_vectors=vectors, steering_strength=0.5)
    assert torch.isfinite(tuned["waveform"]).all()


def test_block_choice_is_checked(extracted):
    (vectors,) = run_node("SelvaActivationSteeringLoader", path=extracted[0])
    n = vectors.n_blocks
    assert steering.parse_blocks("all", vectors) == tuple(range(n))
    top = steering.parse_blocks("TOP2", vectors)
    assert len(top) == 2 and set(top) == set(torch.argsort(vectors.magnitudes, descending=True)[:2].tolist())
    for bad, msg in (("top0", "between 1"), (f"0,{n}", "must lie in"), ("first", "topK"), ("topx", "number")):
        with pytest.raises(SelvaError, match=msg):
            steering.parse_blocks(bad, vectors)


def test_vectors_of_another_model_are_refused(model, dataset, extracted):
    (vectors,) = run_node("SelvaActivationSteeringLoader", path=extracted[0])
    wrong = steering.SteeringVectors(torch.ones(vectors.n_blocks, 7), torch.ones(vectors.n_blocks),
                                     torch.ones(vectors.n_blocks), "other_variant", vectors.block_names)
    with pytest.raises(SelvaError, match="other_variant"):
        sample(model, dataset[1], steering_vectors=wrong, steering_strength=0.1)


def test_bad_inputs_give_clear_errors(model, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SelvaError, match="holds no .npz features files"):
        run_node("SelvaActivationSteeringExtractor", model=model, data_dir=str(tmp_path / "empty"),
                 output_path=str(tmp_path / "x"), n_samples=1, seed=0)
    (tmp_path / "not.safetensors").write_bytes(b"garbage")
    with pytest.raises(SelvaError) as e:
        run_node("SelvaActivationSteeringLoader", path=str(tmp_path / "not.safetensors"))
    assert str(e.value).startswith(f"Cannot read {tmp_path / 'not.safetensors'} as a safetensors "
                                   f"steering vectors file (")
    assert str(e.value).endswith("); the file may be incomplete or of another kind.")
    with pytest.raises(SelvaError, match="does not exist"):
        run_node("SelvaActivationSteeringLoader", path=str(tmp_path / "missing.safetensors"))


def test_interrupt_writes_nothing(model, dataset, tmp_path, monkeypatch):
    compat = pack_module("nodes.comfy_compat")
    monkeypatch.setattr(compat, "processing_interrupted", lambda: True)
    with pytest.raises(hooks_mod.Interrupted):
        run_node("SelvaActivationSteeringExtractor", model=model, data_dir=str(dataset[0]),
                 output_path=str(tmp_path / "out" / "v"), n_samples=2, seed=0, n_timesteps=2)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_relative_paths_live_in_the_output_folder(model, dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("SELVA_OUTPUT_DIR", str(tmp_path / "comfy_out"))
    path, _ = run_node("SelvaActivationSteeringExtractor", model=model, data_dir=str(dataset[0]),
                       output_path="selva/steering/rel", n_samples=1, seed=0, n_timesteps=1)
    assert path == str(tmp_path / "comfy_out" / "selva" / "steering" / "rel.safetensors")
    (vectors,) = run_node("SelvaActivationSteeringLoader", path="selva/steering/rel.safetensors")
    assert vectors.n_blocks > 0
