"""Audio VAE: shapes, normalisation, loading (strict, meta full size, files, errors), precision."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.models.vae import (VAE_16K, VAE_44K, AudioVAE, GaussianPosterior,
                                            MPConv1D, VAEConfig, load_vae)
from manifest import keys_and_shapes, state_dict_for

TINY = VAEConfig(data_dim=80, embed_dim=4, hidden_dim=16)
TINY_44 = VAEConfig(data_dim=128, embed_dim=6, hidden_dim=8, ch_mult=(1, 2), num_res_blocks=1)


def _raw_state(cfg: VAEConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A released-style state dict: raw (un-normalised) conv weights and non-zero gains."""
    torch.manual_seed(seed)
    vae = AudioVAE(cfg)
    with torch.no_grad():
        vae.encoder.learnable_gain.fill_(0.25)
        vae.decoder.learnable_gain.fill_(-0.3)
    return {k: v.clone() for k, v in vae.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_state():
    return _raw_state(TINY)


def test_released_configs():
    assert (VAE_16K.data_dim, VAE_16K.embed_dim, VAE_16K.hidden_dim) == (80, 20, 384)
    assert (VAE_44K.data_dim, VAE_44K.embed_dim, VAE_44K.hidden_dim) == (128, 40, 512)
    with pytest.raises(dataclasses.FrozenInstanceError):
        VAE_16K.hidden_dim = 1  # type: ignore[misc]


def test_shapes_and_layout(tiny_state):
    vae = load_vae(tiny_state, TINY)
    mel = torch.randn(2, 80, 24) - 2
    post = vae.encode(mel)
    assert isinstance(post, GaussianPosterior)
    assert post.mean.shape == post.logvar.shape == (2, 4, 12)
    assert torch.equal(post.mode(), post.mean)
    out = vae.decode(post.mode())
    assert out.shape == (2, 80, 24)
    # the generator's [B, L, C] layout must be transposed first
    with pytest.raises(SelvaError, match="transpose"):
        vae.decode(post.mode().transpose(1, 2).contiguous())


def test_deterministic_encoding(tiny_state):
    vae = load_vae(tiny_state, TINY)
    mel = torch.randn(1, 80, 16)
    a, b = vae.encode(mel), vae.encode(mel.clone())
    assert torch.equal(a.mean, b.mean) and torch.equal(vae.decode(a.mean), vae.decode(b.mean))
    torch.testing.assert_close(a.std, torch.exp(0.5 * a.logvar))


def test_logvar_is_clamped():
    moments = torch.cat([torch.zeros(1, 2, 3), torch.tensor([-100.0, 100.0]).view(1, 2, 1)
                         .expand(1, 2, 3)], dim=1)
    post = GaussianPosterior.from_moments(moments)
    assert post.logvar.min().item() == -30.0 and post.logvar.max().item() == 20.0


def test_normalisation_uses_data_stats_from_the_file(tiny_state):
    state = dict(tiny_state)
    state["data_mean"] = torch.linspace(-3.0, 1.0, 80).view(1, 80, 1)
    state["data_std"] = torch.linspace(0.5, 2.0, 80).view(1, 80, 1)
    vae = load_vae(state, TINY)
    assert torch.equal(vae.data_mean, state["data_mean"]) and torch.equal(vae.data_std, state["data_std"])
    mel = torch.randn(1, 80, 8)
    torch.testing.assert_close(vae.normalize(mel), (mel - state["data_mean"]) / state["data_std"])
    torch.testing.assert_close(vae.unnormalize(vae.normalize(mel)), mel)
    # encode normalises the mel with these statistics before the encoder sees it
    torch.testing.assert_close(vae.encode(mel).mean,
                               GaussianPosterior.from_moments(vae.encoder(vae.normalize(mel))).mean)


def test_weight_norm_is_baked_in_once(tiny_state):
    vae = load_vae(tiny_state, TINY)
    w = vae.decoder.conv_in.weight
    # every output channel ends with unit norm (RMS 1 over fan-in, then / sqrt(fan-in))
    torch.testing.assert_close(w.flatten(1).norm(dim=1), torch.ones(w.shape[0]), rtol=1e-3,
                               atol=1e-3)
    before = w.clone()
    vae.remove_weight_norm()
    assert torch.equal(vae.decoder.conv_in.weight, before)
    # the caller's raw state dict is left untouched, so loading it again gives the same net
    assert not torch.equal(tiny_state["decoder.conv_in.weight"], before)
    again = load_vae(tiny_state, TINY)
    z = torch.randn(1, 4, 6)
    assert torch.equal(again.decode(z), vae.decode(z))


def test_raw_mpconv_refuses_to_run():
    conv = MPConv1D(3, 4, 3)
    with pytest.raises(RuntimeError, match="remove_weight_norm"):
        conv(torch.randn(1, 3, 5))
    conv.remove_weight_norm()
    assert conv(torch.randn(1, 3, 5)).shape == (1, 4, 5)


def test_decoder_only_modes_match_full(tiny_state):
    full = load_vae(tiny_state, TINY)
    vae = load_vae(tiny_state, TINY, need_encoder=False)
    z = torch.randn(2, 4, 10)
    assert not vae.has_encoder
    assert not any(k.startswith("encoder.") for k in vae.state_dict())
    assert torch.equal(vae.decode(z), full.decode(z))
    with pytest.raises(SelvaError, match="decoder-only"):
        vae.encode(torch.randn(1, 80, 8))


def test_decoder_only_still_checks_the_encoder(tiny_state):
    bad = dict(tiny_state)
    bad["encoder.conv_in.weight"] = torch.zeros(16, 80, 5)
    with pytest.raises(SelvaError, match="encoder.conv_in.weight"):
        load_vae(bad, TINY, need_encoder=False)
    missing = {k: v for k, v in tiny_state.items() if k != "encoder.learnable_gain"}
    with pytest.raises(SelvaError, match="missing"):
        load_vae(missing, TINY, need_encoder=False)


@pytest.mark.parametrize("path, cfg", [("ext_weights/v1-16.pth", VAE_16K),
                                       ("ext_weights/v1-44.pth", VAE_44K)])
def test_full_size_strict_load_on_meta(path, cfg):
    full = load_vae(state_dict_for(path), cfg, source=path)
    assert {k: tuple(v.shape) for k, v in full.state_dict().items()} == keys_and_shapes(path)
    dec = load_vae(state_dict_for(path), cfg, need_encoder=False, source=path)
    assert set(dec.state_dict()) == {k for k in keys_and_shapes(path)
                                     if not k.startswith("encoder.")}


def test_wrong_file_raises_naming_it():
    with pytest.raises(SelvaError, match=r"v1-44\.pth.*data_dim=80"):
        load_vae(state_dict_for("ext_weights/v1-44.pth"), VAE_16K, source="ext_weights/v1-44.pth")
    with pytest.raises(SelvaError, match="v1-16.pth"):
        load_vae(state_dict_for("ext_weights/v1-16.pth"), VAE_44K, need_encoder=False,
                 source="ext_weights/v1-16.pth")
    with pytest.raises(SelvaError, match="not a state dict"):
        load_vae({"generator": {}}, TINY, source="x.pth")


def test_extra_key_raises(tiny_state):
    extra = dict(tiny_state, **{"decoder.quant_conv.weight": torch.zeros(1)})
    with pytest.raises(SelvaError, match="unexpected.*quant_conv"):
        load_vae(extra, TINY)


def test_real_file_round_trip(tmp_path, tiny_state):
    path = tmp_path / "v1-16.pth"
    torch.save(tiny_state, path)
    from_file = load_vae(path, TINY)
    from_dict = load_vae(tiny_state, TINY)
    mel = torch.randn(1, 80, 12)
    assert torch.equal(from_file.decode(from_file.encode(mel).mean),
                       from_dict.decode(from_dict.encode(mel).mean))
    assert all(not t.is_meta for t in from_file.state_dict().values())
    assert not any(p.requires_grad for p in from_file.parameters()) and not from_file.training


def test_truncated_file_raises_naming_it(tmp_path, tiny_state):
    path = tmp_path / "v1-16.pth"
    torch.save(tiny_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SelvaError, match="v1-16.pth"):
        load_vae(path, TINY)
    with pytest.raises(SelvaError, match="not found"):
        load_vae(tmp_path / "absent.pth", TINY)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_decode_is_finite(dtype):
    vae = load_vae(_raw_state(TINY_44, seed=1), TINY_44).to(dtype)
    z = torch.randn(1, 6, 8, dtype=dtype) * 3
    out = vae.decode(z)
    assert out.dtype == dtype and out.shape == (1, 128, 16)
    assert torch.isfinite(out).all()
    ref = load_vae(_raw_state(TINY_44, seed=1), TINY_44).decode(z.float())
    assert (out.float() - ref).abs().max().item() < 0.25 * ref.abs().max().item()
    post = vae.encode(out)
    assert torch.isfinite(post.mean).all() and torch.isfinite(post.std).all()
