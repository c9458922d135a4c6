#!/usr/bin/env python3
"""Check the LoRA trainer's objective against MMAudio's own training step.

SelVA's generator is fine-tuned with MMAudio's objective (conditional rectified flow with
logit-normal timesteps and null-condition dropout). This tool runs **MMAudio's code** for one
training step -- ``FlowMatching.get_conditional_flow`` / ``FlowMatching.loss`` from
``mmaudio/model/flow_matching.py``, ``log_normal_sample`` from
``mmaudio/model/utils/sample_utils.py`` and the body of ``Runner.train_fn`` from
``mmaudio/runner.py`` (read out of a hkchengrex/MMAudio snapshot at run time, never copied into
this repository) -- and our ``selva.train.loss.flow_matching_loss`` on:

* the same random weights: a small SelVA generator filled from a fixed seed (MMAudio's step calls
  it through a thin adapter: ``network(xt, clip, sync, text, t)``, ``normalize`` and the learned
  empty sequences are the generator's own);
* the same batch: VAE posterior means/stds and CLIP/sync/text features drawn from a fixed seed;
* the same noise and timesteps: MMAudio draws everything from one generator in the order
  posterior noise (B, L, C), time (B,), x0 (B, L, C), null-video (B,), null-text (B,); the
  very same numbers are handed to our loss as per-clip :class:`ItemNoise`.

The per-clip losses must agree within ``--rtol`` (default 1e-5 relative). ``--write-golden``
stores the case and MMAudio's losses in ``tests/data/lora_objective_golden.json``;
``tests/test_lora_objective_golden.py`` recomputes our side from it in CI (no MMAudio needed).

    python tools/lora_objective_parity.py --mmaudio-git /path/to/MMAudio/.git [--write-golden]

``--mmaudio-git`` is a git dir of hkchengrex/MMAudio (files are read with ``git show HEAD:...``);
``--mmaudio-src`` takes an exported tree instead. Run from the repository root.
"""
from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selva.models.generator import GeneratorConfig, SelvaGenerator  # noqa: E402
from selva.train.loss import ClipConditions, ItemNoise, flow_matching_loss  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "lora_objective_golden.json"


@dataclass(frozen=True)
class Case:
    """Everything that fixes one comparison (stored with the golden values)."""

    weights_seed: int = 11
    batch_seed: int = 12
    noise_seed: int = 13
    batch: int = 4
    latent: int = 12
    clip: int = 8
    sync: int = 16
    null_probability: float = 0.5  # high, so that both kinds of dropout occur in a small batch


def build_generator(case: Case) -> SelvaGenerator:
    """A small SelVA generator, every parameter drawn from ``weights_seed`` (std 1 for the
    latent statistics around 1, 0.05 elsewhere, so no layer is zero as some inits make it)."""
    cfg = GeneratorConfig(latent_dim=8, clip_dim=16, sync_dim=24, text_dim=32, hidden_dim=32, depth=3,
                          fused_depth=2, num_heads=2)
    gen = SelvaGenerator(cfg, latent_seq_len=case.latent, clip_seq_len=case.clip, sync_seq_len=case.sync)
    g = torch.Generator().manual_seed(case.weights_seed)
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if name.endswith(("latent_std", "data_std")):
                p.uniform_(0.5, 1.5, generator=g)
            else:
                p.normal_(0.0, 0.05, generator=g)
    return gen.eval()


def build_batch(case: Case, gen: SelvaGenerator) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(case.batch_seed)
    c = gen.cfg
    b = case.batch
    return {"a_mean": torch.randn(b, case.latent, c.latent_dim, generator=g),
            "a_std": torch.rand(b, case.latent, c.latent_dim, generator=g) * 0.5 + 0.1,
            "clip_f": torch.randn(b, case.clip, c.clip_dim, generator=g),
            "sync_f": torch.randn(b, case.sync, c.sync_dim, generator=g),
            "text_f": torch.randn(b, 77, c.text_dim, generator=g)}


def mmaudio_draws(case: Case, shape: tuple[int, int, int]) -> list[ItemNoise]:
    """The numbers MMAudio's training step draws from its generator, in its order, per clip."""
    g = torch.Generator().manual_seed(case.noise_seed)
    b = shape[0]
    posterior = torch.empty(shape).normal_(generator=g)
    t = torch.sigmoid(torch.randn(b, generator=g))  # log_normal_sample with m = 0, s = 1
    x0 = torch.empty(shape).normal_(generator=g)
    null_video = torch.rand(b, generator=g) < case.null_probability
    null_text = torch.rand(b, generator=g) < case.null_probability
    return [ItemNoise(posterior[i], x0[i], t[i], bool(null_video[i]), bool(null_text[i])) for i in range(b)]


def our_losses(case: Case) -> tuple[torch.Tensor, list[ItemNoise]]:
    gen = build_generator(case)
    batch = build_batch(case, gen)
    noises = mmaudio_draws(case, tuple(batch["a_mean"].shape))
    conditions = [ClipConditions(batch["clip_f"][i], batch["sync_f"][i], batch["text_f"][i])
                  for i in range(case.batch)]
    with torch.no_grad():
        return flow_matching_loss(gen, batch["a_mean"], batch["a_std"], conditions, noises), noises


# ---------------------------------------------------------------------------- MMAudio's side
def _reader(args: argparse.Namespace) -> Callable[[str], str]:
    if args.mmaudio_src:
        return lambda rel: (Path(args.mmaudio_src) / rel).read_text(encoding="utf-8")
    return lambda rel: subprocess.run(["git", "--git-dir", args.mmaudio_git, "show", f"HEAD:{rel}"],
                                      check=True, capture_output=True, text=True).stdout


def _module(name: str, source: str, extra: dict | None = None) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(extra or {})
    # runs MMAudio's own source from a fetched snapshot: the point of this developer tool (not shipped)
    exec(compile(source, name, "exec"), module.__dict__)  # noqa: S102
    return module


def mmaudio_losses(case: Case, read: Callable[[str], str]) -> torch.Tensor:
    # flow_matching.py imports torchdiffeq for sampling only; the training pieces never touch it
    sys.modules.setdefault("torchdiffeq", types.SimpleNamespace(odeint=None))
    fm_module = _module("mmaudio_flow_matching", read("mmaudio/model/flow_matching.py"))
    sample_utils = _module("mmaudio_sample_utils", read("mmaudio/model/utils/sample_utils.py"))
    runner_src = read("mmaudio/runner.py")
    tree = ast.parse(runner_src)
    train_fn = next(node for cls in tree.body if isinstance(cls, ast.ClassDef) and cls.name == "Runner"
                    for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == "train_fn")
    body = ast.Module(body=[train_fn], type_ignores=[])
    namespace = {"torch": torch, "log_normal_sample": sample_utils.log_normal_sample}
    exec(compile(ast.fix_missing_locations(body), "mmaudio/runner.py:train_fn", "exec"), namespace)  # noqa: S102

    gen = build_generator(case)
    batch = build_batch(case, gen)

    class Network:  # what train_fn calls: network(xt, clip, sync, text, t) and network.module.*
        def __init__(self):
            self.module = types.SimpleNamespace(
                normalize=gen.normalize, empty_clip_feat=gen.empty_clip_sequence(1)[0],
                empty_sync_feat=gen.empty_sync_sequence(1)[0], empty_string_feat=gen.empty_string_sequence(1)[0])

        def __call__(self, xt, clip_f, sync_f, text_f, t):
            return gen.predict_flow(xt, t, gen.preprocess_conditions(clip_f, sync_f, text_f))

    runner = types.SimpleNamespace(
        rng=torch.Generator().manual_seed(case.noise_seed), network=Network(), fm=fm_module.FlowMatching(),
        log_normal_sampling_mean=0.0, log_normal_sampling_scale=1.0,
        null_condition_probability=case.null_probability)
    with torch.no_grad():
        _, loss, _, _ = namespace["train_fn"](runner, batch["clip_f"].clone(), batch["sync_f"].clone(),
                                              batch["text_f"].clone(), batch["a_mean"], batch["a_std"])
    return loss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--mmaudio-git", help="git dir of a hkchengrex/MMAudio snapshot")
    src.add_argument("--mmaudio-src", help="an exported hkchengrex/MMAudio tree")
    ap.add_argument("--rtol", type=float, default=1e-5, help="largest relative difference allowed")
    ap.add_argument("--write-golden", action="store_true", help=f"store the result in {GOLDEN}")
    args = ap.parse_args()
    case = Case()
    theirs = mmaudio_losses(case, _reader(args))
    ours, noises = our_losses(case)
    rel = ((ours - theirs).abs() / theirs.abs()).max().item()
    print("MMAudio:", [f"{v:.8f}" for v in theirs.tolist()])
    print("ours:   ", [f"{v:.8f}" for v in ours.tolist()])
    print(f"null video {[n.null_video for n in noises]}, null text {[n.null_text for n in noises]}")
    print(f"max relative difference {rel:.3e} (allowed {args.rtol:g})")
    if args.write_golden and rel <= args.rtol:
        GOLDEN.write_text(json.dumps({"case": case.__dict__, "mmaudio_losses": theirs.tolist(),
                                      "max_relative_difference": rel}, indent=2) + "\n")
        print(f"wrote {GOLDEN}")
    return 0 if rel <= args.rtol else 1


if __name__ == "__main__":
    sys.exit(main())
