"""Textual inversion, BigVGAN, steering and LoRA .pt files of the earlier pack (their layouts built
here): they load weights-only and act as there, or say clearly what to do; ``convert`` rewrites them."""
from __future__ import annotations

import pytest
import torch

from comfyui_selva.selva.cli import main
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.style.steering import SteeringVectors
from comfyui_selva.selva.style.textual_inversion import TextualInversion, check_compatible, with_tokens


def _ti_payload(emb, inject_mode="suffix", step=3000):
    # the keys the earlier TI Trainer wrote, final file and step_NNNNN.pt alike
    return {"embeddings": emb, "n_tokens": emb.shape[0], "inject_mode": inject_mode, "step": step,
            "init_text": "metal hit", "lr": 2e-4, "steps": 3000, "loss_history": [0.5, 0.4]}


def test_textual_inversion_pt_acts_as_the_earlier_suffix_injection(tmp_path):
    emb = torch.randn(3, 32)
    torch.save(_ti_payload(emb), tmp_path / "ti.pt")
    ti = TextualInversion.load(tmp_path / "ti.pt")
    assert ti.path_kind == "clip" and ti.info["init_text"] == "metal hit" and ti.variant == ""
    text = torch.randn(1, 77, 32)
    check_compatible(ti, "tiny_16k", text.shape)  # no variant recorded: fits any of width 32
    earlier = torch.cat([text[:, :-3], emb[None]], dim=1)  # its "suffix" _inject_tokens
    assert torch.equal(with_tokens(text, ti.embeddings, 1.0), earlier)
    # convert: our safetensors, with the variant given and where it came from
    assert main(["convert", str(tmp_path / "ti.pt"), str(tmp_path / "ti.safetensors"),
                 "--variant", "tiny_16k"]) == 0
    back = TextualInversion.load(tmp_path / "ti.safetensors")
    assert torch.equal(back.embeddings, emb) and back.variant == "tiny_16k"
    assert back.info["converted_from"] == "earlier SelVA pack: ti.pt"
    assert main(["convert", str(tmp_path / "ti.pt"), str(tmp_path / "ti.safetensors")]) == 1  # kept
    assert torch.equal(TextualInversion.load(tmp_path / "ti.safetensors").embeddings, emb)


def test_prefix_textual_inversion_acts_as_the_earlier_prefix_injection(tmp_path):
    emb = torch.randn(2, 32)
    torch.save(_ti_payload(emb, "prefix"), tmp_path / "p.pt")
    ti = TextualInversion.load(tmp_path / "p.pt")
    assert ti.path_kind == "clip" and ti.inject_mode == "prefix"
    text = torch.randn(1, 77, 32)
    earlier = torch.cat([text[:, :1], emb[None], text[:, 3:]], dim=1)  # its "prefix" _inject_tokens
    assert torch.equal(with_tokens(text, ti.embeddings, 1.0, ti.inject_mode), earlier)
    # the same as our own prefix-mode file with these tokens, and convert writes exactly that
    ours = TextualInversion(emb, "tiny_16k", "clip", {}, inject_mode="prefix")
    ours_back = TextualInversion.load(ours.save(tmp_path / "ours.safetensors"))
    assert main(["convert", str(tmp_path / "p.pt"), str(tmp_path / "p.safetensors"), "--variant", "tiny_16k"]) == 0
    back = TextualInversion.load(tmp_path / "p.safetensors")
    assert back.inject_mode == "prefix" and torch.equal(back.embeddings, emb)
    for other in (ours_back, back):
        assert torch.equal(with_tokens(text, other.embeddings, 0.7, other.inject_mode),
                           with_tokens(text, ti.embeddings, 0.7, ti.inject_mode))


def test_an_inject_mode_the_earlier_pack_never_had_is_refused(tmp_path):
    torch.save(_ti_payload(torch.randn(2, 32), "middle"), tmp_path / "m.pt")
    with pytest.raises(SelvaError, match=r"was trained with inject_mode 'middle', which neither the "
                                         r"earlier pack nor this one has \(they know suffix, prefix\)"):
        TextualInversion.load(tmp_path / "m.pt")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("layout", ["ti", "ti_prefix", "vocoder", "vocoder_gafilter", "steering"])
def test_a_pickle_that_runs_code_never_runs(tmp_path, layout):
    marker = tmp_path / "side_effect"
    evil = {"ti": _ti_payload(torch.zeros(2, 4)), "ti_prefix": _ti_payload(torch.zeros(2, 4), "prefix"),
            "vocoder": {"generator": {}, "has_gafilter": False},
            "vocoder_gafilter": {"generator": {"resblocks.0.activations.0.gafilter.conv.weight":
                                               torch.zeros(4, 1, 9)}, "has_gafilter": True,
                                 "gafilter_kernel_size": 9},
            "steering": {"steering_vectors": [], "n_blocks": 0}}[layout]
    evil["extra"] = _Payload(marker)
    torch.save(evil, tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(SelvaError, match="only plain tensor files load"):
        {"ti": TextualInversion.load, "steering": SteeringVectors.load,
         "vocoder": _read_vocoder}[layout.split("_")[0]](tmp_path / "evil.pt")
    assert main(["convert", str(tmp_path / "evil.pt"), str(tmp_path / "x.safetensors")]) == 1
    assert not marker.exists() and not (tmp_path / "x.safetensors").exists()


def _read_vocoder(path):
    from comfyui_selva.selva.vocoder_tuning.checkpoint import read_tuned_vocoder

    return read_tuned_vocoder(path)


def test_steering_pt_loads_as_per_position_vectors(tmp_path):
    # its layout: one (positions, hidden) tensor per block, joint blocks first
    vecs = [torch.randn(10, 16) for _ in range(3)]
    torch.save({"steering_vectors": vecs, "n_blocks": 3, "n_joint": 2, "n_fused": 1, "latent_seq_len": 10,
                "n_samples": 4, "seed": 0, "mode": "16k", "variant": "small_16k"}, tmp_path / "steer.pt")
    loaded = SteeringVectors.load(tmp_path / "steer.pt")
    assert loaded.mode == "per_position" and torch.equal(loaded.vectors, torch.stack(vecs))
    assert loaded.block_names == ["joint_0", "joint_1", "fused_0"] and loaded.variant == "small_16k"
    assert main(["convert", str(tmp_path / "steer.pt"), str(tmp_path / "s.safetensors")]) == 0
    back = SteeringVectors.load(tmp_path / "s.safetensors")
    assert back.mode == "per_position" and torch.equal(back.vectors, loaded.vectors)


@pytest.fixture(scope="module")
def pipe(models_dir):
    from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline

    return SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False))


@pytest.mark.parametrize("weight_norm", [False, True])
def test_bigvgan_pt_loads_as_the_tuned_vocoder_and_converts(pipe, tmp_path, weight_norm):
    from vocoder_helpers import weight_norm_spelled

    from comfyui_selva.selva.vocoder_tuning.checkpoint import apply_tuned, identity_of, read_tuned_vocoder
    from comfyui_selva.selva.vocoder_tuning.stage import fresh_base_vocoder

    base = fresh_base_vocoder(pipe)
    g = torch.Generator().manual_seed(0)
    tuned_state = {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                   for k, v in base.state_dict().items()}
    stored = weight_norm_spelled(tuned_state) if weight_norm else tuned_state
    # the earlier BigVGAN Trainer's final file and its step files share this layout
    torch.save({"generator": stored, "has_gafilter": False, "gafilter_kernel_size": 9},
               tmp_path / "bigvgan_step1000.pt")
    tuned = read_tuned_vocoder(tmp_path / "bigvgan_step1000.pt")
    tuned.check_fits(identity_of(pipe))
    got = apply_tuned(fresh_base_vocoder(pipe), tuned).state_dict()
    for k, v in tuned_state.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)
    assert main(["convert", str(tmp_path / "bigvgan_step1000.pt"), str(tmp_path / "voc.safetensors"),
                 "--variant", "tiny_16k"]) == 0
    again = read_tuned_vocoder(tmp_path / "voc.safetensors")
    assert again.identity == tuned.identity and again.mode == "all_params" and again.variant == "tiny_16k"
    assert all(torch.equal(again.tensors[k], tuned.tensors[k]) for k in tuned.tensors)


def _earlier_gafilter_names(state):
    """Our GAFilter state dict under the earlier pack's names: each filtered activation wrapped
    as ``activation`` beside ``gafilter.conv`` (its _ActivationWithGAFilter)."""
    import re

    out = {}
    for k, v in state.items():
        m = re.match(r"^(resblocks\.\d+\.activations\.\d+)\.(.+)$", k)
        if m is None:
            out[k] = v
        elif m.group(2) == "gafilter.weight":
            out[f"{m.group(1)}.gafilter.conv.weight"] = v
        else:
            out[f"{m.group(1)}.activation.{m.group(2)}"] = v
    return out


@pytest.mark.parametrize("weight_norm", [False, True])
def test_gafilter_vocoder_pt_sounds_as_our_gafilter_file(pipe, tmp_path, weight_norm):
    from vocoder_helpers import weight_norm_spelled

    from comfyui_selva.selva.vocoder_tuning.checkpoint import apply_tuned, metadata, read_tuned_vocoder, \
        save_tuned_vocoder, identity_of
    from comfyui_selva.selva.vocoder_tuning.gafilter import attach_gafilters, gafilter_kernel_size
    from comfyui_selva.selva.vocoder_tuning.stage import fresh_base_vocoder

    tuned = fresh_base_vocoder(pipe)
    attach_gafilters(tuned, 5)
    g = torch.Generator().manual_seed(0)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in tuned.state_dict().items()}
    assert any(k.endswith(".gafilter.weight") for k in state)
    # the earlier GAFilter conv had no weight norm; the released layers may be stored with it
    filters = {k: v for k, v in state.items() if k.endswith(".gafilter.weight")}
    rest = {k: v for k, v in state.items() if k not in filters}
    earlier = _earlier_gafilter_names({**(weight_norm_spelled(rest) if weight_norm else rest), **filters})
    assert not any(k.endswith(".gafilter.weight") for k in earlier)
    torch.save({"generator": earlier, "has_gafilter": True, "gafilter_kernel_size": 5}, tmp_path / "bigvgan.pt")
    save_tuned_vocoder(tmp_path / "ours.safetensors", state,
                       metadata(identity_of(pipe), mode="all_params", steps=10, variant="tiny_16k"))
    assert main(["convert", str(tmp_path / "bigvgan.pt"), str(tmp_path / "conv.safetensors")]) == 0

    def vocode(path):
        file = read_tuned_vocoder(path)
        file.check_fits(identity_of(pipe))
        base = fresh_base_vocoder(pipe)
        attach_gafilters(base, gafilter_kernel_size(file.tensors))  # as the BigVGAN Loader does
        with torch.no_grad():
            return apply_tuned(base, file)(mel)

    mel = torch.randn(1, pipe.variant.mel.num_mels, 12, generator=g)
    ours = vocode(tmp_path / "ours.safetensors")
    direct = vocode(tmp_path / "bigvgan.pt")
    torch.testing.assert_close(direct, ours, rtol=1e-5, atol=1e-6)
    assert torch.equal(vocode(tmp_path / "conv.safetensors"), direct)
    plain = fresh_base_vocoder(pipe)
    with torch.no_grad():
        assert not torch.allclose(plain(mel), direct, atol=1e-4)  # the tuned filters do act


def test_gafilter_vocoder_with_mismatched_kernel_is_refused(pipe, tmp_path):
    from comfyui_selva.selva.vocoder_tuning.gafilter import attach_gafilters
    from comfyui_selva.selva.vocoder_tuning.stage import fresh_base_vocoder

    voc = fresh_base_vocoder(pipe)
    attach_gafilters(voc, 5)
    torch.save({"generator": _earlier_gafilter_names(voc.state_dict()), "has_gafilter": True,
                "gafilter_kernel_size": 9}, tmp_path / "g.pt")
    with pytest.raises(SelvaError, match="has 5 taps but the file says gafilter_kernel_size 9"):
        _read_vocoder(tmp_path / "g.pt")
    torch.save({"generator": fresh_base_vocoder(pipe).state_dict(), "has_gafilter": True,
                "gafilter_kernel_size": 9}, tmp_path / "none.pt")
    with pytest.raises(SelvaError, match="says has_gafilter but holds no GAFilter weights"):
        _read_vocoder(tmp_path / "none.pt")


def test_plain_lora_pt_converts_and_pissa_says_where_to_load_it(tmp_path):
    from test_compat_adapters import _pissa_file
    from test_lora_adapters import inputs, make_generator

    from comfyui_selva.selva.adapters import LoraPatch, load_adapter

    gen = make_generator()
    path, _ = _pissa_file(gen, tmp_path)
    assert main(["convert", str(path), str(tmp_path / "a.safetensors")]) == 1
    state = {k: v for k, v in torch.load(path, weights_only=True)["state_dict"].items() if "lora_" in k}
    meta = {"variant": "tiny_16k", "rank": 4, "alpha": 8.0, "target": ["attn.qkv"], "init_mode": "standard",
            "use_rslora": True}
    torch.save({"state_dict": state, "meta": meta}, tmp_path / "plain.pt")
    assert main(["convert", str(tmp_path / "plain.pt"), str(tmp_path / "plain.safetensors")]) == 0
    old, new = load_adapter(tmp_path / "plain.pt"), load_adapter(tmp_path / "plain.safetensors")
    assert new.meta.extra["converted_from"] == "earlier SelVA pack: plain.pt"
    x = inputs(gen)
    with LoraPatch(old).attach(gen):
        want = gen(*x)
    with LoraPatch(new).attach(gen):
        assert torch.equal(gen(*x), want)
