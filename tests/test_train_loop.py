"""The shared training loop on a toy task: learning, exact resume, cancel, NaN guard, run folders."""
from __future__ import annotations

import json

import pytest
import torch

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.hooks import Hooks, Interrupted
from comfyui_selva.selva.train import loop as L


class Regression(L.TrainTask):
    """Fit w so that x @ w matches a fixed target; per-item noise from the batch generators."""

    resume_keys = ("dim",)

    def __init__(self, n: int = 6, dim: int = 4, nan_at: int = 0):
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.arange(1.0, dim + 1.0)
        self.w = torch.nn.Parameter(torch.zeros(dim))
        self.dim, self.nan_at, self.calls = dim, nan_at, 0
        self.exports: list[str] = []

    def trainable_parameters(self):
        return [self.w]

    def num_items(self):
        return len(self.x)

    def loss(self, batch):
        self.calls += 1
        noise = torch.stack([torch.randn((), generator=batch.generator(i)) for i in range(len(batch))])
        idx = torch.tensor(batch.indices)
        err = (self.x[idx] @ self.w - self.y[idx] + 0.01 * noise) ** 2
        if self.nan_at and batch.step >= self.nan_at:
            err = err * float("nan")
        return err

    def describe(self):
        return {"dim": self.dim}

    def eval_sample(self):
        return torch.sin(torch.arange(800.0) * 0.1 * (1 + self.w.sum().item()))[None] * 0.1, 8000

    def export(self, run_dir, tag):
        self.exports.append(tag)
        path = run_dir / f"w_{tag}.pt"
        torch.save(self.w.detach().clone(), path)
        return path


def cfg(**kw):
    base = dict(steps=12, lr=0.05, warmup_steps=2, batch_size=2, grad_accum=2, save_every=4,
                seed=3, run_name="toy", eval_samples=False)
    base.update(kw)
    return L.LoopConfig(**base)


def test_loss_goes_down_and_outputs_are_written(tmp_path):
    task = Regression()
    result = L.run_training(task, cfg(steps=60, save_every=20, eval_samples=True), tmp_path)
    assert result.status == "finished" and result.steps_done == 60
    assert sum(result.losses[-5:]) < 0.2 * sum(result.losses[:5])
    run = result.run_dir
    assert run.name == "toy_001"
    for name in ("loss_curve.png", "loss_raw.png", "loss_smoothed.png", "losses.csv", "meta.json",
                 "samples/step_000000.wav", "samples/step_000000.png", "samples/step_000060.wav",
                 "samples/step_000020.png", "checkpoints/step_000020.pt", "checkpoints/step_000060.pt"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["steps_done"] == 60
    assert meta["final_loss"] == pytest.approx(result.losses[-1])
    assert task.exports[-1] == "final" and "step_000040" in task.exports
    assert result.loss_curve.size[0] > 100
    # a second run never reuses the folder
    again = L.run_training(Regression(), cfg(steps=2), tmp_path)
    assert again.run_dir.name == "toy_002"


def test_resume_matches_an_uninterrupted_run_bit_for_bit(tmp_path):
    full = Regression()
    L.run_training(full, cfg(), tmp_path / "a")
    part = Regression()
    first = L.run_training(part, cfg(steps=5), tmp_path / "b")
    resumed = Regression()
    # resume from the step-4 checkpoint (not the newest): continues in a fresh folder
    result = L.run_training(resumed, cfg(), tmp_path / "b",
                            resume=str(first.run_dir / "checkpoints" / "step_000004.pt"))
    assert result.run_dir != first.run_dir
    assert torch.equal(resumed.w, full.w)
    latest = Regression()
    L.run_training(latest, cfg(steps=5), tmp_path / "c")
    out = L.run_training(latest2 := Regression(), cfg(), tmp_path / "c", resume="latest")
    assert torch.equal(latest2.w, full.w)
    assert out.losses == L.load_checkpoint(out.checkpoint)["losses"]


def test_cancel_saves_a_checkpoint_and_resume_is_exact(tmp_path):
    full = Regression()
    L.run_training(full, cfg(), tmp_path / "a")
    done = {"n": 0}
    hooks = Hooks(progress=lambda stage, d, n: done.update(n=d), interrupted=lambda: done["n"] >= 7)
    task = Regression()
    with pytest.raises(Interrupted, match="step 7"):
        L.run_training(task, cfg(), tmp_path / "b", hooks=hooks)
    run = tmp_path / "b" / "toy_001"
    assert (run / "checkpoints" / "step_000007.pt").is_file()
    assert json.loads((run / "meta.json").read_text())["status"] == "interrupted"
    resumed = Regression()
    result = L.run_training(resumed, cfg(), tmp_path / "b", resume="latest")
    assert result.run_dir == run  # the newest state of that folder: continued in place
    assert torch.equal(resumed.w, full.w)


def test_a_foreign_cancel_exception_also_saves(tmp_path):
    class HostInterrupt(Exception):
        pass

    def progress(stage, done, total):
        if done == 3:
            raise HostInterrupt()

    with pytest.raises(HostInterrupt):
        L.run_training(Regression(), cfg(), tmp_path, hooks=Hooks(progress=progress))
    assert (tmp_path / "toy_001" / "checkpoints" / "step_000003.pt").is_file()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    task = Regression(nan_at=6)
    with pytest.raises(L.TrainingDiverged, match="step 6.*step_000004.pt.*learning rate"):
        L.run_training(task, cfg(), tmp_path)
    run = tmp_path / "toy_001"
    assert [p.name for p in L.list_checkpoints(run)] == ["step_000004.pt"]
    assert torch.isfinite(task.w).all()
    assert json.loads((run / "meta.json").read_text())["status"] == "diverged"


def test_latest_passes_over_a_newer_run_that_failed_before_any_checkpoint(tmp_path):
    """'latest' is the newest checkpoint: a run folder that holds none (a run that diverged or
    crashed before its first save) does not hide the older run's."""
    done = {"n": 0}
    hooks = Hooks(progress=lambda stage, d, n: done.update(n=d), interrupted=lambda: done["n"] >= 7)
    with pytest.raises(Interrupted):
        L.run_training(Regression(), cfg(), tmp_path, hooks=hooks)
    with pytest.raises(L.TrainingDiverged):
        L.run_training(Regression(nan_at=2), cfg(), tmp_path)
    assert not L.list_checkpoints(tmp_path / "toy_002")
    result = L.run_training(Regression(), cfg(), tmp_path, resume="latest")
    assert result.run_dir == tmp_path / "toy_001" and result.steps_done == 12


def test_resume_with_other_settings_is_refused(tmp_path):
    first = L.run_training(Regression(dim=4), cfg(steps=4), tmp_path)
    with pytest.raises(SelvaError, match="dim: checkpoint 4, this run 3"):
        L.run_training(Regression(dim=3), cfg(), tmp_path, resume=str(first.checkpoint))
    with pytest.raises(SelvaError, match="not a SelVA training checkpoint"):
        bad = tmp_path / "bad.pt"
        torch.save({"x": torch.zeros(1)}, bad)
        L.run_training(Regression(), cfg(), tmp_path, resume=str(bad))
    with pytest.raises(SelvaError, match="no checkpoint found"):
        L.run_training(Regression(), cfg(run_name="other"), tmp_path, resume="latest")


def test_a_step_inside_inference_mode_still_trains(tmp_path):
    with torch.inference_mode():
        task = Regression()
        with torch.inference_mode(False):
            task.w = torch.nn.Parameter(torch.zeros(4))
        L.run_training(task, cfg(steps=2), tmp_path)
    assert task.w.abs().sum() > 0


def test_should_stop_ends_early_with_a_final_export(tmp_path):
    task = Regression()
    result = L.run_training(task, cfg(), tmp_path, should_stop=lambda: task.calls >= 6)
    assert result.status == "stopped" and result.steps_done == 3
    assert task.exports[-1] == "final"


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SelvaError, match="Cannot write to the output folder"):
        L.run_training(Regression(), cfg(), blocker / "sub")


def test_progress_preview_gets_the_loss_curve(tmp_path):
    seen = []
    hooks = Hooks(preview=lambda stage, d, n, image: seen.append((d, image.size)))
    L.run_training(Regression(), cfg(steps=3, preview_every_s=0), tmp_path, hooks=hooks)
    assert [d for d, _ in seen] == [1, 2, 3] and seen[0][1][0] > 100
