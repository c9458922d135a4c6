"""Adapters written by the earlier SelVA pack (its .pt layout, built here) load as they acted there."""
from __future__ import annotations

import math

import pytest
import torch

from comfyui_selva.selva.adapters import LoraPatch, check_adapter_for, load_adapter
from comfyui_selva.selva.errors import SelvaError

from test_lora_adapters import inputs, make_generator

TARGET = "attn.qkv"


def _modules(gen):
    return [n for n, m in gen.named_modules() if n.endswith(TARGET)]


def _earlier_meta(rank, alpha, init_mode, use_rslora):
    # the keys the earlier LoRA Trainer node wrote
    return {"variant": "tiny_16k", "rank": rank, "alpha": alpha, "target": [TARGET], "steps": 500,
            "timestep_mode": "uniform", "lora_dropout": 0.0, "lora_plus_ratio": 1.0,
            "lr_schedule": "constant", "init_mode": init_mode, "use_rslora": use_rslora}


def _earlier_output(gen, weights: dict, strength: float, x):
    """What the earlier pack ran: each wrapped linear's weight (base or stored residual) plus
    strength * scale * B @ A (its loader scaled lora_B by the strength)."""
    import copy

    g = copy.deepcopy(gen)
    with torch.no_grad():
        for name, (weight, a, b, scale) in weights.items():
            g.get_submodule(name).weight.copy_(weight + strength * scale * (b @ a))
    return g(*x)


def _ours(gen, adapter, strength, x):
    with LoraPatch(adapter, strength).attach(gen):
        return gen(*x)


def _close(got, want, tol=1e-5):
    assert (got - want).abs().max() <= tol * want.abs().max()


def test_rslora_adapter_applies_at_its_trained_strength(tmp_path):
    gen, x = make_generator(), inputs(make_generator())
    rank, alpha = 16, 32.0  # alpha 0 in the trainer meant 2 x rank, stored as such
    scale = alpha / math.sqrt(rank)  # the earlier rsLoRA formula
    g = torch.Generator().manual_seed(5)
    state, weights = {}, {}
    for name in _modules(gen):
        lin = gen.get_submodule(name)
        a = torch.randn(rank, lin.in_features, generator=g) * 0.05
        b = torch.randn(lin.out_features, rank, generator=g) * 0.05
        state[f"{name}.lora_A"], state[f"{name}.lora_B"] = a, b
        weights[name] = (lin.weight.detach().clone(), a, b, scale)
    torch.save({"state_dict": state, "meta": _earlier_meta(rank, alpha, "standard", True)},
               tmp_path / "adapter_final.pt")
    adapter = load_adapter(tmp_path / "adapter_final.pt")
    assert adapter.meta.rslora and adapter.meta.init == "default" and adapter.meta.targets == (TARGET,)
    check_adapter_for(adapter, "tiny_16k", gen.cfg)
    for strength in (1.0, 0.5):
        _close(_ours(gen, adapter, strength, x), _earlier_output(gen, weights, strength, x))
    # reading it as plain alpha / rank would be 1/sqrt(16) of that: the test would catch it
    plain = _earlier_output(gen, {n: (w, a, b, alpha / rank) for n, (w, a, b, _) in weights.items()}, 1.0, x)
    assert (plain - _ours(gen, adapter, 1.0, x)).abs().max() > 1e-3 * plain.abs().max()


def _pissa_file(gen, tmp_path, rank=4, alpha=8.0, step_file=False):
    """An earlier PiSSA run: SVD init, residual base weight, then 'training' moves A and B."""
    scale = alpha / math.sqrt(rank)
    g = torch.Generator().manual_seed(9)
    state, weights = {}, {}
    for name in _modules(gen):
        lin = gen.get_submodule(name)
        w = lin.weight.detach().float()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        root = s[:rank].sqrt()
        a0, b0 = root[:, None] * vh[:rank], u[:, :rank] * root[None]
        residual = w - b0 @ a0 * scale
        a = a0 + torch.randn(a0.shape, generator=g) * 0.05
        b = b0 + torch.randn(b0.shape, generator=g) * 0.05
        state[f"{name}.lora_A"], state[f"{name}.lora_B"] = a, b
        state[f"{name}.linear.weight"], state[f"{name}.linear.bias"] = residual, lin.bias.detach().clone()
        weights[name] = (residual, a, b, scale)
    payload = {"state_dict": state, "meta": _earlier_meta(rank, alpha, "pissa", True)}
    if step_file:  # step checkpoints also carried the optimizer and scheduler states
        params = [torch.nn.Parameter(t.clone()) for t in list(state.values())[:2]]
        opt = torch.optim.AdamW(params, lr=1e-4)
        params[0].sum().backward()
        opt.step()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        payload.update(optimizer=opt.state_dict(), scheduler=sched.state_dict(), step=500)
    path = tmp_path / ("adapter_step00500.pt" if step_file else "adapter_final.pt")
    torch.save(payload, path)
    return path, weights


@pytest.mark.parametrize("step_file", [False, True])
def test_pissa_adapter_is_the_exact_change_against_the_base(tmp_path, step_file):
    gen = make_generator()
    x = inputs(gen)
    base_out = gen(*x)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    path, weights = _pissa_file(gen, tmp_path, step_file=step_file)
    adapter = load_adapter(path)
    assert adapter.meta.init == "pissa" and set(adapter.base_residuals) == set(_modules(gen))
    check_adapter_for(adapter, "tiny_16k", gen.cfg)
    _close(_ours(gen, adapter, 1.0, x), _earlier_output(gen, weights, 1.0, x))
    # strength 0 is the plain model, bit for bit; the generator is never written
    assert torch.equal(_ours(gen, adapter, 0.0, x), base_out)
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in before.items())
    # a converted adapter holds rank 2r pairs and does not need the residuals any more
    converted = adapter.against(gen)
    assert not converted.base_residuals and next(iter(converted.modules.values())).rank == 8


def test_pissa_adapter_on_other_base_weights_is_refused(tmp_path):
    gen = make_generator()
    path, _ = _pissa_file(gen, tmp_path)
    other = make_generator(seed=7)
    with pytest.raises(SelvaError, match=r"not this generator's weight minus a rank-4 part .* "
                                         r"Load the model it was trained on"):
        _ours(other, load_adapter(path), 1.0, inputs(other))


def test_a_pickle_that_runs_code_is_not_loaded(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": {}, "meta": {"x": Payload()}}, tmp_path / "evil.pt")
    with pytest.raises(SelvaError, match=r"as a PyTorch adapter file: only plain tensor files load \(weights_only=True\), and this one is not \(it refers to the Python object io.open"):
        load_adapter(tmp_path / "evil.pt")
    assert not marker.exists()
