"""The SelVA LoRA Evaluator's held-out-set mode, run as ComfyUI runs it, on the tiny model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_pack import pack_module
from lora_helpers import write_tiny_adapter
from node_helpers import run_node
from train_data import make_dataset

SelvaError = pack_module("selva.errors").SelvaError


@pytest.fixture
def output(tmp_path, monkeypatch, model):
    monkeypatch.setenv("SELVA_OUTPUT_DIR", str(tmp_path))
    write_tiny_adapter(tmp_path / "lora" / "adapter_final.safetensors")
    make_dataset(model, tmp_path / "held", clips=2, seconds=1.0)
    return tmp_path


def evaluate(model, **kw):
    args = dict(model=model, adapters_file='["lora/adapter_final.safetensors"]', steps=2, cfg_strength=4.5,
                seed=3, held_out_dir="held", metrics="spectral")
    return run_node("SelvaLoraEvaluator", **{**args, **kw})


def test_held_out_mode_scores_base_and_adapter_and_resumes(model, output):
    path, image = evaluate(model)
    data = json.loads(Path(path).read_text())
    assert Path(path).parent.parent == output / "selva_lora_eval"
    assert list(data["models"]) == ["base", "adapter_final.safetensors"]
    assert data["settings"]["clips"] == ["clip_000", "clip_001"]
    for model_result in data["models"].values():
        spectral = model_result["spectral"]
        assert set(spectral["per_clip"]) == {"clip_000", "clip_001"}
        assert spectral["mean"] == pytest.approx(sum(spectral["per_clip"].values()) / 2)
    assert data["best"]["spectral"] in data["models"]
    assert image.dim() == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    kept = sorted(p for p in Path(path).parent.rglob("*.safetensors") if p.is_file())
    assert len(kept) == 4
    stamps = [p.stat().st_mtime_ns for p in kept]
    path2, _ = evaluate(model)  # same data, models and settings: the kept clips are reused
    assert path2 == path and [p.stat().st_mtime_ns for p in kept] == stamps
    assert json.loads(Path(path2).read_text())["models"] == data["models"]


def test_held_out_mode_errors_are_clear(model, output):
    with pytest.raises(SelvaError, match="connect features .one-clip mode. or set held_out_dir"):
        evaluate(model, held_out_dir="")
    with pytest.raises(SelvaError, match="Unknown metric.s. clap2"):
        evaluate(model, metrics="spectral,clap2")
    with pytest.raises(SelvaError, match="does not exist"):
        evaluate(model, held_out_dir="no_such_folder")
