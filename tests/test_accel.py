"""TF32 is scoped to SelVA's own work; the optional torch.compile of the generator."""
from __future__ import annotations

import pytest
import torch

from comfyui_selva.selva import accel
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline

from node_helpers import frames


@pytest.fixture()
def tf32_off():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_tf32_is_on_inside_and_restored_after(tf32_off):
    with accel.tf32(torch.device("cuda")):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    with pytest.raises(RuntimeError):
        with accel.tf32(torch.device("cuda")):
            raise RuntimeError("a failing stage")
    assert not torch.backends.cuda.matmul.allow_tf32


def test_tf32_leaves_cpu_and_disabled_runs_alone(tf32_off):
    with accel.tf32(torch.device("cpu")):
        assert not torch.backends.cuda.matmul.allow_tf32
    with accel.tf32(torch.device("cuda"), enabled=False):
        assert not torch.backends.cuda.matmul.allow_tf32


def test_compile_wraps_the_generator_once(models_dir, monkeypatch):
    real_compile = torch.compile
    compiled = []

    def eager_compile(fn, backend="inductor"):
        compiled.append(backend)
        return real_compile(fn, backend="eager")  # no C++ toolchain needed in the test

    monkeypatch.setattr(accel.torch, "compile", eager_compile)
    opts = dict(variant="tiny_16k", precision="fp32", device="cpu", models_dir=models_dir,
                allow_download=False)
    plain = SelvaPipeline.load(LoadOptions(**opts))
    fast = SelvaPipeline.load(LoadOptions(**opts, compile=True))
    feats = plain.extract_features(frames(1.0, seed=2), 25.0, "a dog")
    want = plain.sample_latent(feats, steps=2, seed=1)
    got = fast.sample_latent(feats, steps=2, seed=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))
    fast.sample_latent(feats, steps=2, seed=2, batch_size=2)  # new batch size: same wrapper
    assert compiled == ["inductor"]
    assert not plain.options.compile and compiled  # the plain pipeline never compiles
