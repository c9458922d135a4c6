"""The MM-DiT generator: tiny networks end to end, strict loading of the released files."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from manifest import state_dict_for

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.models.generator import (DERIVED_KEYS, LARGE_44K, MEDIUM_44K, SMALL_16K,
                                                  SMALL_44K, GeneratorConfig, SelvaGenerator,
                                                  load_generator_weights)
from comfyui_selva.selva.models.layers import (MLP, MMDitSingleBlock, attention,
                                               compute_rope_rotations)
from comfyui_selva.selva.sampling import euler_sample, initial_noise

GOLDEN = Path(__file__).resolve().parent / "data" / "generator_golden.pt"

TINY = GeneratorConfig(latent_dim=8, clip_dim=24, sync_dim=16, text_dim=20, hidden_dim=64,
                       depth=3, fused_depth=2, num_heads=2, text_seq_len=77)
LENS = (40, 16, 48)  # latent, clip, sync


def fill_deterministic(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter seeded, well-scaled random values (key order independent).

    Also used (outside the repository) to build ``generator_golden.pt`` from the official code, so
    it must depend on nothing but key names, shapes and ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name == "latent_std":
                value = noise.abs() * 0.5 + 0.5
            elif p.dim() >= 2 and "empty" not in name and "pos_emb" not in name:
                value = noise / p[0].numel()**0.5
            else:
                value = noise * 0.3 + (1.0 if "norm" in name else 0.0)
            p.copy_(value)


def tiny_generator(cfg: GeneratorConfig = TINY, seed: int = 0) -> SelvaGenerator:
    model = SelvaGenerator(cfg, latent_seq_len=LENS[0], clip_seq_len=LENS[1],
                           sync_seq_len=LENS[2]).eval()
    fill_deterministic(model, seed)
    return model


def features(cfg: GeneratorConfig, batch: int, lens=LENS, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    clip = torch.randn(batch, lens[1], cfg.clip_dim, generator=gen)
    sync = torch.randn(batch, lens[2], cfg.sync_dim, generator=gen)
    text = torch.randn(batch, cfg.text_seq_len, cfg.text_dim, generator=gen)
    return clip, sync, text


def sample(model, clip, sync, text, *, seed=3, steps=3, cfg_strength=4.5, neg=None,
           dtype=torch.float32):
    model = model.to(dtype)
    cond = model.preprocess_conditions(clip.to(dtype), sync.to(dtype), text.to(dtype))
    uncond = model.empty_conditions(len(clip), None if neg is None else neg.to(dtype))
    x0 = initial_noise(len(clip), model.latent_seq_len, model.latent_dim, seed=seed,
                       device="cpu", dtype=dtype)
    return euler_sample(lambda t, x: model.cfg_velocity(t, x, cond, uncond, cfg_strength), x0,
                        steps)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


# --------------------------------------------------------------------------------------------
# tiny networks end to end
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("v2", [False, True])
def test_predict_flow_shapes(v2):
    cfg = dataclasses.replace(TINY, v2=v2)
    model = tiny_generator(cfg)
    clip, sync, text = features(cfg, 2)
    cond = model.preprocess_conditions(clip, sync, text)
    assert cond.clip_f.shape == (2, LENS[1], 64)
    assert cond.sync_f.shape == (2, LENS[0], 64)  # upsampled to the latent rate
    assert cond.text_f.shape == (2, 77, 64)
    assert cond.clip_f_c.shape == cond.text_f_c.shape == (2, 64)
    v = model.predict_flow(torch.randn(2, LENS[0], 8), torch.rand(2), cond)
    assert v.shape == (2, LENS[0], 8) and torch.isfinite(v).all()


def test_seq_length_update_rebuilds_rotary_tables_and_checks_inputs():
    model = tiny_generator()
    model.set_seq_lengths(63, 16, 40)
    assert (model.latent_seq_len, model.clip_seq_len, model.sync_seq_len) == (63, 16, 40)
    assert torch.equal(model.latent_rot, compute_rope_rotations(63, 32))
    assert torch.equal(model.clip_rot, compute_rope_rotations(16, 32, freq_scaling=63 / 16))
    assert "latent_rot" not in model.state_dict()

    clip, sync, text = features(TINY, 1, lens=(63, 16, 40))
    v = model.predict_flow(torch.randn(1, 63, 8), torch.zeros(1),
                           model.preprocess_conditions(clip, sync, text))
    assert v.shape == (1, 63, 8)
    with pytest.raises(SelvaError, match="set_seq_lengths"):
        model.preprocess_conditions(*features(TINY, 1))  # features for the old duration
    with pytest.raises(SelvaError, match="multiple of 8"):
        model.set_seq_lengths(63, 16, 41)


def test_rotary_tables_stay_float32_after_dtype_change():
    model = tiny_generator().to(torch.bfloat16)
    assert model.latent_rot.dtype == model.clip_rot.dtype == torch.float32
    assert torch.equal(model.latent_rot, compute_rope_rotations(LENS[0], 32))
    assert model.latent_mean.dtype == torch.bfloat16


def test_sampling_is_deterministic_and_seeded():
    model = tiny_generator()
    feats = features(TINY, 2)
    a = sample(model, *feats, seed=5)
    assert torch.equal(a, sample(model, *feats, seed=5))
    assert not torch.allclose(a, sample(model, *feats, seed=6))


def test_cfg_strength():
    model = tiny_generator()
    feats = features(TINY, 2)
    cond = model.preprocess_conditions(*feats)
    uncond = model.empty_conditions(2)
    x = torch.randn(2, LENS[0], 8)
    t = torch.full((2,), 0.5)
    v_c = model.predict_flow(x, t, cond)
    v_u = model.predict_flow(x, t, uncond)
    assert not torch.allclose(v_c, v_u)
    # Below 1 the unconditional pass is skipped; at 1 it has zero weight.
    assert torch.equal(model.cfg_velocity(0.5, x, cond, uncond, 0.5), v_c)
    torch.testing.assert_close(model.cfg_velocity(0.5, x, cond, uncond, 1.0), v_c)
    torch.testing.assert_close(model.cfg_velocity(0.5, x, cond, uncond, 4.5, batched=False),
                               4.5 * v_c - 3.5 * v_u)


def test_empty_and_negative_conditions():
    model = tiny_generator()
    bs = 3
    empty = model.empty_conditions(bs)
    assert empty.clip_f.shape == (bs, LENS[1], 64) and empty.text_f_c.shape == (bs, 64)
    assert torch.equal(empty.text_f[0], empty.text_f[2])  # one learned empty string for all

    neg = torch.randn(bs, 77, TINY.text_dim)
    negative = model.empty_conditions(bs, neg)
    assert torch.equal(negative.clip_f, empty.clip_f)  # video side stays unconditional
    assert torch.equal(negative.sync_f, empty.sync_f)
    assert not torch.allclose(negative.text_f, empty.text_f)
    assert not torch.allclose(negative.text_f_c, empty.text_f_c)

    one = model.empty_conditions(bs, neg[:1])  # one negative prompt for the whole batch
    same = model.empty_conditions(bs, neg[:1].expand(bs, -1, -1))
    torch.testing.assert_close(one.text_f, same.text_f)
    with pytest.raises(SelvaError, match="negative prompt batch 2 does not match batch 3"):
        model.empty_conditions(bs, neg[:2])
    feats = features(TINY, bs)
    assert not torch.allclose(sample(model, *feats, neg=neg), sample(model, *feats))


def test_normalize_round_trip_is_not_in_place():
    model = tiny_generator()
    x = torch.randn(2, LENS[0], 8)
    before = x.clone()
    y = model.normalize(x)
    assert torch.equal(x, before)
    torch.testing.assert_close((y * model.latent_std) + model.latent_mean, x)
    torch.testing.assert_close(model.unnormalize(y), x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_sampling_is_finite_and_close(dtype):
    ref = sample(tiny_generator(), *features(TINY, 2))
    low = sample(tiny_generator(), *features(TINY, 2), dtype=dtype)
    assert low.dtype == dtype
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_fp16_gated_mlp_does_not_overflow_in_the_gate_product():
    # silu(w1 x) * w3 x reaches ~1e6 (beyond float16) while the output stays in range.
    mlp = MLP(4, 8)
    with torch.no_grad():
        mlp.w1.weight.fill_(0.0)
        mlp.w3.weight.fill_(0.0)
        mlp.w1.weight[0, 0] = mlp.w3.weight[0, 0] = 1.0
        mlp.w2.weight.fill_(0.0)
        mlp.w2.weight[0, 0] = 1e-3
    x = torch.zeros(1, 4)
    x[0, 0] = 1000.0
    want = mlp(x)
    got = mlp.half()(x.half())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, rtol=2e-3, atol=1e-3)


def test_fp16_block_keeps_a_large_residual_stream_in_float32():
    block = MMDitSingleBlock(64, 2, kernel_size=3, padding=1).eval()
    fill_deterministic(block, 0)
    x = torch.randn(1, 10, 64) * 6e4  # float32 stream beyond the float16 range after the update
    c = torch.randn(1, 1, 64)
    want = block(x, c, None)
    got = block.half()(x, c.half(), None)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1.0)


def test_attention_merges_heads_channel_last():
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    out = attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 5, 12)
    assert torch.equal(out[:, :, 4:8], ref[:, 1])


# --------------------------------------------------------------------------------------------
# parity with the official code (golden values produced by it on the same seeded weights)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["v1", "v2"])
def test_matches_official_golden_values(case):
    golden = torch.load(GOLDEN, weights_only=True)[case]
    cfg = GeneratorConfig(**golden["config"])
    model = SelvaGenerator(cfg, latent_seq_len=golden["lens"][0], clip_seq_len=golden["lens"][1],
                           sync_seq_len=golden["lens"][2]).eval()
    fill_deterministic(model, golden["weight_seed"])
    ins = golden["inputs"]
    cond = model.preprocess_conditions(ins["clip"], ins["sync"], ins["text"])
    v = model.predict_flow(ins["x"], ins["t"], cond)
    torch.testing.assert_close(v, golden["predict_flow"], rtol=0, atol=1e-5)

    uncond = model.empty_conditions(1, ins["neg"])
    x0 = initial_noise(1, model.latent_seq_len, model.latent_dim, seed=golden["noise_seed"],
                       device="cpu", dtype=torch.float32)
    x1 = euler_sample(lambda t, x: model.cfg_velocity(t, x, cond, uncond, golden["cfg"]), x0,
                      golden["steps"])
    # Summation order differs with the thread count; CFG (x4.5) over 5 steps amplifies that.
    torch.testing.assert_close(model.unnormalize(x1), golden["sample"], rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

RELEASED = {
    "weights/generator_small_16k_sup_5.pth": SMALL_16K,
    "weights/generator_small_44k_sup_5.pth": SMALL_44K,
    "weights/generator_medium_44k_sup_5.pth": MEDIUM_44K,
    "weights/generator_large_44k_sup_5.pth": LARGE_44K,
}


def meta_generator(cfg: GeneratorConfig) -> SelvaGenerator:
    with torch.device("meta"):
        return SelvaGenerator(cfg)


@pytest.mark.parametrize("path", sorted(RELEASED))
def test_released_file_loads_strictly(path):
    model = meta_generator(RELEASED[path])
    sd = state_dict_for(path, device="meta")
    load_generator_weights(model, sd, source=path)
    loaded = dict(model.named_parameters())
    assert loaded.keys() == sd.keys()
    assert all(loaded[k].shape == sd[k].shape and loaded[k].is_meta for k in sd)


def test_44k_file_into_16k_network_is_refused():
    path = "weights/generator_small_44k_sup_5.pth"
    with pytest.raises(SelvaError) as err:
        load_generator_weights(meta_generator(SMALL_16K), state_dict_for(path), source=path)
    msg = str(err.value)
    assert path in msg and "latent_dim 40" in msg and "latent_dim 20" in msg


def test_medium_file_into_small_network_is_refused():
    path = "weights/generator_medium_44k_sup_5.pth"
    with pytest.raises(SelvaError, match="hidden 896"):
        load_generator_weights(meta_generator(SMALL_44K), state_dict_for(path), source=path)


def test_only_the_named_derived_keys_are_dropped():
    assert DERIVED_KEYS == {"t_embed.freqs", "latent_rot", "clip_rot"}
    path = "weights/generator_small_16k_sup_5.pth"
    sd = state_dict_for(path)
    extra = dict(sd)
    for key in DERIVED_KEYS:
        extra[key] = torch.empty(3, device="meta")
    load_generator_weights(meta_generator(SMALL_16K), extra, source=path)

    unknown = dict(sd, **{"t_embed.freqs_extra": torch.empty(3, device="meta")})
    with pytest.raises(SelvaError, match="1 unexpected key: t_embed.freqs_extra"):
        load_generator_weights(meta_generator(SMALL_16K), unknown, source=path)

    truncated = dict(sd)
    del truncated["final_layer.conv.weight"]
    with pytest.raises(SelvaError, match="1 missing key: final_layer.conv.weight"):
        load_generator_weights(meta_generator(SMALL_16K), truncated, source=path)


def test_foreign_state_dict_is_refused():
    path = "ext_weights/v1-16.pth"
    with pytest.raises(SelvaError, match="not a SelVA generator"):
        load_generator_weights(meta_generator(SMALL_16K), state_dict_for(path), source=path)
    with pytest.raises(SelvaError):
        load_generator_weights(meta_generator(SMALL_16K), [1, 2], source="list.pth")


def test_real_tensors_copy_into_real_and_meta_networks():
    src = tiny_generator(seed=4)
    feats = features(TINY, 1)
    want = sample(src, *feats)

    real = SelvaGenerator(TINY, latent_seq_len=LENS[0], clip_seq_len=LENS[1],
                          sync_seq_len=LENS[2]).eval()
    load_generator_weights(real, src.state_dict(), source="tiny")
    assert torch.equal(sample(real, *feats), want)

    with torch.device("meta"):
        meta = SelvaGenerator(TINY, latent_seq_len=LENS[0], clip_seq_len=LENS[1],
                              sync_seq_len=LENS[2]).eval()
    load_generator_weights(meta, {k: v.clone() for k, v in src.state_dict().items()},
                           source="tiny")
    # Derived buffers were rebuilt on the real device, so the network runs as is.
    assert not meta.t_embed.freqs.is_meta and not meta.latent_rot.is_meta
    assert torch.equal(sample(meta, *feats), want)

    with pytest.raises(SelvaError, match="no data"):
        load_generator_weights(real, state_dict_for_tiny_meta(src), source="tiny")


def state_dict_for_tiny_meta(model):
    return {k: torch.empty(v.shape, device="meta") for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# batched classifier-free guidance
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,rel", [(torch.float32, 2e-6), (torch.bfloat16, 2e-2)])
def test_batched_cfg_matches_two_passes(dtype, rel):
    model = tiny_generator().to(dtype)
    feats = [f.to(dtype) for f in features(TINY, 1)]
    cond = model.preprocess_conditions(*feats)
    uncond = model.empty_conditions(1, torch.randn(1, 77, TINY.text_dim).to(dtype))
    x = torch.randn(3, LENS[0], 8).to(dtype)
    one = model.cfg_velocity(0.25, x, cond, uncond, 4.5, batched=True)
    two = model.cfg_velocity(0.25, x, cond, uncond, 4.5, batched=False)
    assert one.shape == two.shape == x.shape
    # float rounding only: relative to the size of the velocities, at the dtype's precision
    tol = rel * float(two.float().abs().max())
    torch.testing.assert_close(one.float(), two.float(), rtol=0, atol=tol)
    # guidance really mixes two different branches (not e.g. the conditional one twice)
    v_c = model.predict_flow(x, torch.full((3,), 0.25).to(dtype), cond.expand(3))
    assert (one.float() - v_c.float()).abs().max() > 10 * tol


def test_batched_cfg_runs_the_network_once_per_step():
    model = tiny_generator()
    feats = features(TINY, 1)
    cond, uncond = model.preprocess_conditions(*feats), model.empty_conditions(1)
    batches = []
    handle = model.final_layer.register_forward_hook(lambda m, i, o: batches.append(o.shape[0]))
    try:
        model.cfg_velocity(0.5, torch.randn(2, LENS[0], 8), cond, uncond, 4.5)
        assert batches == [4]  # conditional and unconditional stacked
        batches.clear()
        model.cfg_velocity(0.5, torch.randn(2, LENS[0], 8), cond, uncond, 4.5, batched=False)
        assert batches == [2, 2]
    finally:
        handle.remove()


def test_conditions_projected_once_serve_every_batch_item():
    model = tiny_generator()
    clip, sync, text = features(TINY, 1)
    once = model.preprocess_conditions(clip, sync, text).expand(3)
    per_item = model.preprocess_conditions(clip.expand(3, -1, -1), sync.expand(3, -1, -1),
                                           text.expand(3, -1, -1))
    for name in ("clip_f", "sync_f", "text_f", "clip_f_c", "text_f_c"):
        want = getattr(per_item, name)
        torch.testing.assert_close(getattr(once, name), want, rtol=0,
                                   atol=2e-6 * float(want.abs().max()))
    with pytest.raises(SelvaError, match="batch"):
        model.preprocess_conditions(*features(TINY, 2)).expand(3)
