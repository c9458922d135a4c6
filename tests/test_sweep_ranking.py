"""A LoRA sweep ranked on held-out clips: order and direction read from the metric, metrics kept per
experiment, failed experiments left out with their reason, a re-run trains and generates nothing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from comfyui_selva.selva import pipeline as pipeline_mod
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.evaluation import options as eval_options
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline
from comfyui_selva.selva.train import sweep as S
from comfyui_selva.selva.train.lora_trainer import train_lora
from comfyui_selva.selva.train.sweep_ranking import ranking_text

from train_data import make_dataset


@pytest.fixture(scope="module")
def pipe(models_dir):
    return SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False))


@pytest.fixture(scope="module")
def folders(pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("ranked")
    return make_dataset(pipe, root / "train", clips=2), make_dataset(pipe, root / "held_out", clips=2)


def sweep_file(path, train_dir, evaluation, experiments=None):
    base = {"data_dir": str(train_dir), "steps": 2, "rank": 2, "alpha": 2.0, "save_every": 0,
            "warmup_steps": 1, "grad_accum": 1, "eval_samples": False}
    experiments = experiments or [{"name": "fast", "lr": 5e-2}, {"name": "bad", "target": "no.such.layer"},
                                  {"name": "slow", "lr": 1e-4, "rank": 3}]
    path.write_text(json.dumps({"base": base, "experiments": experiments, "evaluation": evaluation}))
    return path


def test_sweep_is_ranked_on_held_out_clips_and_reranked_without_work(pipe, folders, tmp_path, monkeypatch):
    train_dir, held_out = folders
    exp = sweep_file(tmp_path / "ranked.json", train_dir,
                     {"held_out_dir": str(held_out), "rank_by": "spectral", "steps": 2, "seed": 3})
    calls = []

    def counting_train(*a, **kw):
        calls.append(kw["run_dir"].name)
        return train_lora(*a, **kw)

    result = S.run_sweep(pipe, exp, tmp_path / "out", train=counting_train)
    assert calls == ["fast_001", "bad_001", "slow_001"]
    summary = json.loads(result.summary_path.read_text())
    ranking = summary["ranking"]
    assert ranking["metric"] == "spectral" and ranking["direction"] == "lower"
    assert sorted(ranking["order"]) == ["base", "fast", "slow"]
    values = ranking["values"]
    assert [values[n] for n in ranking["order"]] == sorted(values.values())  # lower is better: ascending
    assert ranking["best"] == next(n for n in ranking["order"] if n != "base")
    assert ranking["left_out"] == {"bad": summary["runs"]["bad"]["error"].join(["failed: ", ""])}
    assert "no.such.layer" in ranking["left_out"]["bad"]
    # the evaluation's own files are inside the sweep folder and agree with the summary
    metrics = json.loads(Path(ranking["metrics_json"]).read_text())
    assert ranking["metrics_json"].startswith(str(result.sweep_dir / "evaluation"))
    assert list(metrics["models"]) == ["base", "fast", "slow"] and metrics["settings"]["seed"] == 3
    for name in ("fast", "slow"):
        assert summary["runs"][name]["metrics"] == {"spectral": metrics["models"][name]["spectral"]["mean"]}
        assert values[name] == metrics["models"][name]["spectral"]["mean"]
    assert "metrics" not in summary["runs"]["bad"]
    assert (result.sweep_dir / "evaluation").is_dir() and Path(ranking["chart"]).read_bytes()[:4] == b"\x89PNG"
    assert result.metrics_chart.ndim == 3 and result.metrics_chart.shape[2] == 3
    from PIL import Image
    with Image.open(ranking["chart"]) as saved:  # the node shows the chart that was saved
        assert (result.metrics_chart == np.asarray(saved.convert("RGB"))).all()
    text = ranking_text(summary)
    assert text.splitlines()[0] == f"Best experiment by spectral (lower is better): {ranking['best']}"
    assert "left out: bad (failed: " in text

    # a re-run of the finished sweep trains nothing new and reuses every generated clip; the
    # direction is read from the metric, so a higher-is-better metric ranks the other way round
    def no_generation(*a, **k):
        raise AssertionError("generated again instead of reusing the kept clip")

    monkeypatch.setattr(pipeline_mod.SelvaPipeline, "generate", no_generation)
    monkeypatch.setitem(eval_options.DIRECTION, "spectral", "higher")
    calls.clear()
    again = S.run_sweep(pipe, exp, tmp_path / "out", train=counting_train)
    assert calls == ["bad_002"]  # only the failed one is tried again
    flipped = again.summary["ranking"]
    assert flipped["direction"] == "higher" and flipped["values"] == values
    assert flipped["order"] == ranking["order"][::-1]
    assert again.summary["runs"]["fast"]["run_dir"] == summary["runs"]["fast"]["run_dir"]


def test_node_inputs_override_the_file_and_rank_without_retraining(pipe, folders, tmp_path):
    train_dir, held_out = folders
    exp = sweep_file(tmp_path / "plain.json", train_dir, None, [{"name": "only"}])
    plain = S.run_sweep(pipe, exp, tmp_path / "out")
    assert "ranking" not in plain.summary and plain.metrics_chart is None
    ranked = S.run_sweep(pipe, exp, tmp_path / "out", rank={"held_out_dir": str(held_out), "rank_by": "spectral",
                                                            "steps": 2})
    assert ranked.summary["runs"]["only"]["run_dir"] == plain.summary["runs"]["only"]["run_dir"]
    assert sorted(ranked.summary["ranking"]["order"]) == ["base", "only"]
    assert ranked.summary["ranking"]["best"] == "only"


def test_ranking_mistakes_fail_before_any_training(pipe, folders, tmp_path):
    train_dir, held_out = folders
    cases = [
        ({"held_out_dir": str(tmp_path / "nowhere"), "rank_by": "spectral"}, None,
         f"held_out_dir {tmp_path / 'nowhere'} is not a folder"),
        ({"held_out_dir": str(held_out), "rank_by": "fad"}, None, "Unknown metric(s) fad: choose from"),
        ({"held_out_dir": str(held_out), "rank_by": "spectral", "stesp": 2}, None, "unknown: stesp."),
        ({"held_out_dir": str(held_out), "rank_by": "spectral"}, [{"name": "base"}],
         "An experiment is named 'base', the name the ranking gives the base model"),
    ]
    for evaluation, experiments, message in cases:
        exp = sweep_file(tmp_path / "wrong.json", train_dir, evaluation, experiments)
        with pytest.raises(SelvaError) as err:
            S.run_sweep(pipe, exp, tmp_path / "out")
        assert message in str(err.value)
        assert not (tmp_path / "out").exists()  # nothing trained, no sweep folder made
