"""SelVA LoRA Loader and LoRA Evaluator nodes, run as ComfyUI runs them, on the tiny model."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from comfy_pack import pack_module
from node_helpers import dog_features, run_node, sampler_waveform as sample

SelvaError = pack_module("selva.errors").SelvaError
adapters = pack_module("selva.adapters")
compat = pack_module("nodes.comfy_compat")

TARGETS = ("attn.qkv", "ffn.w1", "linear1", "adaLN_modulation")


@pytest.fixture(scope="module")
def features(model, tmp_path_factory):
    return dog_features(model, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def adapter(model):
    """A 'trained' adapter for the tiny generator: random pairs on both layer kinds."""
    gen = model.manager.get("generator")
    with torch.inference_mode(False):
        lora = adapters.LoraSet.create(gen, adapters.LoraConfig(rank=2, alpha=2.0, targets=TARGETS))
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for p in lora.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return lora.to_adapter(variant="tiny_16k", steps=3)


@pytest.fixture
def output(tmp_path, monkeypatch, adapter):
    monkeypatch.setenv("SELVA_OUTPUT_DIR", str(tmp_path))
    adapters.save_adapter(adapter, tmp_path / "lora" / "adapter_final.safetensors")
    return tmp_path


def load(model, path="lora/adapter_final.safetensors", strength=1.0, **kw):
    (view,) = run_node("SelvaLoraLoader", model=model, adapter_path=path, strength=strength, **kw)
    return view


def test_loader_strength_and_base_branch(model, features, output):
    base = sample(model, features)
    zero = load(model, strength=0.0)
    assert torch.equal(sample(zero, features), base)  # bit for bit
    view = load(model)
    lora = sample(view, features)
    assert not torch.allclose(lora, base)
    # the other branch of the graph: the input model still gives the base output
    assert model.generator_patches == ()
    assert torch.equal(sample(model, features), base)
    gen = model.manager.get("generator")
    assert not any(m._forward_hooks for m in gen.modules())
    neg = sample(load(model, strength=-1.0), features)
    assert not torch.allclose(neg, base) and not torch.allclose(neg, lora)


def test_loaders_chain_and_survive_release(model, features, output):
    once = sample(load(model, strength=1.0), features)
    halves = load(load(model, strength=0.5), strength=0.5)
    assert len(halves.generator_patches) == 2
    torch.testing.assert_close(sample(halves, features), once, rtol=1e-4, atol=1e-6)
    view = load(model)
    view.release()  # networks dropped and rebuilt on next use; the patch lives on the view
    assert torch.equal(sample(view, features), once)


def test_adapter_input_overrides_the_path(model, features, output, adapter):
    by_value = load(model, path="does/not/exist.safetensors", adapter=adapter)
    assert torch.equal(sample(by_value, features), sample(load(model), features))


def test_loader_errors(model, output, adapter, tmp_path):
    with pytest.raises(SelvaError, match="No adapter"):
        load(model, path="  ")
    with pytest.raises(SelvaError, match="not found"):
        load(model, path="lora/missing.safetensors")
    other = adapters.LoraAdapter(adapter.modules, replace(adapter.meta, variant="large_44k"))
    with pytest.raises(SelvaError, match="trained for SelVA large_44k, but the model is tiny_16k"):
        load(model, adapter=other)
    with pytest.raises(SelvaError, match="SELVA_LORA"):
        load(model, adapter={"not": "an adapter"})


def test_evaluator_compares_adapters_deterministically(model, features, output):
    (output / "runs.json").write_text(json.dumps(["", "lora/adapter_final.safetensors"]))
    reference = {"waveform": torch.randn(1, 2, 22050) * 0.1, "sample_rate": 22050}
    path, image = run_node("SelvaLoraEvaluator", model=model, features=features,
                           adapters_file="runs.json", steps=2, cfg_strength=4.5, seed=3,
                           reference_audio=reference)
    summary = json.loads(open(path).read())
    results = summary["results"]
    assert [r["name"] for r in results] == ["baseline", "adapter_final.safetensors"]
    base, lora = results
    assert base["lsd_to_baseline_db"] == 0.0 and lora["lsd_to_baseline_db"] > 0.0
    for r in results:
        assert 0 < r["centroid_hz"] < 8000 and 0 <= r["flatness"] <= 1
        assert sum(r["band_energy"].values()) == pytest.approx(1.0)
        assert r["lsd_to_reference_db"] > 0
    assert image.dim() == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    # same inputs, same numbers; a second run never overwrites the first
    path2, _ = run_node("SelvaLoraEvaluator", model=model, features=features,
                        adapters_file=str(output / "runs.json"), steps=2, cfg_strength=4.5, seed=3,
                        reference_audio=reference)
    assert path2 != path
    assert json.loads(open(path2).read())["results"] == results
    # baseline equals the plain sampler's raw output metrics
    plain = sample(model, features, seed=3)[0, 0]
    metrics = adapters.compare.spectral_metrics(plain, 16000)
    assert metrics.centroid_hz == pytest.approx(base["centroid_hz"])


def test_evaluator_errors(model, features, output):
    with pytest.raises(SelvaError, match="not found"):
        run_node("SelvaLoraEvaluator", model=model, features=features, adapters_file="nope.json",
                 steps=2, cfg_strength=4.5, seed=0)
    with pytest.raises(SelvaError, match="not valid JSON"):
        run_node("SelvaLoraEvaluator", model=model, features=features, adapters_file="[oops",
                 steps=2, cfg_strength=4.5, seed=0)
    with pytest.raises(SelvaError, match="not found"):  # a missing adapter fails before generating
        run_node("SelvaLoraEvaluator", model=model, features=features,
                 adapters_file='["lora/gone.safetensors"]', steps=2, cfg_strength=4.5, seed=0)
    (path, _) = run_node("SelvaLoraEvaluator", model=model, features=features, adapters_file="",
                         steps=1, cfg_strength=4.5, seed=0)
    assert [r["name"] for r in json.loads(open(path).read())["results"]] == ["baseline"]


def test_adapter_list_forms(tmp_path):
    compare = adapters.compare
    assert [e.name for e in compare.read_adapter_list("")] == ["baseline"]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.safetensors").write_bytes(b"")
    entries = compare.read_adapter_list('["", "a/x.safetensors", {"path": "a/x.safetensors", '
                                        '"name": "half", "strength": 0.5}]', tmp_path)
    assert [(e.name, e.strength) for e in entries] == [("baseline", 1.0), ("x.safetensors", 1.0),
                                                       ("half", 0.5)]
    assert entries[1].path == tmp_path / "a" / "x.safetensors"
    # a LoRA Scheduler's experiment_summary.json: runs that saved an adapter, relative to it
    summary = tmp_path / "sweep" / "experiment_summary.json"
    summary.parent.mkdir()
    summary.write_text(json.dumps({"runs": {
        "r8": {"status": "finished", "adapter": str(tmp_path / "a" / "x.safetensors")},
        "broken": {"status": "failed", "adapter": None}}}))
    entries = compare.read_adapter_list(str(summary))
    assert [e.name for e in entries] == ["baseline", "r8"]
    with pytest.raises(SelvaError, match="item 0: expected a path"):
        compare.read_adapter_list("[3]")
    with pytest.raises(SelvaError, match="JSON list"):
        compare.read_adapter_list('{"a": 1}')


def test_adapter_list_strength_must_be_a_number():
    compare = pack_module("selva.adapters.compare")
    for value in ('"half"', "null", "[1]"):
        with pytest.raises(SelvaError) as e:
            compare.read_adapter_list(f'["", {{"path": "x.safetensors", "strength": {value}}}]')
        assert str(e.value) == (f"adapters_file item 1: strength must be a number, got "
                                f"{json.loads(value)!r}.")


def test_loader_reads_a_quoted_path_like_every_path_input(model, features, output):
    """A path pasted with quotes (Windows' "Copy as path", a file manager's 'path') is the path,
    as for every other node input (nodes/paths.py) and the Loader's own IS_CHANGED."""
    want = sample(load(model), features)
    for quoted in ('"lora/adapter_final.safetensors"', "'lora/adapter_final.safetensors'",
                   f"'{output / 'lora' / 'adapter_final.safetensors'}'"):
        assert torch.equal(sample(load(model, path=quoted), features), want)


def test_adapter_list_file_path_may_be_quoted(tmp_path):
    listing = tmp_path / "runs.json"
    listing.write_text(json.dumps(["", "a/x.safetensors"]))
    compare = pack_module("selva.adapters.compare")
    for quoted in (f'"{listing}"', f"'{listing}'", ' "runs.json" '):
        entries = compare.read_adapter_list(quoted, tmp_path)
        assert [(e.name, e.path) for e in entries] == [("baseline", None),
                                                       ("x.safetensors", tmp_path / "a" / "x.safetensors")]
