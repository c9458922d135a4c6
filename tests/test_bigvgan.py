"""BigVGAN v1 / v2: activations, shapes, weight-norm spellings, strict loads, files, errors."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from comfyui_selva.bigvgan.activations import (Activation1d, DownSample1d, Snake, SnakeBeta,
                                               UpSample1d, kaiser_sinc_filter)
from comfyui_selva.bigvgan.loading import (fold_weight_norm, load_bigvgan_v1, load_bigvgan_v2,
                                           load_bigvgan_v2_state)
from comfyui_selva.bigvgan.v1 import BIGVGAN_V1_16K, BigVGANv1, BigVGANv1Config
from comfyui_selva.bigvgan.v2 import BIGVGAN_V2_44K_512X, BigVGANv2, BigVGANv2Config
from comfyui_selva.bigvgan.errors import BigVGANError
from manifest import keys_and_shapes, state_dict_for

TINY_V1 = BigVGANv1Config(num_mels=8, upsample_rates=(4, 2, 2), upsample_kernel_sizes=(8, 4, 4),
                          upsample_initial_channel=16, resblock_kernel_sizes=(3, 5),
                          resblock_dilation_sizes=((1, 3), (1, 2)))
TINY_V2 = BigVGANv2Config(num_mels=12, upsample_rates=(4, 2), upsample_kernel_sizes=(8, 4),
                          upsample_initial_channel=16, resblock_kernel_sizes=(3,),
                          resblock_dilation_sizes=((1, 3, 5),), use_bias_at_final=False,
                          use_tanh_at_final=False)

# configs/bigvgan_v2_44khz_128band_512x.json of NVIDIA/BigVGAN (what the hub config.json holds)
V2_44K_JSON = {
    "resblock": "1", "num_gpus": 0, "batch_size": 4, "learning_rate": 0.0001, "adam_b1": 0.8,
    "upsample_rates": [8, 4, 2, 2, 2, 2], "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4],
    "upsample_initial_channel": 1536, "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "use_tanh_at_final": False,
    "use_bias_at_final": False, "activation": "snakebeta", "snake_logscale": True,
    "use_cqtd_instead_of_mrd": True, "num_mels": 128, "num_freq": 2049, "n_fft": 2048,
    "hop_size": 512, "win_size": 2048, "sampling_rate": 44100, "fmin": 0, "fmax": None,
    "dist_config": {"dist_backend": "nccl"},
}


def _weight_normed_state(model: nn.Module, spelling: str, seed: int = 0) -> dict:
    """Random weight-norm factors for every conv (g moderate so the output is neither flat nor
    clipped) in the given key spelling, other tensors randomised too."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith(".weight") and value.ndim == 3:
            prefix = key[: -len(".weight")]
            g = torch.rand(value.shape[0], 1, 1, generator=gen) * 0.7 + 0.3
            v = torch.randn(value.shape, generator=gen)
            if spelling == "old":
                out[prefix + ".weight_g"], out[prefix + ".weight_v"] = g, v
            else:
                out[prefix + ".parametrizations.weight.original0"] = g
                out[prefix + ".parametrizations.weight.original1"] = v
        elif key.endswith((".alpha", ".beta")):
            out[key] = torch.randn(value.shape, generator=gen) * 0.5
        elif key.endswith(".bias"):
            out[key] = torch.randn(value.shape, generator=gen) * 0.05
        else:  # anti-aliasing filters
            out[key] = value.clone()
    return out


@pytest.fixture(scope="module")
def tiny_v1_states():
    old = _weight_normed_state(BigVGANv1(TINY_V1), "old")
    new = {k.replace(".weight_g", ".parametrizations.weight.original0")
            .replace(".weight_v", ".parametrizations.weight.original1"): v for k, v in old.items()}
    return old, new


# ------------------------------------------------------------------------------ activations
def test_kaiser_filter_is_symmetric_unit_gain():
    f = kaiser_sinc_filter(0.25, 0.3, 12)
    assert f.shape == (1, 1, 12)
    assert f.sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(f, f.flip(-1))


def test_resampling_lengths_and_constant_passthrough():
    x = torch.full((2, 3, 20), 0.7)
    up, down = UpSample1d(2, 12), DownSample1d(2, 12)
    assert up(x).shape == (2, 3, 40) and down(x).shape == (2, 3, 10)
    # unit DC gain plus edge replication: a constant survives both unchanged
    torch.testing.assert_close(up(x), torch.full((2, 3, 40), 0.7), rtol=0, atol=1e-5)
    torch.testing.assert_close(down(up(x)), x, rtol=0, atol=1e-5)


def test_snake_formulas():
    x = torch.randn(2, 3, 7)
    snake = Snake(3, alpha_logscale=False)
    beta = SnakeBeta(3, alpha_logscale=True)
    with torch.no_grad():
        snake.alpha.copy_(torch.tensor([0.5, 1.0, 2.0]))
        beta.alpha.copy_(torch.tensor([0.1, -0.2, 0.3]))
        beta.beta.copy_(torch.tensor([-0.5, 0.0, 0.5]))
    a = torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1)
    torch.testing.assert_close(snake(x), x + torch.sin(a * x) ** 2 / a)
    fa = torch.tensor([0.1, -0.2, 0.3]).exp().view(1, 3, 1)
    fb = torch.tensor([-0.5, 0.0, 0.5]).exp().view(1, 3, 1)
    torch.testing.assert_close(beta(x), x + torch.sin(fa * x) ** 2 / fb)
    # half precision is evaluated in fp32 inside and returned as half
    act = Activation1d(beta)
    half = act(x.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), act(x), rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------------------ networks
def test_released_configs():
    assert BIGVGAN_V1_16K.hop_length == 256 and BIGVGAN_V1_16K.num_mels == 80
    assert BIGVGAN_V1_16K.use_tanh_at_final and BIGVGAN_V1_16K.use_bias_at_final
    assert BigVGANv2Config.from_json(V2_44K_JSON) == BIGVGAN_V2_44K_512X
    assert BIGVGAN_V2_44K_512X.hop_length == 512
    older = {k: v for k, v in V2_44K_JSON.items()
             if k not in ("use_tanh_at_final", "use_bias_at_final")}
    assert BigVGANv2Config.from_json(older).use_tanh_at_final  # NVIDIA's default
    with pytest.raises(KeyError):
        BigVGANv2Config.from_json({"num_mels": 80})


def test_v1_shapes_bounds_determinism(tiny_v1_states):
    voc = load_bigvgan_v1({"generator": tiny_v1_states[0]}, TINY_V1, source="tiny")
    mel = torch.randn(2, 8, 10) - 3
    wav = voc(mel)
    assert wav.shape == (2, 1, 10 * TINY_V1.hop_length) == (2, 1, 160)
    assert wav.abs().max().item() < 1.0 and wav.std().item() > 1e-3  # tanh, not flat
    assert torch.equal(wav, voc(mel.clone()))


def test_weight_norm_spellings_give_identical_outputs(tiny_v1_states):
    old, new = tiny_v1_states
    a = load_bigvgan_v1({"generator": old}, TINY_V1, source="old")
    b = load_bigvgan_v1({"generator": new}, TINY_V1, source="new")
    mel = torch.randn(1, 8, 9)
    assert torch.equal(a(mel), b(mel))
    # and an already-folded (plain weight) state is the same network again
    c = load_bigvgan_v1(a.state_dict(), TINY_V1, source="plain")
    assert torch.equal(a(mel), c(mel))


def test_folding_equals_torch_weight_norm():
    conv = weight_norm(nn.ConvTranspose1d(6, 4, 5, 2))  # g over dim 0 = in_channels here
    with torch.no_grad():
        conv.parametrizations.weight.original0.uniform_(0.5, 2.0)
    sd = conv.state_dict()
    folded = fold_weight_norm(sd, source="x")
    assert set(folded) == {"bias", "weight"}
    assert torch.equal(folded["weight"], conv.weight)


def test_broken_weight_norm_pairs_raise(tiny_v1_states):
    old = dict(tiny_v1_states[0])
    del old["conv_pre.weight_v"]
    with pytest.raises(BigVGANError, match="conv_pre.*half"):
        load_bigvgan_v1({"generator": old}, TINY_V1, source="bad.pt")
    both = dict(tiny_v1_states[0])
    both["conv_pre.parametrizations.weight.original0"] = both["conv_pre.weight_g"]
    with pytest.raises(BigVGANError, match="twice"):
        load_bigvgan_v1({"generator": both}, TINY_V1, source="bad.pt")


def test_v2_clamps_instead_of_tanh():
    state = _weight_normed_state(BigVGANv2(TINY_V2), "old")
    voc = load_bigvgan_v2_state({"generator": state}, TINY_V2, source="tiny")
    assert voc.conv_post.bias is None
    mel = torch.randn(1, 12, 6) - 3
    assert voc(mel).shape == (1, 1, 48)
    with torch.no_grad():
        voc.conv_post.weight.mul_(1000.0)  # drive the output far past +-1
    loud = voc(mel)
    assert loud.abs().max().item() == 1.0
    assert (loud.abs() == 1.0).float().mean().item() > 0.2  # hard clipping, not tanh


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_vocoders_are_finite(tiny_v1_states, dtype):
    voc = load_bigvgan_v1({"generator": tiny_v1_states[0]}, TINY_V1).to(dtype)
    mel = torch.randn(1, 8, 8) - 3
    wav = voc(mel.to(dtype))
    assert wav.dtype == dtype and torch.isfinite(wav).all()
    ref = load_bigvgan_v1({"generator": tiny_v1_states[0]}, TINY_V1)(mel)
    assert (wav.float() - ref).abs().max().item() < 0.1
    state = _weight_normed_state(BigVGANv2(TINY_V2), "new", seed=2)
    v2 = load_bigvgan_v2_state(state, TINY_V2).to(dtype)
    assert torch.isfinite(v2(torch.randn(1, 12, 5, dtype=dtype) - 4)).all()


# ------------------------------------------------------------------------------ released files
V1_FILE = "ext_weights/best_netG.pt"
V2_FILE = "hub:nvidia/bigvgan_v2_44khz_128band_512x/bigvgan_generator.pt"


def _folded_keys(path: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for key, shape in keys_and_shapes(path).items():
        key = key.split("/", 1)[1]
        if key.endswith(".weight_g"):
            continue
        out[key.replace(".weight_v", ".weight")] = shape
    return out


def test_full_size_v1_strict_load_on_meta():
    voc = load_bigvgan_v1(state_dict_for(V1_FILE), source=V1_FILE)
    assert {k: tuple(v.shape) for k, v in voc.state_dict().items()} == _folded_keys(V1_FILE)


def test_full_size_v2_strict_load_on_meta():
    voc = load_bigvgan_v2_state(state_dict_for(V2_FILE), BIGVGAN_V2_44K_512X, source=V2_FILE)
    assert {k: tuple(v.shape) for k, v in voc.state_dict().items()} == _folded_keys(V2_FILE)


def test_wrong_vocoder_file_raises_naming_it():
    with pytest.raises(BigVGANError, match=r"best_netG\.pt.*conv_post\.bias"):
        load_bigvgan_v2_state(state_dict_for(V1_FILE), BIGVGAN_V2_44K_512X, source=V1_FILE)
    with pytest.raises(BigVGANError, match=r"bigvgan_generator\.pt.*wrong shape"):
        load_bigvgan_v1(state_dict_for(V2_FILE), source=V2_FILE)
    with pytest.raises(BigVGANError, match="x.pt"):
        load_bigvgan_v1(state_dict_for("ext_weights/v1-16.pth"), source="x.pt")


def test_real_files_through_public_loaders(tmp_path, tiny_v1_states):
    v1_path = tmp_path / "best_netG.pt"
    torch.save({"generator": tiny_v1_states[0]}, v1_path)
    from_file = load_bigvgan_v1(v1_path, TINY_V1)
    from_dict = load_bigvgan_v1({"generator": tiny_v1_states[0]}, TINY_V1)
    mel = torch.randn(1, 8, 7)
    assert torch.equal(from_file(mel), from_dict(mel))
    assert all(not t.is_meta for t in from_file.state_dict().values())
    assert not from_file.training and not any(p.requires_grad for p in from_file.parameters())

    snap = tmp_path / "snapshot"
    snap.mkdir()
    cfg_json = {"num_mels": 12, "upsample_rates": [4, 2], "upsample_kernel_sizes": [8, 4],
                "upsample_initial_channel": 16, "resblock_kernel_sizes": [3],
                "resblock_dilation_sizes": [[1, 3, 5]], "resblock": "1",
                "activation": "snakebeta", "snake_logscale": True, "use_tanh_at_final": False,
                "use_bias_at_final": False, "sampling_rate": 44100, "segment_size": 65536}
    (snap / "config.json").write_text(json.dumps(cfg_json))
    state = _weight_normed_state(BigVGANv2(TINY_V2), "old", seed=3)
    torch.save({"generator": state}, snap / "bigvgan_generator.pt")
    v2 = load_bigvgan_v2(snap)
    assert v2.cfg == TINY_V2
    mel2 = torch.randn(1, 12, 4) - 3
    out = v2(mel2)
    assert out.shape == (1, 1, 32)
    assert torch.equal(out, load_bigvgan_v2_state({"generator": state}, TINY_V2)(mel2))


def test_truncated_and_missing_files_raise(tmp_path, tiny_v1_states):
    path = tmp_path / "best_netG.pt"
    torch.save({"generator": tiny_v1_states[0]}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(BigVGANError, match="best_netG.pt"):
        load_bigvgan_v1(path, TINY_V1)
    with pytest.raises(BigVGANError, match="not found"):
        load_bigvgan_v1(tmp_path / "nope.pt", TINY_V1)
    with pytest.raises(BigVGANError, match="config"):
        load_bigvgan_v2(tmp_path)


def test_selvas_loader_reports_a_bad_vocoder_file_as_a_selva_error(tmp_path, monkeypatch):
    """The pipeline's vocoder stage wraps bigvgan's own error: same text, SelVA's type."""
    import tiny
    from comfyui_selva.selva.errors import SelvaError
    from comfyui_selva.selva.loading import StageBuilders
    from comfyui_selva.selva.variants import get_variant

    tiny.register_tiny_variants()
    bad = tmp_path / "best_netG.pt"
    torch.save({"generator": {"conv_pre.weight": torch.zeros(1)}}, bad)
    monkeypatch.setattr(StageBuilders, "_file", lambda self, key: bad)
    builders = StageBuilders(get_variant("tiny_16k"), tmp_path, allow_download=False, clip_frames=False)
    with pytest.raises(SelvaError) as e:
        builders.vocoder()
    assert isinstance(e.value.__cause__, BigVGANError) and str(e.value) == str(e.value.__cause__)
    assert str(e.value).startswith(f"{bad} does not fit the BigVGAN v1 (16 kHz) network: ")
