"""LoRA adapters: math on both layer kinds, PiSSA, rsLoRA, file formats and every bad input."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from comfyui_selva.selva.adapters import (LoraAdapter, LoraConfig, LoraPatch,
                                          LoraSet, LoraWeights, check_adapter_for, find_targets,
                                          load_adapter, parse_targets, save_adapter)
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.models.generator import SelvaGenerator
from comfyui_selva.selva.models.layers import ChannelLastConv1d, Linear

import tiny

CONV_AND_LINEAR = ("attn.qkv", "ffn.w1", "linear1", "adaLN_modulation")


def make_generator(seed: int = 0) -> SelvaGenerator:
    gen = SelvaGenerator(tiny.tiny_generator(8), latent_seq_len=10, clip_seq_len=8, sync_seq_len=24)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in gen.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g) + 0.5 if name.endswith("latent_std")
                    else torch.randn(p.shape, generator=g) * 0.2)
    return gen.eval().requires_grad_(False)


def inputs(gen: SelvaGenerator, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    cfg = gen.cfg
    return (torch.randn(2, gen.latent_seq_len, cfg.latent_dim, generator=g),
            torch.randn(2, gen.clip_seq_len, cfg.clip_dim, generator=g),
            torch.randn(2, gen.sync_seq_len, cfg.sync_dim, generator=g),
            torch.randn(2, 77, cfg.text_dim, generator=g),
            torch.rand(2, generator=g))


def assert_near(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> None:
    """Equal up to float32 rounding relative to the output's scale (random tiny nets reach ~100)."""
    assert (got - want).abs().max() <= tol * want.abs().max()


def randomize(lora: LoraSet, seed: int = 3, scale: float = 0.3) -> LoraSet:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return lora


@pytest.fixture
def gen():
    return make_generator()


# ------------------------------------------------------------------------------- layer math
def test_conv_lora_equals_dense_weight_delta():
    torch.manual_seed(0)
    base = ChannelLastConv1d(6, 5, kernel_size=3, padding=1)
    holder = torch.nn.Sequential(base)
    lora = randomize(LoraSet.create(holder, LoraConfig(rank=2, alpha=3.0, targets=("0",))))
    x = torch.randn(2, 7, 6)
    with lora.attach(holder):
        got = holder(x)
    delta = LoraWeights(lora.layer("0").down, lora.layer("0").up, 3.0).dense_delta()
    assert delta.shape == base.weight.shape
    want = F.conv1d(x.transpose(1, 2), base.weight + delta, base.bias, padding=1).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # ... and a conv adapter is NOT the same as treating the channel-last input as (B, C, L)
    assert not torch.allclose(got, base(x))


def test_linear_lora_equals_dense_weight_delta():
    base = Linear(6, 4)
    holder = torch.nn.Sequential(base)
    lora = randomize(LoraSet.create(holder, LoraConfig(rank=3, alpha=6.0, targets=("0",))))
    x = torch.randn(3, 5, 6)
    with lora.attach(holder, strength=-0.5):
        got = holder(x)
    delta = LoraWeights(lora.layer("0").down, lora.layer("0").up, 6.0).dense_delta()
    torch.testing.assert_close(got, F.linear(x, base.weight - 0.5 * delta, base.bias),
                               rtol=1e-5, atol=1e-5)
    assert not base._forward_hooks


def test_rslora_scale():
    assert LoraConfig(rank=16, alpha=16.0).scale == 1.0
    assert LoraConfig(rank=16, alpha=16.0, rslora=True).scale == 4.0


def test_default_init_starts_at_base_and_trains_both_kinds(gen):
    x = inputs(gen)
    base = gen(*x)
    lora = LoraSet.create(gen, LoraConfig(rank=4, targets=CONV_AND_LINEAR))
    kinds = {type(gen.get_submodule(n)).__name__ for n in lora.names}
    assert kinds == {"Linear", "ChannelLastConv1d"}
    with lora.attach(gen):
        assert torch.equal(gen(*x), base)  # up = 0
    # one optimisation step, inside inference mode as ComfyUI runs nodes
    with torch.inference_mode():
        with torch.inference_mode(False), torch.enable_grad():
            opt = torch.optim.SGD(lora.trainable_parameters(), lr=0.1)
            with lora.attach(gen):
                loss = gen(*x).pow(2).mean()
            loss.backward()
            opt.step()
    for name, layer in lora.items():
        assert layer.up.abs().sum() > 0, name
    with lora.attach(gen):
        assert not torch.equal(gen(*x), base)
    assert all(p.dtype == torch.float32 for p in lora.parameters())


def test_targets_and_parse():
    assert parse_targets("attn.qkv, linear1  ffn.w1,attn.qkv") == ("attn.qkv", "linear1", "ffn.w1")
    gen = make_generator()
    names = find_targets(gen, ["adaLN_modulation"])
    assert names and all(n.endswith("adaLN_modulation.1") for n in names)
    with pytest.raises(SelvaError, match=r"'attn\.qvk' matches no .* Suffixes that exist: .*attn\.qkv"):
        find_targets(gen, ["attn.qvk"])
    with pytest.raises(SelvaError, match="rank"):
        LoraConfig(rank=0)
    with pytest.raises(SelvaError, match="init"):
        LoraConfig(init="olora")


# -------------------------------------------------------------------------------------- PiSSA
def test_pissa_step0_reproduces_base_before_and_after_conversion(gen):
    x = inputs(gen)
    base = gen(*x)
    work = copy.deepcopy(gen)
    lora = LoraSet.create(work, LoraConfig(rank=4, alpha=8.0, targets=CONV_AND_LINEAR, init="pissa"))
    name = lora.names[0]
    assert not torch.equal(work.get_submodule(name).weight, gen.get_submodule(name).weight)
    assert torch.equal(gen(*x), base)  # only the working copy holds the residual
    with lora.attach(work):
        assert_near(work(*x), base)
    adapter = lora.to_adapter(variant="tiny_16k")
    assert adapter.meta.init == "pissa" and "pissa_conversion" in adapter.meta.extra
    assert all(w.rank == 8 for w in adapter.modules.values())  # rank 2r after conversion
    with LoraPatch(adapter).attach(gen):
        assert_near(gen(*x), base)


def test_pissa_trained_conversion_matches_residual_model(gen, tmp_path):
    x = inputs(gen)
    work = copy.deepcopy(gen)
    lora = LoraSet.create(work, LoraConfig(rank=3, alpha=3.0, targets=CONV_AND_LINEAR,
                                           init="pissa", rslora=True))
    with torch.no_grad():
        for layer in lora.layers.values():
            layer.down.add_(0.05 * torch.randn_like(layer.down))
            layer.up.add_(0.05 * torch.randn_like(layer.up))
    with lora.attach(work):
        trained = work(*x)
    assert not torch.allclose(trained, gen(*x), atol=1e-3)
    path = save_adapter(lora.to_adapter(variant="tiny_16k", steps=7), tmp_path / "p.safetensors")
    with LoraPatch(load_adapter(path)).attach(gen):  # applies to the ORIGINAL weights
        assert_near(gen(*x), trained)


def test_pissa_resume_rebuilds_the_same_residual(gen):
    cfg = LoraConfig(rank=2, targets=("attn.qkv", "linear1"), init="pissa")
    first = copy.deepcopy(gen)
    lora = randomize(LoraSet.create(first, cfg))
    again = copy.deepcopy(gen)
    resumed = LoraSet.create(again, cfg, state=lora.state_dict())
    for name in lora.names:
        assert torch.equal(first.get_submodule(name).weight, again.get_submodule(name).weight)
        assert torch.equal(lora.layer(name).up, resumed.layer(name).up)
    with pytest.raises(SelvaError, match="does not match"):
        LoraSet.create(copy.deepcopy(gen), LoraConfig(rank=2, targets=("attn.qkv",), init="pissa"),
                       state=lora.state_dict())
    with pytest.raises(SelvaError, match="rank differs"):
        LoraSet.create(copy.deepcopy(gen), LoraConfig(rank=3, targets=cfg.targets, init="pissa"),
                       state=lora.state_dict())


# ------------------------------------------------------------------------------ strength / patch
def test_patch_strength_zero_exact_one_differs_base_unchanged(gen):
    x = inputs(gen)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    base = gen(*x)
    adapter = randomize(LoraSet.create(gen, LoraConfig(rank=2, targets=CONV_AND_LINEAR))).to_adapter(
        variant="tiny_16k")
    with LoraPatch(adapter, 0.0).attach(gen):
        assert torch.equal(gen(*x), base)
        assert not any(m._forward_hooks for m in gen.modules())
    with LoraPatch(adapter, 1.0).attach(gen):
        one = gen(*x)
    with LoraPatch(adapter, 2.0).attach(gen):
        two = gen(*x)
    assert not torch.allclose(one, base) and not torch.allclose(two, one)
    assert torch.equal(gen(*x), base)
    assert not any(m._forward_hooks for m in gen.modules())
    for k, v in gen.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_patch_with_bf16_generator(gen):
    x = inputs(gen)
    adapter = randomize(LoraSet.create(gen, LoraConfig(rank=2, targets=CONV_AND_LINEAR))).to_adapter(
        variant="tiny_16k")
    half = copy.deepcopy(gen).to(torch.bfloat16)
    xb = tuple(t.to(torch.bfloat16) for t in x)
    with LoraPatch(adapter).attach(half):
        out = half(*xb)
    with LoraPatch(adapter).attach(gen):
        ref = gen(*x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().mean() < 0.1 * ref.abs().mean()


# --------------------------------------------------------------------------------- file formats
def _trained_adapter(gen, **meta) -> LoraAdapter:
    lora = randomize(LoraSet.create(gen, LoraConfig(rank=2, alpha=4.0, targets=CONV_AND_LINEAR)))
    return lora.to_adapter(variant="tiny_16k", steps=5, dataset_digest="abc", **meta)


def _output(gen, adapter, strength=1.0):
    x = inputs(gen)
    with LoraPatch(adapter, strength).attach(gen):
        return gen(*x)


def test_safetensors_round_trip_and_header(gen, tmp_path):
    from safetensors import safe_open

    adapter = _trained_adapter(gen)
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    name = "joint_blocks.0.latent_block.ffn.w1"
    assert {f"{name}.lora_up.weight", f"{name}.lora_down.weight", f"{name}.alpha"} <= keys
    assert meta["format"] == "selva-lora" and meta["format_version"] == "1"
    assert (meta["variant"], meta["rank"], meta["init"], meta["rslora"], meta["steps"]) == (
        "tiny_16k", "2", "default", "false", "5")
    assert json.loads(meta["targets"]) == list(CONV_AND_LINEAR) and meta["dataset_digest"] == "abc"
    back = load_adapter(path)
    assert back.meta.targets == CONV_AND_LINEAR and back.meta.alpha == 4.0 and back.path == path
    assert set(back.modules) == set(adapter.modules)
    assert torch.equal(_output(gen, back), _output(gen, adapter))
    with pytest.raises(SelvaError, match="already exists"):
        save_adapter(adapter, path)
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temp file left


def test_rslora_file_reads_with_plain_alpha_over_rank(gen, tmp_path):
    lora = randomize(LoraSet.create(gen, LoraConfig(rank=4, alpha=2.0, targets=("attn.qkv",), rslora=True)))
    w = lora.to_adapter(variant="tiny_16k").modules[lora.names[0]]
    assert w.scale == pytest.approx(2.0 / 2.0)  # alpha / sqrt(4) stored as a per-module alpha


def test_peft_and_old_pt_formats(gen, tmp_path):
    from safetensors.torch import save_file

    adapter = _trained_adapter(gen)
    want = _output(gen, adapter)
    # peft: base_model.model.<module>.lora_A.weight / lora_B.weight + adapter_config.json
    peft = {}
    for name, w in adapter.modules.items():
        peft[f"base_model.model.{name}.lora_A.weight"] = w.down
        peft[f"base_model.model.{name}.lora_B.weight"] = w.up
    folder = tmp_path / "peft"
    folder.mkdir()
    save_file(peft, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"r": 2, "lora_alpha": 4.0, "target_modules": list(CONV_AND_LINEAR)}))
    got = load_adapter(folder / "adapter_model.safetensors")
    assert got.meta.variant is None
    torch.testing.assert_close(_output(gen, got), want, rtol=0, atol=0)
    # earlier SelVA pack: {"state_dict": {"<module>.lora_A": (r, in), ...}, "meta": {...}}
    old = {"state_dict": {}, "meta": {"variant": "tiny_16k", "rank": 2, "alpha": 4.0,
                                      "target": list(CONV_AND_LINEAR), "steps": 100}}
    for name, w in adapter.modules.items():
        old["state_dict"][f"{name}.lora_A"] = w.down.to(torch.bfloat16)
        old["state_dict"][f"{name}.lora_B"] = w.up[..., 0] if w.is_conv else w.up
    torch.save(old, tmp_path / "adapter_final.pt")
    got = load_adapter(tmp_path / "adapter_final.pt")
    assert (got.meta.steps, got.meta.variant) == (100, "tiny_16k")
    assert (_output(gen, got) - want).abs().max() < 0.05 * want.abs().max()
    # a bare state dict of lora_A/lora_B (no meta): alpha defaults to the rank
    torch.save(old["state_dict"], tmp_path / "bare.pt")
    assert load_adapter(tmp_path / "bare.pt").modules[name].alpha == 2.0


def test_bad_files_give_clear_errors(gen, tmp_path):
    with pytest.raises(SelvaError, match="not found"):
        load_adapter(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(SelvaError) as e:
        load_adapter(junk)
    assert str(e.value).startswith(f"Cannot read {junk} as a safetensors LoRA adapter file (")
    assert str(e.value).endswith("); the file may be incomplete or of another kind.")
    pt = tmp_path / "junk.pt"
    pt.write_bytes(b"\x00garbage")
    with pytest.raises(SelvaError, match=r"Cannot read \S*junk\.pt as a PyTorch adapter file: only plain tensor files load .*not a PyTorch file, or a damaged one"):
        load_adapter(pt)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(SelvaError, match="not a LoRA adapter file"):
        load_adapter(tmp_path / "a.txt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "nolora.pt")
    with pytest.raises(SelvaError, match="holds no LoRA weights"):
        load_adapter(tmp_path / "nolora.pt")
    from safetensors.torch import save_file
    save_file({"x.lora_down.weight": torch.zeros(2, 3)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(SelvaError, match="x has no lora_up"):
        load_adapter(tmp_path / "half.safetensors")


def test_wrong_variant_missing_module_and_shape_mismatch(gen):
    adapter = _trained_adapter(gen)
    with pytest.raises(SelvaError, match="trained for SelVA tiny_16k, but the model is small_16k"):
        adapter.check_variant("small_16k")
    check_adapter_for(adapter, "tiny_16k", gen.cfg)  # fits
    bad = LoraAdapter({"joint_blocks.9.latent_block.attn.qkv": next(iter(adapter.modules.values()))},
                      adapter.meta)
    with pytest.raises(SelvaError, match=r"joint_blocks\.9\.latent_block\.attn\.qkv \(does not exist\)"):
        check_adapter_for(bad, "tiny_16k", gen.cfg)
    name = "joint_blocks.0.latent_block.attn.qkv"
    w = adapter.modules[name]
    wrong = LoraAdapter({name: LoraWeights(torch.zeros(2, 16), w.up, 2.0)}, adapter.meta)
    with pytest.raises(SelvaError, match="does not fit the generator's"):
        with LoraPatch(wrong).attach(gen):
            pass
    assert not any(m._forward_hooks for m in gen.modules())
    with pytest.raises(SelvaError, match="finite"):
        LoraPatch(adapter, float("nan"))


def test_trains_on_a_clone_of_a_generator_loaded_in_inference_mode():
    """ComfyUI loads the generator inside inference mode; the trainer clones it outside."""
    with torch.inference_mode():
        loaded = make_generator()
        x = inputs(loaded)
        base = loaded(*x)
        with torch.inference_mode(False), torch.enable_grad():
            work = copy.deepcopy(loaded)
            lora = LoraSet.create(work, LoraConfig(rank=2, targets=CONV_AND_LINEAR, init="pissa"))
            before = [p.detach().clone() for p in lora.trainable_parameters()]
            opt = torch.optim.AdamW(lora.trainable_parameters(), lr=1e-2)
            with lora.attach(work):
                loss = (work(*x) - 1.0).pow(2).mean()
            loss.backward()
            opt.step()
            assert all(not torch.equal(a, b) for a, b in zip(before, lora.trainable_parameters()))
        assert torch.equal(loaded(*x), base)  # the loaded generator itself is untouched


def test_non_adaptable_module_and_newer_format(gen, tmp_path):
    adapter = _trained_adapter(gen)
    w = next(iter(adapter.modules.values()))
    odd = LoraAdapter({"joint_blocks.0.latent_block.attn.q_norm": w}, adapter.meta)
    with pytest.raises(SelvaError, match="q_norm .is not a Linear or sequence-conv layer"):
        check_adapter_for(odd, "tiny_16k", gen.cfg)
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        header = dict(f.metadata())
    save_file(load_file(str(path)), str(tmp_path / "new.safetensors"), metadata={**header, "format_version": "9"})
    with pytest.raises(SelvaError, match="format version 9.*Update ComfyUI-SelVA"):
        load_adapter(tmp_path / "new.safetensors")


def test_damaged_header_numbers_name_the_file_and_key(gen, tmp_path):
    path = save_adapter(_trained_adapter(gen), tmp_path / "a.safetensors")
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        header = dict(f.metadata())
    for key, value, kind in (("format_version", "one", "a whole number"), ("rank", "8.5", "a whole number"),
                             ("alpha", "big", "a number"), ("steps", "many", "a whole number")):
        bad = tmp_path / f"bad_{key}.safetensors"
        save_file(load_file(str(path)), str(bad), metadata={**header, key: value})
        with pytest.raises(SelvaError) as e:
            load_adapter(bad)
        assert str(e.value) == (f"{bad.name}: its header says {key} = {value!r}, which is not {kind}; "
                                f"the file is damaged or was not written as a LoRA adapter.")
    peft = {k.replace("lora_down.weight", "lora_A.weight").replace("lora_up.weight", "lora_B.weight"): v
            for k, v in load_file(str(path)).items() if not k.endswith(".alpha")}
    torch.save({"state_dict": peft, "meta": {"rank": "two"}}, tmp_path / "bad_rank.pt")
    with pytest.raises(SelvaError, match=r"^bad_rank\.pt: its header says rank = 'two', which is not a whole number"):
        load_adapter(tmp_path / "bad_rank.pt")


def test_header_rank_and_alpha_are_notes_the_patch_does_not_need(gen, tmp_path):
    """Each module carries its own alpha: a header alpha/rank that no LoraConfig would accept
    (another tool's 0 or nan) changes nothing in what the patch adds."""
    adapter = _trained_adapter(gen)
    want = _output(gen, adapter)
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        header = dict(f.metadata())
    for alpha, rank in (("nan", "2"), ("-1.0", "2"), ("4.0", "-3")):
        odd = tmp_path / f"odd_{alpha}_{rank}.safetensors"
        save_file(load_file(str(path)), str(odd), metadata={**header, "alpha": alpha, "rank": rank})
        assert torch.equal(_output(gen, load_adapter(odd)), want)


def test_upper_case_suffixes_read_like_lower_case(gen, tmp_path):
    """Windows keeps a file's name as the tool wrote it: ADAPTER.SAFETENSORS, OLD.PT."""
    adapter = _trained_adapter(gen)
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    upper = path.rename(tmp_path / "ADAPTER.SAFETENSORS")
    assert torch.equal(_output(gen, load_adapter(upper)), _output(gen, adapter))
    state = {f"{n}.lora_A": w.down for n, w in adapter.modules.items()}
    state.update({f"{n}.lora_B": w.up for n, w in adapter.modules.items()})
    torch.save({"state_dict": state, "meta": {"rank": 2, "alpha": 4.0}}, tmp_path / "OLD.PT")
    assert torch.equal(_output(gen, load_adapter(tmp_path / "OLD.PT")), _output(gen, adapter))
