"""``python -m selva evaluate`` end to end on the tiny models: generation, resume, metrics.json/png."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from comfyui_selva.selva import cli
from comfyui_selva.selva.evaluation import desync as D
from comfyui_selva.selva.evaluation import passt as P
from comfyui_selva.selva.evaluation import weights as EW
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline
from comfyui_selva.selva.train.files import write_wav
from eval_helpers import TINY_CONFIG, write_tiny_synchformer
from train_data import tone, video


class FakePasst:
    """A deterministic stand-in embedder: 4-d band energies and 5 'class' logits per clip."""

    def __call__(self, wave, rate, duration):
        x = P.PasstEmbedder.prepare(wave, rate, duration)
        spec = torch.fft.rfft(x).abs()[:4000].reshape(4, -1).mean(dim=1)
        return spec.log1p(), torch.cat([spec, spec[:1]]).log1p()


@pytest.fixture(scope="module")
def eval_models_dir(models_dir, tmp_path_factory):
    """The tiny models plus a tiny full Synchformer and a placeholder PaSST file."""
    root = tmp_path_factory.mktemp("eval_models")
    for child in Path(models_dir).iterdir():
        if child.name != "ext_weights":
            os.symlink(child, root / child.name)
    (root / "ext_weights").mkdir()
    for f in (Path(models_dir) / "ext_weights").iterdir():
        os.symlink(f, root / "ext_weights" / f.name)
    write_tiny_synchformer(root / "ext_weights" / "synchformer_state_dict.pth")
    (root / EW.PASST.path).parent.mkdir(parents=True)
    (root / EW.PASST.path).write_bytes(b"placeholder")
    return root


@pytest.fixture(scope="module")
def held_out(eval_models_dir, tmp_path_factory):
    pipe = SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                          models_dir=eval_models_dir, allow_download=False))
    folder = tmp_path_factory.mktemp("held_out")
    for i, (seconds, prompt) in enumerate([(5.0, "a dog barking"), (5.0, "rain"), (1.0, "a bell")]):
        pipe.extract_features(video(seconds, seed=i), 25.0, prompt).save(folder / f"clip_{i}.npz")
        write_wav(folder / f"clip_{i}.wav", tone(seconds, 22050, 220.0 * (i + 1), 2), 22050)
    return folder


@pytest.fixture
def tiny_networks(monkeypatch):
    monkeypatch.setattr(D, "SYNCHFORMER_CONFIG", TINY_CONFIG)
    monkeypatch.setattr(P.PasstEmbedder, "from_file", classmethod(lambda cls, path, device="cpu": FakePasst()))


def _lora(tmp_path: Path, eval_models_dir: Path) -> Path:
    from lora_helpers import write_tiny_adapter

    return write_tiny_adapter(tmp_path / "a.safetensors")


def _args(eval_models_dir, held_out, out, *extra):
    return ["evaluate", "--data", str(held_out), "--out-dir", str(out), "--variant", "tiny_16k",
            "--precision", "fp32", "--device", "cpu", "--models-dir", str(eval_models_dir), "--offline",
            "--steps", "2", "--seed", "7", *extra]


def test_evaluate_writes_metrics_for_base_and_adapter_and_resumes(eval_models_dir, held_out, tmp_path,
                                                                  tiny_networks, monkeypatch):
    lora = _lora(tmp_path, eval_models_dir)
    out = tmp_path / "eval"
    rc = cli.main(_args(eval_models_dir, held_out, out, "--base", "--lora", str(lora)))
    assert rc == 0
    data = json.loads((out / "metrics.json").read_text())
    assert list(data["models"]) == ["base", "a.safetensors"]
    assert data["settings"]["seed"] == 7 and data["settings"]["clips"] == ["clip_0", "clip_1", "clip_2"]
    assert data["weights"]["models"]["a.safetensors"]["blake2b"]
    assert set(data["weights"]["metric_networks"]) == {"synchformer", "passt"}
    for model in data["models"].values():
        desync = model["desync"]
        # the 1 s clip is listed as unscored, never averaged in silently
        assert desync["unscored"] == {"clip_2": "1.00 s is shorter than the 4.8 s DeSync needs"}
        assert desync["per_clip"]["clip_2"] is None and desync["n_scored"] == 2
        values = [v for o in desync["offsets"].values() for v in o]
        assert desync["mean"] == pytest.approx(sum(abs(v) for v in values) / 4)
        assert all(abs(v) <= 2.0 for v in values)
        assert model["kl"]["mean"] == pytest.approx(sum(model["kl"]["per_clip"].values()) / 3)
        assert model["fd"]["mean"] >= 0 and model["spectral"]["mean"] > 0
    assert data["best"]["kl"] in data["models"]
    for metric, order in data["ranking"].items():  # best first, as a sweep is ranked
        means = [data["models"][m][metric]["mean"] for m in order]
        assert order[0] == data["best"][metric] and means == sorted(means)
    assert (out / "metrics.png").stat().st_size > 1000
    clips = [p for p in (out / "audio").rglob("*.safetensors") if p.is_file()]
    assert len(clips) == 6

    # a second run reuses every generated clip: generation must not run again
    from comfyui_selva.selva import pipeline as pipeline_mod

    def no_generation(*a, **k):
        raise AssertionError("generated again instead of reusing the kept clip")

    monkeypatch.setattr(pipeline_mod.SelvaPipeline, "generate", no_generation)
    assert cli.main(_args(eval_models_dir, held_out, out, "--base", "--lora", str(lora))) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["models"] == data["models"]


def test_kept_clips_from_other_settings_are_not_overwritten(eval_models_dir, held_out, tmp_path,
                                                            tiny_networks, capsys):
    out = tmp_path / "eval"
    assert cli.main(_args(eval_models_dir, held_out, out, "--metrics", "spectral")) == 0
    before = {p: p.read_bytes() for p in (out / "audio").rglob("*.safetensors") if p.is_file()}
    rc = cli.main(_args(eval_models_dir, held_out, out, "--metrics", "spectral", "--cfg", "2.0"))
    assert rc == 1
    assert "was generated with other settings" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (out / "audio").rglob("*.safetensors") if p.is_file()} == before


def test_offline_missing_metric_weights_are_listed(models_dir, held_out, tmp_path, capsys):
    rc = cli.main(_args(models_dir, held_out, tmp_path / "e", "--metrics", "desync,fd"))
    assert rc == 1
    err = capsys.readouterr().err
    assert "The evaluation networks are missing and downloads are turned off" in err
    assert "ext_weights/synchformer_state_dict.pth: download https://huggingface.co/jnwnlee/SelVA" in err
    assert "evaluation/passt-s-f128-p16-s10-ap.476-swa.pt: download https://github.com/kkoutini" in err


def test_unknown_metric_is_a_clear_error(models_dir, held_out, tmp_path, capsys):
    assert cli.main(_args(models_dir, held_out, tmp_path / "e", "--metrics", "desync,fad")) == 1
    assert "Unknown metric(s) fad: choose from desync, fd, kl, spectral" in capsys.readouterr().err
