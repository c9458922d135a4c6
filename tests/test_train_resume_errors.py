"""Resuming from the wrong file of a run folder says which file to use instead."""
from __future__ import annotations

import pytest

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline
from comfyui_selva.selva.train.lora_trainer import LoraTrainOptions, train_lora
from train_data import make_dataset


def test_resuming_from_an_adapter_snapshot_names_the_checkpoint(models_dir, tmp_path):
    pipe = SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False))
    data_dir = make_dataset(pipe, tmp_path / "data")
    options = LoraTrainOptions(steps=2, rank=2, alpha=2.0, lr=1e-3, warmup_steps=1, batch_size=1,
                               grad_accum=1, save_every=1, seed=5, eval_samples=False)
    run_dir = train_lora(pipe, data_dir, tmp_path / "runs", options).result.run_dir
    snapshot = run_dir / "adapter_step_000001.safetensors"
    assert snapshot.is_file()  # the file beside checkpoints/ that users pick by mistake
    with pytest.raises(SelvaError) as err:
        train_lora(pipe, data_dir, tmp_path / "runs", options, resume=str(snapshot))
    text = str(err.value)
    assert f"{snapshot} is an exported adapter (safetensors: the trained weights only), not a training checkpoint" in text
    assert f"Resume from its training checkpoint {run_dir / 'checkpoints' / 'step_000001.pt'}, or the run folder {run_dir}" in text
    assert "load it with the SelVA LoRA Loader" in text
    assert "weights_only" not in text and "Unpickling" not in text

    # Without the matching step checkpoint, the run folder is named.
    (run_dir / "checkpoints" / "step_000001.pt").unlink()
    with pytest.raises(SelvaError, match=r"Resume from the run folder .* \(its newest checkpoint\)"):
        train_lora(pipe, data_dir, tmp_path / "runs", options, resume=str(snapshot))
