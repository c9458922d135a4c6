"""The training nodes as ComfyUI runs them (inside inference mode), on the tiny models."""
from __future__ import annotations

import json

import pytest
import torch

from comfy_pack import pack_module
from node_helpers import run_node
from train_data import make_dataset, tone, video

compat = pack_module("nodes.comfy_compat")
SelvaError = pack_module("selva.errors").SelvaError
Interrupted = pack_module("selva.hooks").Interrupted


@pytest.fixture(scope="module")
def data_dir(model, tmp_path_factory):
    with torch.inference_mode():
        return make_dataset(model, tmp_path_factory.mktemp("nodes") / "sounds", clips=2)


def trainer_inputs(model, data_dir, out, **kw):
    inputs = dict(model=model, data_dir=str(data_dir), output_dir=str(out), steps=3, rank=2, alpha=2.0,
                  target="attn.qkv", lr=1e-3, warmup_steps=1, batch_size=1, grad_accum=1, save_every=2,
                  timestep_sampling="logit_normal", seed=1)
    inputs.update(kw)
    return inputs


class _Bar:
    def __init__(self, total, log):
        self.total, self.log = total, log

    def update_absolute(self, value, total=None, preview=None):
        self.log.append((value, total, preview))


def test_trainer_node_trains_with_a_live_loss_preview(model, data_dir, tmp_path, monkeypatch):
    updates = []
    monkeypatch.setattr(compat, "ProgressBar", lambda total: _Bar(total, updates))
    adapter, summary_path, curve = run_node("SelvaLoraTrainer", **trainer_inputs(model, data_dir, tmp_path))
    assert type(adapter).__name__ == "LoraAdapter" and adapter.path.name == "adapter_final.safetensors"
    meta = json.loads(open(summary_path).read())
    assert meta["status"] == "finished" and meta["steps_done"] == 3
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and curve.dtype == torch.float32
    previews = [p for v, t, p in updates if p is not None]
    assert previews and previews[0][0] == "PNG" and previews[0][1].size[0] > 100
    assert (3, 3, previews[-1]) in updates  # the last step shows the final curve


def test_trainer_node_cancel_saves_a_checkpoint(model, data_dir, tmp_path, monkeypatch):
    updates = []
    monkeypatch.setattr(compat, "ProgressBar", lambda total: _Bar(total, updates))
    monkeypatch.setattr(compat, "processing_interrupted",
                        lambda: any(v == 2 and t == 50 for v, t, _ in updates))
    with pytest.raises(Interrupted, match="resume from"):
        run_node("SelvaLoraTrainer", **trainer_inputs(model, data_dir, tmp_path, steps=50, save_every=0))
    assert (tmp_path / "lora_001" / "checkpoints" / "step_000002.pt").is_file()
    monkeypatch.setattr(compat, "processing_interrupted", lambda: False)
    _, summary_path, _ = run_node("SelvaLoraTrainer",
                                  **trainer_inputs(model, data_dir, tmp_path, steps=4, resume="latest"))
    assert json.loads(open(summary_path).read())["steps_done"] == 4


def test_trainer_node_clear_error_for_an_empty_folder(model, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SelvaError, match="No clips found"):
        run_node("SelvaLoraTrainer", **trainer_inputs(model, tmp_path / "empty", tmp_path / "out"))


def test_feature_extractor_name_writes_numbered_clips(model, tmp_path):
    frames = video(1.0, seed=3)
    audio = {"waveform": tone(1.0, 22050, 330.0)[None], "sample_rate": 22050}
    for i in range(2):
        run_node("SelvaFeatureExtractor", model=model, video=frames[i:], prompt="a door", fps=25.0,
                 duration=0.9, cache_dir=str(tmp_path), mask_strength=1.0, mask_clip=True, mask_sync=True,
                 name="door", audio=audio)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "door_001.npz", "door_001.wav", "door_002.npz", "door_002.wav"]
    ds = pack_module("selva.train.dataset")
    with torch.inference_mode():
        loaded = ds.load_dataset(model, tmp_path)
    assert [c.name for c in loaded.clips] == ["door_001", "door_002"]
    with pytest.raises(SelvaError, match="plain file name"):
        run_node("SelvaFeatureExtractor", model=model, video=frames, prompt="a door", fps=25.0, duration=0.9,
                 cache_dir=str(tmp_path), mask_strength=1.0, mask_clip=True, mask_sync=True, name="../x")


def test_dataset_browser(tmp_path):
    prepare = pack_module("selva.datasets.folder")
    index = prepare.DatasetIndex([prepare.ClipEntry("a_000", "/v/a.mp4", "a_000.wav", "a_000.npz",
                                                    "frames/a_000", "a dog", 8.0, 0.0)])
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(index.to_json()))
    video_path, audio_path, frames_dir, label, total = run_node("SelvaDatasetBrowser", dataset_json=str(path),
                                                                index=0)
    assert (video_path, label, total) == ("/v/a.mp4", "a dog", 1)
    assert audio_path == str(tmp_path / "a_000.wav") and frames_dir == str(tmp_path / "frames/a_000")
    with pytest.raises(SelvaError, match="out of range.*1 clip"):
        run_node("SelvaDatasetBrowser", dataset_json=str(path), index=1)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(SelvaError, match="not a dataset index"):
        run_node("SelvaDatasetBrowser", dataset_json=str(other), index=0)


def test_scheduler_and_skip_nodes(model, data_dir, tmp_path):
    exp = tmp_path / "sweep.json"
    exp.write_text(json.dumps({"base": {"data_dir": str(data_dir), "steps": 2, "rank": 2, "save_every": 0,
                                        "eval_samples": False, "grad_accum": 1},
                               "experiments": [{"name": "a"}, {"name": "b", "lr": 1e-3}]}))
    summary_path, curves, ranking, chart = run_node("SelvaLoraScheduler", model=model, experiments_file=str(exp),
                                                    output_dir=str(tmp_path / "sweeps"))
    runs = json.loads(open(summary_path).read())["runs"]
    assert {k: v["status"] for k, v in runs.items()} == {"a": "finished", "b": "finished"}
    assert curves.shape[0] == 1 and ranking == "" and chart.shape[0] == 1  # not ranked: no held_out_dir
    # the same sweep again with held-out clips: nothing retrains, the adapters are ranked
    with torch.inference_mode():
        held_out = make_dataset(model, tmp_path / "held_out", clips=1)
    summary_path, _, ranking, chart = run_node("SelvaLoraScheduler", model=model, experiments_file=str(exp),
                                               output_dir=str(tmp_path / "sweeps"), held_out_dir=str(held_out),
                                               rank_by="spectral")
    summary = json.loads(open(summary_path).read())
    assert {k: v["run_dir"] for k, v in summary["runs"].items()} == {k: v["run_dir"] for k, v in runs.items()}
    best = summary["ranking"]["best"]
    assert best in ("a", "b") and ranking.startswith(f"Best experiment by spectral (lower is better): {best}\n")
    assert chart.shape[0] == 1 and chart.shape[-1] == 3 and chart.dtype == torch.float32
    with pytest.raises(SelvaError, match="No sweep is running"):
        run_node("SelvaSkipExperiment", sweep_dir="")
    (flag,) = run_node("SelvaSkipExperiment", sweep_dir=str(tmp_path / "sweeps" / "sweep"))
    assert flag.endswith("skip.flag")


def test_skip_route_on_comfyuis_server(tmp_path, monkeypatch):
    import asyncio
    import sys
    import types

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    routes = web.RouteTableDef()
    server = types.ModuleType("server")
    server.PromptServer = types.SimpleNamespace(instance=types.SimpleNamespace(routes=routes))
    monkeypatch.setitem(sys.modules, "server", server)
    training = pack_module("nodes.training")
    assert training.register_routes()
    sweep = pack_module("selva.train.sweep")
    (tmp_path / sweep.SUMMARY_NAME).write_text("{}")

    async def go():
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            none = await client.post("/selva/skip", json={})
            odd = await client.post("/selva/skip", json=["not", "an", "object"])  # read as no folder given
            ok = await client.post("/selva/skip", json={"sweep_dir": str(tmp_path)})
            return none.status, await none.json(), odd.status, await odd.json(), ok.status, await ok.json()

    s1, body1, s3, body3, s2, body2 = asyncio.run(go())
    assert s1 == 409 and "No sweep is running" in body1["error"]
    assert s3 == 409 and "No sweep is running" in body3["error"]
    assert s2 == 200 and body2["flag_path"] == str(tmp_path / sweep.SKIP_FLAG)
    assert (tmp_path / sweep.SKIP_FLAG).is_file()
