"""SelVA BigVGAN Trainer and Loader through NODE_CLASS_MAPPINGS, inside inference mode as ComfyUI runs them."""
from __future__ import annotations

import pytest
import torch

from comfy_pack import load_pack, pack_module
from node_helpers import dog_features, run_node
from vocoder_helpers import audio_folder

SelvaError = pack_module("selva.errors").SelvaError
ck = pack_module("selva.vocoder_tuning.checkpoint")


@pytest.fixture()
def out_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SELVA_OUTPUT_DIR", str(tmp_path / "output"))
    return tmp_path / "output"


@pytest.fixture(scope="module")
def features(model, tmp_path_factory):
    return dog_features(model, tmp_path_factory.mktemp("cache"))


def _train(model, **kw):
    args = dict(model=model, data_dir="voc_data", output_path="selva/vocoder", train_mode="snake_alpha_only",
                steps=3, lr=1e-2, batch_size=2, segment_seconds=0.3, lambda_l2sp=1e-3, save_every=2, seed=0)
    args.update(kw)
    (path,) = run_node("SelvaBigvganTrainer", **args)
    return path


def _sample(model, features):
    (audio,) = run_node("SelvaSampler", model=model, features=features, prompt="", negative_prompt="",
                        duration=0.0, steps=2, cfg_strength=4.5, seed=0, normalize=False, batch_size=1)
    return audio["waveform"]


def test_nodes_are_registered_with_the_issue_inputs():
    classes = load_pack().NODE_CLASS_MAPPINGS
    spec = classes["SelvaBigvganTrainer"].INPUT_TYPES()
    assert list(spec["required"]) == ["model", "data_dir", "output_path", "train_mode", "steps", "lr",
                                      "batch_size", "segment_seconds", "lambda_l2sp", "save_every", "seed"]
    assert list(spec["optional"]) == ["discriminator_path", "resume", "lambda_phase", "use_gafilter",
                                      "gafilter_kernel_size", "lora_adapter"]
    defaults = {k: v[1]["default"] for k, v in spec["required"].items() if len(v) > 1 and "default" in v[1]}
    assert defaults == {"data_dir": "selva/vocoder_data", "output_path": "selva/vocoder_tuning",
                        "train_mode": "snake_alpha_only", "steps": 2000, "lr": 1e-4, "batch_size": 4,
                        "segment_seconds": 1.0, "lambda_l2sp": 1e-3, "save_every": 500, "seed": 0}
    assert classes["SelvaBigvganTrainer"].RETURN_NAMES == ("checkpoint_path",)
    assert list(classes["SelvaBigvganLoader"].INPUT_TYPES()["required"]) == ["model", "path"]


def test_train_then_load_changes_the_sound_and_keeps_the_base(model, features, out_dir):
    audio_folder(out_dir / "voc_data")
    base_before = _sample(model, features)
    path = _train(model)
    assert path.startswith(str(out_dir / "selva" / "vocoder")) and path.endswith("vocoder_final.safetensors")
    (tuned_model,) = run_node("SelvaBigvganLoader", model=model,
                              path=str(ck.Path(path).relative_to(out_dir)))
    tuned = _sample(tuned_model, features)
    base_after = _sample(model, features)
    assert torch.equal(base_before, base_after)  # the input model (other branches) keeps the base sound
    assert not torch.equal(tuned, base_before)
    assert tuned.shape == base_before.shape and torch.isfinite(tuned).all()


def test_trainer_errors_are_clear(model, out_dir):
    (out_dir / "empty").mkdir(parents=True)
    with pytest.raises(SelvaError, match="No audio files"):
        _train(model, data_dir="empty")
    audio_folder(out_dir / "voc_data")
    with pytest.raises(SelvaError, match="WITHOUT discriminators"):
        _train(model, discriminator_path="nothing_here.pt")


def test_loader_needs_a_path(model, out_dir):
    with pytest.raises(SelvaError, match="path is empty"):
        run_node("SelvaBigvganLoader", model=model, path="  ")
