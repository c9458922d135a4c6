"""The training command lines in subprocesses: train-lora (1 and 2 processes on gloo), skip."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comfyui_selva.selva.adapters import load_adapter
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline

from train_data import make_dataset

CLI = str(Path(__file__).resolve().parent / "tiny_cli.py")


@pytest.fixture(scope="module")
def data_dir(models_dir, tmp_path_factory):
    pipe = SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False))
    return make_dataset(pipe, tmp_path_factory.mktemp("cli") / "data", clips=4)


def train_args(models_dir, data_dir, out, batch_size):
    return ["train-lora", "--data_dir", str(data_dir), "--output_dir", str(out), "--variant", "tiny_16k",
            "--models-dir", str(models_dir), "--precision", "fp32", "--device", "cpu", "--offline",
            "--steps", "3", "--rank", "2", "--alpha", "2", "--lr", "1e-2", "--warmup_steps", "1",
            "--batch_size", str(batch_size), "--grad_accum", "2", "--save_every", "2", "--no_eval_samples",
            "--target", "attn.qkv linear1"]


def run(args, env_extra=None, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_with_the_same_global_batch(models_dir, data_dir, tmp_path):
    run([sys.executable, CLI, *train_args(models_dir, data_dir, tmp_path / "one", batch_size=2)])
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), CLI, *train_args(models_dir, data_dir, tmp_path / "two", batch_size=1)],
        env_extra={"SELVA_DIST_BACKEND": "gloo"})
    one = load_adapter(tmp_path / "one" / "lora_001" / "adapter_final.safetensors")
    two = load_adapter(tmp_path / "two" / "lora_001" / "adapter_final.safetensors")
    assert not (tmp_path / "two" / "lora_002").exists()  # only rank 0 wrote
    assert one.modules.keys() == two.modules.keys()
    for name in one.modules:
        torch.testing.assert_close(one.modules[name].up, two.modules[name].up, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(one.modules[name].down, two.modules[name].down, rtol=1e-4, atol=1e-6)
    assert any(w.up.abs().sum() > 0 for w in one.modules.values())


def test_cli_resume_latest_and_alias(models_dir, data_dir, tmp_path):
    args = train_args(models_dir, data_dir, tmp_path, batch_size=1)
    first = run([sys.executable, CLI, *args])
    assert first.stdout.strip().endswith("adapter_final.safetensors")
    more = [*args[:args.index("--steps") + 1], "5", *args[args.index("--steps") + 2:], "--resume", "latest"]
    run([sys.executable, CLI, *more])
    assert (tmp_path / "lora_002" / "adapter_final.safetensors").is_file()  # finished run kept as it was
    assert load_adapter(tmp_path / "lora_002" / "adapter_final.safetensors").meta.steps == 5
    assert load_adapter(tmp_path / "lora_001" / "adapter_final.safetensors").meta.steps == 3


def test_cli_reports_errors_without_a_traceback(models_dir, tmp_path):
    proc = subprocess.run([sys.executable, CLI, "train-lora", "--data_dir", str(tmp_path / "nope"),
                           "--variant", "tiny_16k", "--models-dir", str(models_dir), "--device", "cpu",
                           "--offline", "--precision", "fp32"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_ctrl_c_saves_a_checkpoint_then_stops(models_dir, data_dir, tmp_path):
    import signal
    import time

    args = train_args(models_dir, data_dir, tmp_path, batch_size=1)
    args[args.index("--steps") + 1] = "100000"
    args[args.index("--save_every") + 1] = "0"
    proc = subprocess.Popen([sys.executable, CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "lora_001" / "meta.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # a few steps
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert "cancelled at step" in err and "resume from" in err
    saved = list((tmp_path / "lora_001" / "checkpoints").glob("step_*.pt"))
    assert len(saved) == 1
    meta = json.loads((tmp_path / "lora_001" / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["steps_done"] >= 1
