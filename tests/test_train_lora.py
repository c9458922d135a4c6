"""LoRA training on the tiny models and a synthetic dataset made here."""
from __future__ import annotations

import json

import pytest
import torch

from comfyui_selva.selva.adapters import load_adapter
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline
from comfyui_selva.selva.train import dataset as D
from comfyui_selva.selva.train.lora_trainer import LoraTrainOptions, train_lora

from train_data import make_dataset


def load(models_dir, variant="tiny_16k"):
    return SelvaPipeline.load(LoadOptions(variant=variant, precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False))


@pytest.fixture(scope="module")
def pipe(models_dir):
    return load(models_dir)


@pytest.fixture(scope="module")
def data_dir(pipe, tmp_path_factory):
    return make_dataset(pipe, tmp_path_factory.mktemp("data") / "my_sounds")


def opts(**kw):
    base = dict(steps=6, rank=4, alpha=4.0, lr=1e-3, warmup_steps=2, batch_size=2, grad_accum=1,
                save_every=3, seed=5, eval_samples=False)
    base.update(kw)
    return LoraTrainOptions(**base)


def test_lora_training_writes_a_loadable_adapter(pipe, data_dir, tmp_path):
    run = train_lora(pipe, data_dir, tmp_path, opts(eval_samples=True, eval_steps=2))
    r = run.result.run_dir
    assert r.name == "lora_001"
    for name in ("adapter_final.safetensors", "adapter_step_000003.safetensors", "meta.json",
                 "loss_curve.png", "checkpoints/step_000003.pt", "samples/step_000000.wav",
                 "samples/step_000006.png"):
        assert (r / name).is_file(), name
    adapter = load_adapter(r / "adapter_final.safetensors")
    assert adapter.meta.variant == "tiny_16k" and adapter.meta.rank == 4
    assert adapter.meta.steps == 6 and adapter.meta.dataset_digest == run.dataset.digest
    assert any(w.up.abs().sum() > 0 for w in adapter.modules.values())
    meta = json.loads((r / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["settings"]["targets"] == ["attn.qkv"]
