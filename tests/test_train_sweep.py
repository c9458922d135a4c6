"""Sweeps: a failing run is recorded, a skip from another thread ends the running experiment,
a re-run skips what is done."""
from __future__ import annotations

import json
import threading
import time

import pytest

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline
from comfyui_selva.selva.train import sweep as S
from comfyui_selva.selva.train.lora_trainer import train_lora

from train_data import PROMPTS, make_dataset


@pytest.fixture(scope="module")
def pipe(models_dir):
    return SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False))


def write_experiments(path, data_dir):
    base = {"data_dir": str(data_dir), "steps": 2, "rank": 2, "alpha": 2.0, "save_every": 0,
            "warmup_steps": 1, "grad_accum": 1, "eval_samples": False}
    path.write_text(json.dumps({"base": base, "experiments": [
        {"name": "ok"}, {"name": "bad", "target": "no.such.layer"},
        {"name": "long", "steps": 100000}, {"name": "after", "rank": 3}]}))
    return path


def test_sweep_survives_a_failure_and_a_skip_and_resumes(pipe, tmp_path):
    data = make_dataset(pipe, tmp_path / "data", clips=2)
    exp_file = write_experiments(tmp_path / "my_sweep.json", data)
    calls = []

    def counting_train(*a, **kw):
        calls.append(kw["run_dir"].name)
        return train_lora(*a, **kw)

    box = {}
    thread = threading.Thread(target=lambda: box.update(result=S.run_sweep(pipe, exp_file, tmp_path / "out",
                                                                            train=counting_train)))
    thread.start()
    summary = tmp_path / "out" / "my_sweep" / S.SUMMARY_NAME
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until "long" is training, then skip it from here
        runs = json.loads(summary.read_text()).get("runs", {}) if summary.is_file() else {}
        long_dir = runs.get("long", {}).get("run_dir")
        if runs.get("long", {}).get("status") == "running" and long_dir and \
                (tmp_path / long_dir / "meta.json").is_file():
            break
        time.sleep(0.05)
    assert S.active_sweeps() == [tmp_path / "out" / "my_sweep"]
    flag = S.request_skip()  # no folder: the sweep running in this process
    assert flag.name == S.SKIP_FLAG
    thread.join(300)
    assert not thread.is_alive()
    result = box["result"]
    runs = result.summary["runs"]
    assert runs["ok"]["status"] == "finished" and runs["after"]["status"] == "finished"
    assert runs["bad"]["status"] == "failed" and "no.such.layer" in runs["bad"]["error"]
    assert runs["long"]["status"] == "stopped" and runs["long"]["steps_done"] < 100000
    assert (tmp_path / runs["long"]["adapter"]).is_file()
    assert json.loads(summary.read_text()) == json.loads(json.dumps(result.summary))
    assert (result.sweep_dir / "comparison_curves.png").is_file() and result.comparison.size[0] > 100
    assert not flag.exists()
    from comfyui_selva.selva.adapters.compare import read_adapter_list
    entries = read_adapter_list(str(summary))  # the evaluator reads the summary directly
    assert [e.name for e in entries][1:] == ["ok", "long", "after"]
    # a re-run trains only what is not done (the failed one), in a fresh folder
    calls.clear()
    again = S.run_sweep(pipe, exp_file, tmp_path / "out", train=counting_train)
    assert calls == ["bad_002"] and again.summary["runs"]["bad"]["status"] == "failed"


def test_bad_experiment_files_are_clear_errors(tmp_path):
    with pytest.raises(SelvaError, match="does not exist"):
        S.read_experiments(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SelvaError, match="not valid JSON"):
        S.read_experiments(bad)
    bad.write_text(json.dumps({"experiments": [{"name": "a", "rnak": 2, "data_dir": "x"}]}))
    with pytest.raises(SelvaError, match="unknown setting.*rnak"):
        S.read_experiments(bad)
    bad.write_text(json.dumps({"base": {"data_dir": "x"}, "experiments": [{"name": "a"}, {"name": "a"}]}))
    with pytest.raises(SelvaError, match="repeated"):
        S.read_experiments(bad)
    bad.write_text(json.dumps({"experiments": [{"name": "a"}]}))
    with pytest.raises(SelvaError, match="no data_dir"):
        S.read_experiments(bad)
    with pytest.raises(SelvaError, match="not a sweep folder"):
        S.request_skip(tmp_path)


def test_eval_features_of_a_sweep_file_follow_the_same_path_rule_as_its_data_dir(pipe, tmp_path):
    """A node resolves the file's relative paths inside ComfyUI's output folder: eval_features
    too, not only data_dir (it was read from the working folder)."""
    import shutil

    root = tmp_path / "output"
    make_dataset(pipe, root / "data", clips=2)
    shutil.copy(root / "data" / "clip_001.npz", root / "eval.npz")
    exp_file = tmp_path / "sweep.json"
    exp_file.write_text(json.dumps({"base": {"data_dir": "data", "eval_features": "eval.npz", "steps": 1, "rank": 2,
                                             "save_every": 0, "warmup_steps": 0, "grad_accum": 1,
                                             "eval_samples": False},
                                    "experiments": [{"name": "one"}]}))
    given = []

    def train(*a, **kw):
        given.append(kw["eval_features"])
        return train_lora(*a, **kw)

    result = S.run_sweep(pipe, exp_file, tmp_path / "sweeps", train=train, resolve_data_dir=lambda text: root / text)
    assert result.summary["runs"]["one"]["status"] == "finished", result.summary["runs"]["one"]["error"]
    assert given[0].prompt == PROMPTS[1]


def test_a_summary_of_another_sweep_in_the_folder_is_refused_and_kept(pipe, tmp_path):
    """Two kinds of sweep pointed at one folder: the second refuses instead of reading the first's
    runs as its own (skipping them as done) or replacing its experiment_summary.json."""
    from comfyui_selva.selva.vocoder_tuning.sweep import run_vocoder_sweep

    exp_file = tmp_path / "shared.json"
    exp_file.write_text(json.dumps({"base": {"data_dir": "x", "steps": 1}, "experiments": [{"name": "a"}]}))
    folder = tmp_path / "out" / "shared"
    folder.mkdir(parents=True)
    summary = folder / S.SUMMARY_NAME
    for kind, run in (("vocoder", lambda: S.run_sweep(pipe, exp_file, tmp_path / "out")),
                      (None, lambda: run_vocoder_sweep(pipe, exp_file, tmp_path / "out"))):
        text = json.dumps({"format": "selva-sweep", "version": 1, **({"kind": kind} if kind else {}),
                           "runs": {"a": {"status": "finished"}}})
        summary.write_text(text)
        with pytest.raises(SelvaError, match=r"is the summary of a (vocoder|LoRA / textual inversion) sweep, not "
                                             r"of this .* sweep; it is left as it is\. Move it away, or run this "
                                             r"sweep into another output folder"):
            run()
        assert summary.read_text() == text
    summary.write_text("{not a summary")  # nor is a file this version cannot read replaced
    with pytest.raises(SelvaError, match="is not a sweep summary this version reads"):
        S.run_sweep(pipe, exp_file, tmp_path / "out")
    assert summary.read_text() == "{not a summary"
