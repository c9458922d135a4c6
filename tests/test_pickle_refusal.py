"""Every loader of a user-supplied file refuses a pickle that runs code, and the code never runs.

The payload creates a marker file when unpickled. Each test first proves that an unsafe load
(``weights_only=False`` / ``allow_pickle=True``) does create it, so the check that the marker is
absent after our loader would catch a loader that unpickled the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_selva.bigvgan.errors import BigVGANError
from comfyui_selva.selva.errors import SelvaError


class Payload:
    """Unpickling this opens (creates) ``marker`` for writing: a visible side effect."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    """(torch pickle with the payload, its marker); the premise is checked and the marker removed."""
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    torch.save({"generator": {"w": Payload(marker)}, "mpd": {}, "mrd": {}, "format": "x"}, path)
    torch.load(path, weights_only=False)["generator"]["w"].close()
    assert marker.exists()  # the payload does run when unpickled unsafely
    marker.unlink()
    return path, marker


def _as(path: Path, suffix: str) -> Path:
    target = path.with_name(f"evil{suffix}")
    target.write_bytes(path.read_bytes())
    return target


def _loaders():
    from comfyui_selva.bigvgan.checkpoints import read_checkpoint
    from comfyui_selva.bigvgan.discriminator_loading import load_discriminators
    from comfyui_selva.bigvgan.discriminators import DiscriminatorConfig
    from comfyui_selva.bigvgan.loading import load_bigvgan_v1
    from comfyui_selva.selva.adapters.format import load_adapter
    from comfyui_selva.selva.style.steering import SteeringVectors
    from comfyui_selva.selva.style.textual_inversion import TextualInversion
    from comfyui_selva.selva.train.loop import load_checkpoint as load_training_checkpoint
    from comfyui_selva.selva.vocoder_tuning.checkpoint import read_tuned_vocoder
    from comfyui_selva.selva.weights import load_checkpoint

    disc = DiscriminatorConfig(sampling_rate=16000, second="mrd")
    return {  # name -> (suffix the loader takes, call, error type)
        "released weights / vocoder (selva.weights)": (".pth", load_checkpoint, SelvaError),
        "bigvgan checkpoint reader": (".pt", read_checkpoint, BigVGANError),
        "bigvgan v1 generator file": (".pt", load_bigvgan_v1, BigVGANError),
        "bigvgan discriminators": (".pt", lambda p: load_discriminators(p, disc), BigVGANError),
        "training checkpoint (resume)": (".pt", load_training_checkpoint, SelvaError),
        "LoRA adapter .pt": (".pt", load_adapter, SelvaError),
        "LoRA adapter .safetensors": (".safetensors", load_adapter, SelvaError),
        "textual-inversion embedding": (".safetensors", TextualInversion.load, SelvaError),
        "steering vectors": (".safetensors", SteeringVectors.load, SelvaError),
        "tuned vocoder": (".safetensors", read_tuned_vocoder, SelvaError),
    }


@pytest.mark.parametrize("name", list(_loaders()))
def test_a_code_running_pickle_is_refused_and_never_runs(evil, name):
    path, marker = evil
    suffix, load, error = _loaders()[name]
    with pytest.raises(error):
        load(_as(path, suffix))
    assert not marker.exists(), f"{name} ran the pickled code"


def test_a_features_file_with_a_pickled_array_is_refused_and_never_runs(tmp_path):
    from comfyui_selva.selva.features import Features

    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.npz"
    np.savez(path, header=np.array([Payload(marker)], dtype=object))
    with np.load(path, allow_pickle=True) as data:
        data["header"][0].close()
    assert marker.exists()
    marker.unlink()
    with pytest.raises(SelvaError, match="is not a readable SelVA features file"):
        Features.load(path)
    assert not marker.exists()
