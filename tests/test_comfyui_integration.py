"""The pack inside a real ComfyUI, driven over its HTTP API.

Skipped unless ``COMFYUI_DIR`` points at a ComfyUI checkout (its requirements installed in the
Python running pytest). ComfyUI runs on the CPU, listening on 127.0.0.1 only, with a temporary
base directory whose ``custom_nodes/`` links to this repository, so the checkout is not touched.

Real weights cannot be downloaded here, so the test writes the two files the VAE round trip
needs (small_16k's VAE and vocoder, full size, random values from the checkpoint manifest) into
a folder it registers through an ``extra_model_paths.yaml``; networks load on first use, so the
other files need not exist. With
``SELVA_TEST_MODELS_DIR`` pointing at a complete models folder, the generation workflow runs too.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch

from comfy_pack import FRONTEND_ONLY, REPO_ROOT, load_pack, pack_module
from node_helpers import frames, write_video

COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")
MODELS_DIR = os.environ.get("SELVA_TEST_MODELS_DIR", "")
pytestmark = [
    pytest.mark.skipif(not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").is_file(),
                       reason="set COMFYUI_DIR to a ComfyUI checkout to run"),
    pytest.mark.timeout(2400),  # start-up, full-size weights and CPU inference are slow
]

STARTUP_TIMEOUT = 300
RUN_TIMEOUT = 900
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Comfy:
    def __init__(self, port: int, proc: subprocess.Popen, log: Path, base: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.proc, self.log, self.base = proc, log, base

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"POST {path} -> {e.code}: {e.read().decode()[:3000]}") from e

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def run(self, prompt: dict, timeout: float = RUN_TIMEOUT) -> dict:
        """Queue an API-format prompt and wait for its history entry."""
        prompt_id = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") == "error" or not entry["status"]["completed"]:
                    raise AssertionError(f"workflow failed: {json.dumps(entry['status'])[:4000]}\n"
                                         f"{self.log_tail()}")
                return entry
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited during the run:\n{self.log_tail()}")
            time.sleep(1.0)
        raise AssertionError(f"workflow did not finish in {timeout} s:\n{self.log_tail()}")


# Full-size random files from the manifest; the VAE roundtrip computes with the VAE and vocoder.
RANDOM_FILES = ("ext_weights/v1-16.pth", "ext_weights/best_netG.pt")


def _write_random_weights(models_dir: Path) -> None:
    """The VAE and vocoder of small_16k, full size, in the released layout."""
    from manifest import state_dict_for

    for rel in RANDOM_FILES:
        path = models_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        state = state_dict_for(rel, device="cpu")
        # realistic magnitudes: random N(0, 1) weights would blow up the conv stacks
        for t in _tensors(state):
            t.mul_(0.02)
        torch.save(state, path)
        del state


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    for sub in ("custom_nodes", "input", "output", "models", "user", "temp"):
        (base / sub).mkdir()
    (base / "custom_nodes" / "ComfyUI-SelVA").symlink_to(REPO_ROOT, target_is_directory=True)
    weights = tmp_path_factory.mktemp("selva_weights")
    _write_random_weights(weights)
    extra = base / "extra_model_paths.yaml"
    # the folder name "selva" as a user would write it; our pack must keep this path first
    folders = [str(weights)] + ([MODELS_DIR] if MODELS_DIR else [])
    extra.write_text("selva_test:\n    selva: |\n" + "".join(f"        {f}\n" for f in folders))
    port = _free_port()
    log = base / "comfyui.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("SELVA_MODELS_DIR", None)
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--extra-model-paths-config", str(extra),
           "--disable-auto-launch", "--database-url", "sqlite:///:memory:"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=COMFYUI_DIR, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
    server = Comfy(port, proc, log, base)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited at start-up:\n{server.log_tail()}")
            try:
                server.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"ComfyUI did not start in {STARTUP_TIMEOUT} s:\n{server.log_tail()}")
                time.sleep(1.0)
        server.weights = weights
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def object_info(comfy):
    return comfy.get("/object_info")


def _spec(info: dict, name: str):
    return info["input"].get("required", {}).get(name) or info["input"].get("optional", {}).get(name)


def to_api_prompt(workflow: dict, object_info: dict) -> dict:
    """The frontend's UI-to-API conversion for the node kinds our workflows use."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):  # muted / bypassed
            continue
        info = object_info[node["type"]]
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = iter(node.get("widgets_values") or [])
        inputs = {}
        for name in order:
            kind, *rest = _spec(info, name)
            opts = rest[0] if rest else {}
            widget = isinstance(kind, list) or kind in WIDGET_TYPES
            value = next(values) if widget else None
            if widget and opts.get("control_after_generate"):
                next(values)
            if name in linked:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
            elif widget:
                inputs[name] = value
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def _workflow(name: str) -> dict:
    return json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text())


def _set(prompt: dict, class_type: str, **values) -> None:
    for node in prompt.values():
        if node["class_type"] == class_type:
            node["inputs"].update(values)


def _saved_files(entry: dict, base: Path) -> list[Path]:
    files = []
    for out in entry["outputs"].values():
        for item in out.get("audio", []) + out.get("images", []):
            if item.get("type") == "output":
                files.append(base / "output" / item.get("subfolder", "") / item["filename"])
    return files


# ------------------------------------------------------------------------------------ tests
def test_object_info_lists_every_node(object_info):
    pack = load_pack()
    for node_id, display in pack.NODE_DISPLAY_NAME_MAPPINGS.items():
        assert node_id in object_info, f"{node_id} missing from /object_info"
        info = object_info[node_id]
        assert info["display_name"] == display and info["category"] == "SelVA"
        ours = pack.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
        for section in ("required", "optional"):
            assert list(info["input"].get(section, {})) == list(ours.get(section, {}))
    assert object_info["SelvaFeatureExtractor"]["input"]["required"]["video"][0] == "IMAGE,VIDEO"


def test_bundled_workflows_use_only_known_nodes(object_info):
    for path in sorted((REPO_ROOT / "workflows").glob("*.json")):
        workflow = json.loads(path.read_text())
        for node in workflow["nodes"]:
            if node["type"] not in FRONTEND_ONLY:
                assert node["type"] in object_info, f"{path.name}: {node['type']} is not installed"
        to_api_prompt(workflow, object_info)  # every widget value maps onto a real input


def test_vae_roundtrip_workflow_saves_audio(comfy, object_info):
    """The weights exist only in the extra_model_paths.yaml folder, so this also shows that the
    pack honours it."""
    cli = pack_module("selva.cli")
    t = torch.arange(22050) / 22050
    tone = torch.stack([0.3 * torch.sin(2 * torch.pi * 440 * t), 0.2 * torch.sin(2 * torch.pi * 660 * t)])
    cli.write_audio(comfy.base / "input" / "selva_test.wav", tone, 22050)
    prompt = to_api_prompt(_workflow("selva_vae_roundtrip"), object_info)
    _set(prompt, "LoadAudio", audio="selva_test.wav")
    _set(prompt, "SelvaModelLoader", precision="fp32")
    entry = comfy.run(prompt)
    saved = [p for p in _saved_files(entry, comfy.base) if "selva_roundtrip" in p.name]
    assert saved and saved[0].is_file(), json.dumps(entry["outputs"])[:2000]
    import av

    with av.open(str(saved[0])) as c:
        stream = c.streams.audio[0]
        assert stream.sample_rate == 16000 and stream.channels == 2
        samples = sum(f.samples for f in c.decode(stream))
    assert abs(samples - 16000) <= 1024


@pytest.mark.skipif(not MODELS_DIR, reason="set SELVA_TEST_MODELS_DIR to a complete models folder")
def test_generation_workflow_saves_audio(comfy, object_info):
    write_video(comfy.base / "input" / "selva_test.mp4", frames(2.0, seed=1), fps=25)
    prompt = to_api_prompt(_workflow("selva_basic_video_to_audio"), object_info)
    _set(prompt, "LoadVideo", file="selva_test.mp4")
    _set(prompt, "SelvaFeatureExtractor", duration=2.0)
    _set(prompt, "SelvaSampler", steps=4)
    entry = comfy.run(prompt)
    saved = [p for p in _saved_files(entry, comfy.base) if p.suffix == ".flac"]
    assert saved and saved[0].is_file()
