"""Per-position steering (the earlier SelVA pack's mode): one vector per block and latent position,
added to the conditional guidance branch only; the earlier ``.pt`` files load into it and convert."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfy_pack import pack_module
from node_helpers import frames, run_node, sampler_waveform as sample

SelvaError = pack_module("selva.errors").SelvaError
steering = pack_module("selva.style.steering")
conditioning = pack_module("selva.conditioning")
cli = pack_module("selva.cli")


@pytest.fixture(scope="module")
def dataset(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("steer_pos_data")
    feats = []
    for i, prompt in enumerate(["a dog barking", "rain on a roof"]):
        f, _, _ = run_node("SelvaFeatureExtractor", model=model, video=frames(1.0, seed=i), prompt=prompt,
                           fps=25.0, duration=0.0, cache_dir="", mask_strength=1.0, mask_clip=True,
                           mask_sync=True)
        f.save(root / f"clip{i}.npz")
        feats.append(f)
    return root, feats


def _blocks(gen):
    return list(gen.joint_blocks) + list(gen.fused_blocks)


def _random_vectors(gen, positions, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(_blocks(gen))
    vecs = torch.randn(n, positions, gen.cfg.hidden_dim, generator=g)
    names = [f"joint_{i}" for i in range(len(gen.joint_blocks))] + [
        f"fused_{i}" for i in range(len(gen.fused_blocks))]
    return steering.SteeringVectors(vecs, vecs.norm(dim=-1).mean(-1), torch.ones(n), "tiny_16k", names)


def _hand_steered_flow(gen, x, t, cond, vectors, strength, blocks):
    """predict_flow with strength * (vectors resampled to the latent length) added to the chosen
    blocks' latent stream on every pass: written here independently of the pack's hooks."""
    def add(i):
        def hook(module, inputs, output):
            latent = output[0] if isinstance(output, tuple) else output
            v = vectors[i]
            if v.shape[0] != latent.shape[1]:  # torch's linear resampling, half-pixel centres
                v = F.interpolate(v.T.unsqueeze(0), size=latent.shape[1], mode="linear",
                                  align_corners=False).squeeze(0).T
            new = latent + strength * v
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook

    handles = [_blocks(gen)[i].register_forward_hook(add(i)) for i in blocks]
    try:
        return gen.predict_flow(x, t, cond)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("positions", [None, 3])  # None: the generation's length; 3: resampled
def test_vectors_change_only_the_conditional_branch(model, dataset, positions):
    pipe = model
    feats = dataset[1][0]
    seq = pipe.variant.seq_lengths(feats.duration)
    with torch.no_grad(), pipe.use_generator() as gen:
        cond, uncond = conditioning.clip_conditions(gen, feats, seq, None, pipe.device, torch.float32)
        vectors = _random_vectors(gen, positions or seq.latent)
        x = torch.randn(2, seq.latent, gen.latent_dim, generator=torch.Generator().manual_seed(1))
        t = 0.3
        t_batch = torch.full((2,), t)
        strength, blocks, cfg = 0.05, (0, 2), 4.5
        v_cond = _hand_steered_flow(gen, x, t_batch, cond.expand(2), vectors.vectors, strength, blocks)
        v_uncond = gen.predict_flow(x, t_batch, uncond.expand(2))  # untouched
        expected = cfg * v_cond + (1 - cfg) * v_uncond
        patch = steering.SteeringPatch(vectors, strength, blocks)
        with patch.attach(gen):
            batched = gen.cfg_velocity(t, x, cond, uncond, cfg, batched=True)
            separate = gen.cfg_velocity(t, x, cond, uncond, cfg, batched=False)
            weak = gen.cfg_velocity(t, x, cond, uncond, 0.5)  # below 1: the conditional pass alone
            outside = gen.predict_flow(x, t_batch, cond.expand(2))  # no guided call: no branch
        torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(separate, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(weak, v_cond, rtol=1e-5, atol=1e-5)
        assert torch.equal(outside, gen.predict_flow(x, t_batch, cond.expand(2)))
        # the steering really moved the conditional branch (the check above is not vacuous)
        assert not torch.allclose(v_cond, gen.predict_flow(x, t_batch, cond.expand(2)), atol=1e-4)
        # nothing left behind on the shared generator
        assert "cfg_velocity" not in vars(gen)
        assert not any(b._forward_hooks or b._forward_pre_hooks for b in _blocks(gen))


def test_per_block_vectors_still_move_both_branches(model, dataset):
    """Contrast: a per-block file keeps acting on the unconditional branch too."""
    pipe = model
    feats = dataset[1][0]
    seq = pipe.variant.seq_lengths(feats.duration)
    with torch.no_grad(), pipe.use_generator() as gen:
        cond, uncond = conditioning.clip_conditions(gen, feats, seq, None, pipe.device, torch.float32)
        n = len(_blocks(gen))
        vecs = torch.randn(n, gen.cfg.hidden_dim, generator=torch.Generator().manual_seed(2))
        per_block = steering.SteeringVectors(vecs, vecs.norm(dim=-1), torch.ones(n), "tiny_16k",
                                             steering.block_names(gen))
        assert per_block.mode == "per_block"
        x = torch.randn(1, seq.latent, gen.latent_dim, generator=torch.Generator().manual_seed(3))
        t = torch.full((1,), 0.3)
        plain_uncond = gen.predict_flow(x, t, uncond)
        recorded = {}
        with steering.SteeringPatch(per_block, 0.5, (0,)).attach(gen):
            recorded["u"] = gen.predict_flow(x, t, uncond)
        assert not torch.allclose(recorded["u"], plain_uncond, atol=1e-4)


@pytest.fixture(scope="module")
def extracted(model, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("steer_pos_out") / "style"
    path, _ = run_node("SelvaActivationSteeringExtractor", model=model, data_dir=str(dataset[0]),
                       output_path=str(out), n_samples=2, seed=0, n_timesteps=2, mode="per_position")
    return path


def test_extractor_keeps_positions_and_round_trips(model, dataset, extracted, tmp_path):
    (vectors,) = run_node("SelvaActivationSteeringLoader", path=extracted)
    gen = model.manager.get("generator")
    seq = model.variant.seq_lengths(dataset[1][0].duration)
    assert vectors.mode == "per_position"
    assert vectors.vectors.shape == (len(_blocks(gen)), seq.latent, gen.cfg.hidden_dim)
    torch.testing.assert_close(vectors.magnitudes, vectors.vectors.norm(dim=-1).mean(-1))
    assert (vectors.magnitudes > 0).all()
    copy = steering.SteeringVectors.load(vectors.save(tmp_path / "copy.safetensors"))
    assert copy.mode == "per_position" and torch.equal(copy.vectors, vectors.vectors)
    # the positions differ, or the mode would be the per-block one in disguise
    assert not torch.allclose(vectors.vectors[:, :1].expand_as(vectors.vectors), vectors.vectors)


def test_unknown_mode_is_refused(model, dataset, tmp_path):
    with pytest.raises(SelvaError, match="Steering mode 'per_token' is not one of per_block, per_position"):
        steering.extract_steering(model, [dataset[0] / "clip0.npz"],
                                  steering.SteeringConfig(n_samples=1, n_timesteps=1, mode="per_token"))


def test_strength_zero_is_the_plain_sampler(model, dataset, extracted):
    feats = dataset[1][1]
    (vectors,) = run_node("SelvaActivationSteeringLoader", path=extracted)
    plain = sample(model, feats)
    assert torch.equal(plain, sample(model, feats, steering_vectors=vectors, steering_strength=0.0))
    steered = sample(model, feats, steering_vectors=vectors, steering_strength=0.5)
    assert not torch.allclose(plain, steered)
    assert torch.equal(plain, sample(model, feats))  # nothing stays attached


def _earlier_file(gen, path, positions=7, seed=5):
    """A steering file in the earlier pack's layout (its Extractor's torch.save payload)."""
    g = torch.Generator().manual_seed(seed)
    vecs = [torch.randn(positions, gen.cfg.hidden_dim, generator=g) * 0.05 for _ in _blocks(gen)]
    torch.save({"steering_vectors": vecs, "n_blocks": len(vecs), "n_joint": len(gen.joint_blocks),
                "n_fused": len(gen.fused_blocks), "latent_seq_len": positions, "n_samples": 4,
                "seed": 42, "mode": "16k", "variant": "tiny_16k"}, path)
    return torch.stack(vecs)


def test_earlier_pt_loads_per_position_and_converts_to_the_same_output(model, dataset, tmp_path):
    gen = model.manager.get("generator")
    stacked = _earlier_file(gen, tmp_path / "steering_vectors.pt")
    (loaded,) = run_node("SelvaActivationSteeringLoader", path=str(tmp_path / "steering_vectors.pt"))
    assert loaded.mode == "per_position" and torch.equal(loaded.vectors, stacked)
    assert loaded.block_names == steering.block_names(gen) and loaded.info["seed"] == 42
    assert cli.main(["convert", str(tmp_path / "steering_vectors.pt"), str(tmp_path / "s.safetensors")]) == 0
    (converted,) = run_node("SelvaActivationSteeringLoader", path=str(tmp_path / "s.safetensors"))
    assert converted.mode == "per_position" and torch.equal(converted.vectors, stacked)
    assert converted.info["converted_from"] == "earlier SelVA pack: steering_vectors.pt"
    feats = dataset[1][0]
    direct = sample(model, feats, steering_vectors=loaded, steering_strength=0.3)
    assert torch.equal(direct, sample(model, feats, steering_vectors=converted, steering_strength=0.3))
    assert not torch.allclose(direct, sample(model, feats))


def test_damaged_earlier_file_is_refused(model, tmp_path):
    gen = model.manager.get("generator")
    n = len(_blocks(gen))
    torch.save({"steering_vectors": [torch.randn(4, 8)] * n, "n_joint": n + 1, "n_fused": 0},
               tmp_path / "bad.pt")
    with pytest.raises(SelvaError, match=r"n_joint .* do not add up to its \d+ vectors"):
        steering.SteeringVectors.load(tmp_path / "bad.pt")
    torch.save({"steering_vectors": [torch.randn(4, 8), torch.randn(5, 8)], "n_joint": 1, "n_fused": 1},
               tmp_path / "ragged.pt")
    with pytest.raises(SelvaError, match="not a list of equally shaped"):
        steering.SteeringVectors.load(tmp_path / "ragged.pt")


def test_per_position_steering_works_in_ditto(model, dataset, extracted, tmp_path):
    from style_helpers import reference_dir

    feats = dataset[1][0]
    (vectors,) = run_node("SelvaActivationSteeringLoader", path=extracted)
    steered = sample(model, feats, steering_vectors=vectors, steering_strength=0.5)
    common = dict(model=model, features=feats, prompt="", negative_prompt="",
                  reference_dir=str(reference_dir(tmp_path)), opt_lr=0.1, n_ode_steps=2, n_grad_steps=1,
                  style_weight=1.0, steps=2, cfg_strength=4.5, seed=0, normalize=False,
                  steering_vectors=vectors, steering_strength=0.5)
    (audio,) = run_node("SelvaDittoOptimizer", n_opt_steps=0, **common)
    assert torch.equal(audio["waveform"], steered)  # no optimisation: the steered Sampler
    (tuned,) = run_node("SelvaDittoOptimizer", n_opt_steps=1, **common)  # gradients through the hooks
    assert torch.isfinite(tuned["waveform"]).all()
    gen = model.manager.get("generator")
    assert "cfg_velocity" not in vars(gen)


def test_unnamed_models_vectors_that_do_not_fit_say_so(model):
    """An earlier-pack file records no variant: the mismatch message must not read 'made with  ('."""
    gen = model.manager.get("generator")
    full = _random_vectors(gen, 4)
    n = full.n_blocks - 1
    odd = steering.SteeringVectors(full.vectors[:n], full.magnitudes[:n], full.hidden_norms[:n], "",
                                   full.block_names[:n])
    with pytest.raises(SelvaError) as e:
        with steering.SteeringPatch(odd, 1.0, (0,)).attach(gen):
            pass
    assert str(e.value) == (f"These steering vectors were made with a model the file does not name ({n} "
                            f"blocks of width {gen.cfg.hidden_dim}), but the model's generator has {n + 1} "
                            f"blocks of width {gen.cfg.hidden_dim}. Extract vectors with this model.")
