"""The earlier pack's evaluator lists (its eval_*.json layout) and sweep summaries as adapters_file."""
from __future__ import annotations

import json

from comfyui_selva.selva.adapters.compare import BASELINE, read_adapter_list


def test_earlier_eval_list_keeps_its_id_labels(tmp_path):
    path = tmp_path / "eval_r128_candidates.json"
    path.write_text(json.dumps({
        "name": "eval_r128_candidates", "description": "top candidates", "data_dir": "/f",
        "output_dir": "/evals", "steps": 25, "seed": 42,
        "adapters": [{"id": "baseline", "description": "No LoRA"},
                     {"id": "lr_5e4_r128", "description": "best loss", "path": "/x/g1/adapter_final.pt"},
                     {"id": "step6000", "path": "/x/g2/adapter_step06000.pt"}]}))
    entries = read_adapter_list(str(path))
    assert [e.name for e in entries] == [BASELINE, "lr_5e4_r128", "step6000"]
    assert [str(e.path) for e in entries[1:]] == ["/x/g1/adapter_final.pt", "/x/g2/adapter_step06000.pt"]


def test_earlier_sweep_summary_as_adapters_file(tmp_path):
    path = tmp_path / "experiment_summary.json"
    path.write_text(json.dumps({
        "sweep_name": "tier1_sweep", "experiments": [
            {"id": "standard", "description": "", "config": {}, "results": {"status": "completed"},
             "adapter_path": str(tmp_path / "standard" / "adapter_final.pt"), "output_dir": "x"},
            {"id": "lora_plus_16", "results": {"status": "failed"}, "adapter_path": None},
            {"id": "curriculum", "results": {"status": "completed"},
             "adapter_path": str(tmp_path / "curriculum" / "adapter_final.pt")}]}))
    entries = read_adapter_list(str(path))
    assert [e.name for e in entries] == [BASELINE, "standard", "curriculum"]
    assert entries[2].path == tmp_path / "curriculum" / "adapter_final.pt"
