"""A real ComfyUI server for integration tests, driven over its HTTP API.

``start_server`` runs ComfyUI's ``main.py`` on the CPU, listening on 127.0.0.1 only, with a base
directory of the test's own: its ``custom_nodes/`` links this repository as ``ComfyUI-SelVA``
plus every test-only package under ``tests/comfy_custom_nodes/``, and an
``extra_model_paths.yaml`` registers the given model folders under ``selva`` (as a user would).
The ComfyUI checkout itself is never written to.

The session fixtures in ``conftest.py`` (``comfy``, ``object_info``) start one server for the
whole pytest session; see ``/work/coord/ci.md`` or the README's test section for how to use them.
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
from typing import Iterable, Optional

from comfy_pack import FRONTEND_ONLY, REPO_ROOT, WIDGET_TYPES

TEST_NODES_DIR = Path(__file__).resolve().parent / "comfy_custom_nodes"
PACK_FOLDER = "ComfyUI-SelVA"

STARTUP_TIMEOUT = 300
RUN_TIMEOUT = 900


class WorkflowError(AssertionError):
    """A prompt was refused or failed; ``status`` / ``error`` hold what ComfyUI said."""

    def __init__(self, message: str, status: Optional[dict] = None, error: Optional[dict] = None):
        super().__init__(message)
        self.status, self.error = status, error

    @property
    def messages(self) -> list[dict]:
        """The execution_error message(s) of a failed run (exception_message, node_type, ...)."""
        return [m[1] for m in (self.status or {}).get("messages", []) if m[0] == "execution_error"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A running ComfyUI: HTTP helpers, prompt runs, and its folders."""

    def __init__(self, port: int, proc: subprocess.Popen, log: Path, base: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc, self.log, self.base = proc, log, base

    # folders of the server's base directory
    @property
    def input_dir(self) -> Path:
        return self.base / "input"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    # ------------------------------------------------------------------------------ HTTP
    def get(self, path: str, timeout: float = 60):
        """GET a JSON route, e.g. ``/object_info`` or ``/history/<id>``."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def get_bytes(self, path: str, timeout: float = 60) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return r.read()

    def post(self, path: str, body: dict, timeout: float = 60):
        """POST JSON; an HTTP error raises WorkflowError with ComfyUI's answer (``.error``)."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                data = r.read()
                return json.loads(data) if data else None
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                err = json.loads(text)
            except ValueError:
                err = {"text": text}
            raise WorkflowError(f"POST {path} -> {e.code}: {text[:3000]}", error=err) from e

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    # --------------------------------------------------------------------------- prompts
    def queue(self, prompt: dict) -> str:
        """Queue an API-format prompt; returns its id. Refused prompts raise WorkflowError."""
        return self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = RUN_TIMEOUT) -> dict:
        """The prompt's history entry once it finished (successfully or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited during the run:\n{self.log_tail()}")
            time.sleep(0.5)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = RUN_TIMEOUT) -> dict:
        """Queue a prompt, wait, and return its history entry; a failed run raises WorkflowError."""
        entry = self.wait(self.queue(prompt), timeout)
        status = entry["status"]
        if status.get("status_str") == "error" or not status["completed"]:
            raise WorkflowError(f"workflow failed: {json.dumps(status)[:4000]}\n{self.log_tail()}",
                                status=status)
        return entry

    def run_error(self, prompt: dict, timeout: float = RUN_TIMEOUT) -> WorkflowError:
        """Run a prompt that must fail (refused or erroring); returns the WorkflowError."""
        try:
            self.run(prompt, timeout)
        except WorkflowError as e:
            return e
        raise AssertionError("the prompt ran to success, but it should have failed")

    def interrupt(self) -> None:
        self.post("/interrupt", {})

    def saved_files(self, entry: dict, kinds: Iterable[str] = ("audio", "images", "video",
                                                               "gifs")) -> list[Path]:
        """Files the prompt's output nodes saved to the output folder (``type == "output"``)."""
        files = []
        for out in entry["outputs"].values():
            for kind in kinds:
                for item in out.get(kind, []) or []:
                    if isinstance(item, dict) and item.get("type") == "output":
                        files.append(self.output_dir / item.get("subfolder", "") / item["filename"])
        return files

    def object_info(self) -> dict:
        return self.get("/object_info")

    # --------------------------------------------------------------------------- lifecycle
    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited at start-up:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=10)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"ComfyUI did not start in {timeout} s:\n{self.log_tail()}")
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def make_base_dir(base: Path, models_dirs: Iterable[Path],
                  custom_nodes: Iterable[Path] = ()) -> Path:
    """A ComfyUI base directory: the pack + test packages linked in, model folders registered.

    Returns the ``extra_model_paths.yaml`` written there.
    """
    for sub in ("custom_nodes", "input", "output", "models", "user", "temp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    nodes = base / "custom_nodes"
    (nodes / PACK_FOLDER).symlink_to(REPO_ROOT, target_is_directory=True)
    for package in custom_nodes:
        (nodes / package.name).symlink_to(package.resolve(), target_is_directory=True)
    extra = base / "extra_model_paths.yaml"
    # the folder name "selva" as a user would write it; our pack must keep these paths first
    extra.write_text("selva_test:\n    selva: |\n"
                     + "".join(f"        {Path(f)}\n" for f in models_dirs))
    return extra


def custom_node_packages() -> list[Path]:
    """Every test-only custom node package (a folder with an ``__init__.py``)."""
    if not TEST_NODES_DIR.is_dir():
        return []
    return sorted(p for p in TEST_NODES_DIR.iterdir() if (p / "__init__.py").is_file())


def start_server(comfyui_dir: Path, base: Path, models_dirs: Iterable[Path],
                 custom_nodes: Optional[Iterable[Path]] = None, extra_args: Iterable[str] = (),
                 env: Optional[dict] = None) -> ComfyServer:
    """Start ComfyUI (CPU, 127.0.0.1, a free port) and wait until it answers."""
    packages = custom_node_packages() if custom_nodes is None else list(custom_nodes)
    extra = make_base_dir(base, models_dirs, packages)
    port = free_port()
    log = base / "comfyui.log"
    run_env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
    run_env.pop("SELVA_MODELS_DIR", None)  # the models come from extra_model_paths.yaml only
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--extra-model-paths-config", str(extra),
           "--disable-auto-launch", "--database-url", "sqlite:///:memory:", *extra_args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=str(comfyui_dir), stdout=out, stderr=subprocess.STDOUT,
                                env=run_env, stdin=subprocess.DEVNULL)
    server = ComfyServer(port, proc, log, base)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


# ---------------------------------------------------------------------------- workflows
SAVED_WORKFLOWS_DIR = REPO_ROOT / "tests" / "data" / "saved_workflows"


def load_workflow(name_or_path) -> dict:
    """A UI-format workflow: a path, or a name (with or without .json) in ``workflows/``, else
    among the saved copies of older workflows (``tests/data/saved_workflows/``, which keeps the
    names the bundled workflows had before, e.g. ``selva_basic_video_to_audio``)."""
    path = Path(name_or_path)
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    file_name = path.name if path.name.endswith(".json") else f"{path.name}.json"
    for folder in (REPO_ROOT / "workflows", SAVED_WORKFLOWS_DIR):
        if (folder / file_name).is_file():
            return json.loads((folder / file_name).read_text(encoding="utf-8"))
    raise FileNotFoundError(f"no workflow {file_name} in workflows/ or {SAVED_WORKFLOWS_DIR}")


def _spec(info: dict, name: str):
    return info["input"].get("required", {}).get(name) or info["input"].get("optional", {}).get(name)


def to_api_prompt(workflow: dict, object_info: dict) -> dict:
    """The frontend's UI-to-API conversion for the node kinds our workflows use.

    Widget values map onto the node's widget inputs in the server's input order (plus the
    control value after a seed). The real frontend's ``app.graphToPrompt()`` is exercised by the
    browser test; this is the quick path for server-only tests.
    """
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):  # muted / bypassed
            continue
        info = object_info[node["type"]]
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", [])
                  if i.get("link") is not None}
        values = iter(node.get("widgets_values") or [])
        inputs = {}
        for name in order:
            kind, *rest = _spec(info, name)
            opts = rest[0] if rest else {}
            widget = isinstance(kind, list) or kind in WIDGET_TYPES
            value = next(values, None) if widget else None
            if widget and opts.get("control_after_generate"):
                next(values, None)
            if name in linked:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
            elif widget and value is not None:
                inputs[name] = value
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def nodes_of(prompt: dict, class_type: str) -> list[dict]:
    return [n for n in prompt.values() if n["class_type"] == class_type]


def set_inputs(prompt: dict, class_type: str, **values) -> None:
    """Set inputs on every node of ``class_type``; fails if the prompt has no such node."""
    found = nodes_of(prompt, class_type)
    assert found, f"the prompt has no {class_type} node"
    for node in found:
        node["inputs"].update(values)
