"""``python -m selva evaluate`` end to end on the tiny models: generation, resume, metrics.json/png."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from comfyui_selva.selva import cli
from comfyui_selva.selva.evaluation import clap as CL
from comfyui_selva.selva.evaluation import desync as D
from comfyui_selva.selva.evaluation import passt as P
from comfyui_selva.selva.evaluation import weights as EW
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline
from comfyui_selva.selva.train.files import write_wav
from eval_helpers import TINY_CONFIG, tiny_clap_arch, write_tiny_clap, write_tiny_synchformer
from train_data import tone, video


class FakePasst:
    """A deterministic stand-in embedder: 4-d band energies and 5 'class' logits per clip."""

    def __call__(self, wave, rate, duration):
        x = P.PasstEmbedder.prepare(wave, rate, duration)
        spec = torch.fft.rfft(x).abs()[:4000].reshape(4, -1).mean(dim=1)
        return spec.log1p(), torch.cat([spec, spec[:1]]).log1p()


@pytest.fixture(scope="module")
def eval_models_dir(models_dir, tmp_path_factory):
    """The tiny models plus a tiny full Synchformer, a placeholder PaSST file and a tiny CLAP
    (released layout) with its tokenizer files."""
    root = tmp_path_factory.mktemp("eval_models")
    # folders this fixture adds files to are real folders (the shared tiny models stay untouched)
    own = ("ext_weights", "hf")
    for child in Path(models_dir).iterdir():
        if child.name not in own:
            os.symlink(child, root / child.name)
    for name in own:
        (root / name).mkdir()
        if (Path(models_dir) / name).is_dir():
            for f in (Path(models_dir) / name).iterdir():
                os.symlink(f, root / name / f.name)
    write_tiny_synchformer(root / "ext_weights" / "synchformer_state_dict.pth")
    (root / EW.PASST.path).parent.mkdir(parents=True)
    (root / EW.PASST.path).write_bytes(b"placeholder")
    write_tiny_clap(root / EW.CLAP.path, root / "hf" / EW.ROBERTA_TOKENIZER.local_name)
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
    monkeypatch.setattr(CL, "CLAP_ARCH", tiny_clap_arch())


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
    assert set(data["weights"]["metric_networks"]) == {"synchformer", "passt", "clap", "roberta_tokenizer"}
    assert set(data["weights"]["metric_networks"]["roberta_tokenizer"]["files"]) == {"vocab.json", "merges.txt"}
    assert data["directions"]["clap"] == "higher" and data["directions"]["kl"] == "lower"
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
        clap = model["clap"]
        assert set(clap["per_clip"]) == {"clip_0", "clip_1", "clip_2"} and clap["n_scored"] == 3
        assert all(-1.0 <= v <= 1.0 for v in clap["per_clip"].values())
        assert clap["mean"] == pytest.approx(sum(clap["per_clip"].values()) / 3)
    assert data["best"]["kl"] in data["models"]
    for metric, order in data["ranking"].items():  # best first, as a sweep is ranked
        means = [data["models"][m][metric]["mean"] for m in order]
        higher = data["directions"][metric] == "higher"
        assert order[0] == data["best"][metric] and means == sorted(means, reverse=higher)
    # each clip's CLAP score is its generated audio against the prompt it was generated with
    from safetensors.torch import load_file

    scorer = CL.ClapScorer.from_files(eval_models_dir / EW.CLAP.path,
                                      eval_models_dir / "hf" / EW.ROBERTA_TOKENIZER.local_name)
    for clip, prompt, seconds in (("clip_0", "a dog barking", 5.0), ("clip_2", "a bell", 1.0)):
        wave = load_file(out / "audio" / "a.safetensors" / f"{clip}.safetensors")["wave"]
        want = CL.clap_scores(scorer.audio_embedding(wave, 16000, seconds)[None], scorer.text_embeddings([prompt]))
        assert data["models"]["a.safetensors"]["clap"]["per_clip"][clip] == pytest.approx(float(want[0]), abs=1e-6)
        other = CL.clap_scores(scorer.audio_embedding(wave, 16000, seconds)[None], scorer.text_embeddings(["rain"]))
        assert abs(float(other[0]) - float(want[0])) > 1e-4  # another prompt would give another score
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


def test_offline_missing_metric_weights_are_listed(models_dir, held_out, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))  # nothing cached to fall back on
    rc = cli.main(_args(models_dir, held_out, tmp_path / "e", "--metrics", "desync,fd,clap"))
    assert rc == 1
    err = capsys.readouterr().err
    assert "The evaluation networks are missing and downloads are turned off" in err
    assert "ext_weights/synchformer_state_dict.pth: download https://huggingface.co/jnwnlee/SelVA" in err
    assert "evaluation/passt-s-f128-p16-s10-ap.476-swa.pt: download https://github.com/kkoutini" in err
    assert ("evaluation/music_speech_audioset_epoch_15_esc_89.98.pt: download https://huggingface.co/"
            "lukewys/laion_clap/resolve/main/music_speech_audioset_epoch_15_esc_89.98.pt") in err
    assert "- FacebookAI/roberta-base: put vocab.json, merges.txt into" in err


def test_unknown_metric_is_a_clear_error(models_dir, held_out, tmp_path, capsys):
    assert cli.main(_args(models_dir, held_out, tmp_path / "e", "--metrics", "desync,fad")) == 1
    assert "Unknown metric(s) fad: choose from desync, clap, fd, kl, spectral" in capsys.readouterr().err
