"""SelVA Batch Generate in a real ComfyUI (its bundled template), with Cancel and a re-queue.

Skipped unless ``COMFYUI_DIR`` points at a ComfyUI checkout (see tests/test_comfyui_integration.py).
"""
from __future__ import annotations

import json
import time

import pytest

from comfy_server import load_workflow, set_inputs, to_api_prompt
from node_helpers import frames, write_video

pytestmark = pytest.mark.timeout(1200)


def _prompt(comfy, object_info, folder: str, out: str, steps: int) -> dict:
    prompt = to_api_prompt(load_workflow("SelVA Batch Generate"), object_info)
    set_inputs(prompt, "SelvaModelLoader", variant="tiny_16k", precision="fp32")
    set_inputs(prompt, "SelvaBatchGenerate", folder=folder, steps=steps, duration=0.0, output_folder=out,
               format="wav")
    # "prompt" is set_inputs' own first parameter: set the node's prompt input directly
    for node in prompt.values():
        if node["class_type"] == "SelvaBatchGenerate":
            node["inputs"]["prompt"] = "rain on a roof"
    return prompt


def _results(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_template_writes_every_row_and_previews_the_first(comfy, object_info):
    folder = comfy.input_dir / "selva_batch_clips"
    (folder / "more").mkdir(parents=True, exist_ok=True)
    write_video(folder / "one.mp4", frames(1.0, seed=1), fps=25)
    write_video(folder / "more" / "two.mp4", frames(1.0, seed=2), fps=25)
    (folder / "readme.txt").write_text("ignored")
    entry = comfy.run(_prompt(comfy, object_info, "selva_batch_clips", "selva_batch_test", steps=1))
    out = comfy.output_dir / "selva_batch_test"
    rows = _results(out / "results.jsonl")
    assert [(r["name"], r["status"]) for r in rows] == [("two", "done"), ("one", "done")]  # more/two.mp4 sorts first
    assert sorted(p.name for p in out.iterdir()) == ["one.wav", "results.jsonl", "two.wav"]
    previews = [item for o in entry["outputs"].values() for item in o.get("audio", [])]
    assert previews, json.dumps(entry["outputs"])[:2000]  # Preview Audio got the first row's AUDIO


def test_cancel_keeps_finished_rows_and_a_requeue_continues(comfy, object_info):
    folder = comfy.input_dir / "selva_batch_cancel"
    folder.mkdir(parents=True, exist_ok=True)
    count = 12  # enough that the interrupt lands while rows remain, even on a loaded machine
    for i in range(count):
        write_video(folder / f"clip{i}.mp4", frames(1.0, seed=10 + i), fps=25)
    out = comfy.output_dir / "selva_batch_cancel_out"
    prompt = _prompt(comfy, object_info, str(folder), "selva_batch_cancel_out", steps=60)  # absolute folder
    prompt_id = comfy.queue(prompt)
    deadline = time.monotonic() + 600
    while not list(out.glob("*.wav")) and time.monotonic() < deadline:
        time.sleep(0.05)
    comfy.interrupt()
    entry = comfy.wait(prompt_id)
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]), entry["status"]
    finished = sorted(p.name for p in out.glob("*.wav"))
    assert 1 <= len(finished) < count, "the interrupt should land while rows remain"
    assert not list(out.glob(".*")), "no half-written file is left behind"
    rows = _results(out / "results.jsonl")
    assert [r["name"] + ".wav" for r in rows if r["status"] == "done"] == finished
    comfy.run(prompt)  # queued again: the finished rows are skipped, the rest made
    rows = _results(out / "results.jsonl")
    assert [r["status"] for r in rows] == ["skipped"] * len(finished) + ["done"] * (count - len(finished))
    assert len(list(out.glob("*.wav"))) == count
