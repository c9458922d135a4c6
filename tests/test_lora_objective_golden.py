"""The LoRA trainer's objective equals MMAudio's own training step (hkchengrex/MMAudio's
FlowMatching loss and Runner.train_fn) on the same weights, batch, noise and timesteps.

tools/lora_objective_parity.py ran MMAudio's code and stored its per-clip losses in
tests/data/lora_objective_golden.json; here our side is recomputed from the same case.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("lora_objective_parity", ROOT / "tools" / "lora_objective_parity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def test_our_objective_equals_mmaudios_training_step_within_1e_5():
    tool = _tool()
    golden = json.loads(tool.GOLDEN.read_text())
    case = tool.Case(**golden["case"])
    ours, noises = tool.our_losses(case)
    theirs = torch.tensor(golden["mmaudio_losses"])
    assert any(n.null_video for n in noises) and any(n.null_text for n in noises)  # both dropouts run
    assert any(not (n.null_video or n.null_text) for n in noises)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)


def test_the_golden_values_would_catch_a_wrong_objective():
    """The same case with the velocity target reversed (x0 - x1) is far off the golden values."""
    tool = _tool()
    golden = json.loads(tool.GOLDEN.read_text())
    case = tool.Case(**golden["case"])
    gen = tool.build_generator(case)
    batch = tool.build_batch(case, gen)
    noises = tool.mmaudio_draws(case, tuple(batch["a_mean"].shape))
    # the flow from the data back to noise: swap the roles of x0 and x1 in the hand computation
    wrong = []
    with torch.no_grad():
        for i, n in enumerate(noises):
            x1 = gen.normalize((batch["a_mean"][i] + batch["a_std"][i] * n.posterior)[None])
            xt = n.t * n.x0[None] + (1 - n.t) * x1
            clip = gen.empty_clip_sequence(1) if n.null_video else batch["clip_f"][i:i + 1]
            sync = gen.empty_sync_sequence(1) if n.null_video else batch["sync_f"][i:i + 1]
            text = gen.empty_string_sequence(1) if n.null_text else batch["text_f"][i:i + 1]
            v = gen.predict_flow(xt, n.t[None], gen.preprocess_conditions(clip, sync, text))
            wrong.append(float((v - (n.x0[None] - x1)).pow(2).mean()))
    theirs = torch.tensor(golden["mmaudio_losses"])
    assert ((torch.tensor(wrong) - theirs).abs() / theirs).max() > 1e-2
