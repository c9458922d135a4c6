"""The node pack as ComfyUI sees it: registration, import hygiene, model folders, the loader."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from comfy_pack import REPO_ROOT, input_spec, load_pack, pack_module
from node_helpers import env_for_models, run_node

EXPECTED = {
    "SelvaModelLoader": "SelVA Model Loader",
    "SelvaFeatureExtractor": "SelVA Feature Extractor",
    "SelvaSampler": "SelVA Sampler",
    "SelvaVaeRoundtrip": "SelVA VAE Roundtrip",
    "SelvaHfSmoother": "SelVA HF Smoother",
    "SelvaSpectralMatcher": "SelVA Spectral Matcher",
    "SelvaHarmonicExciter": "SelVA Harmonic Exciter",
    "SelvaOutputNormalizer": "SelVA Output Normalizer",
    "SelvaLoraLoader": "SelVA LoRA Loader",
    "SelvaLoraEvaluator": "SelVA LoRA Evaluator",
    "SelvaLoraTrainer": "SelVA LoRA Trainer",
    "SelvaLoraScheduler": "SelVA LoRA Scheduler",
    "SelvaSkipExperiment": "SelVA Skip Experiment",
    "SelvaDatasetBrowser": "SelVA Dataset Browser",
    "SelvaDittoOptimizer": "SelVA DITTO Optimizer",
    "SelvaActivationSteeringExtractor": "SelVA Activation Steering Extractor",
    "SelvaActivationSteeringLoader": "SelVA Activation Steering Loader",
    "SelvaTextualInversionTrainer": "SelVA Textual Inversion Trainer",
    "SelvaTextualInversionLoader": "SelVA Textual Inversion Loader",
    "SelvaTiScheduler": "SelVA Textual Inversion Scheduler",
    "SelvaBigvganTrainer": "SelVA BigVGAN Trainer",
    "SelvaBigvganLoader": "SelVA BigVGAN Loader",
    "SelvaBigvganScheduler": "SelVA BigVGAN Scheduler",
    "SelvaMuxVideo": "SelVA Mux Video",
    "SelvaTextToAudio": "SelVA Text to Audio",
    "SelvaDatasetFromFolder": "SelVA Dataset From Folder",
    "SelvaDatasetReport": "SelVA Dataset Report",
    "SelvaDatasetLoader": "SelVA Dataset Loader",
    "SelvaDatasetResampler": "SelVA Dataset Resampler",
    "SelvaDatasetLUFSNormalizer": "SelVA Dataset LUFS Normalizer",
    "SelvaDatasetCompressor": "SelVA Dataset Compressor",
    "SelvaDatasetInspector": "SelVA Dataset Inspector",
    "SelvaDatasetSpectralMatcher": "SelVA Dataset Spectral Matcher",
    "SelvaDatasetHfSmoother": "SelVA Dataset HF Smoother",
    "SelvaDatasetAugmenter": "SelVA Dataset Augmenter",
    "SelvaDatasetItemExtractor": "SelVA Dataset Item Extractor",
    "SelvaDatasetSaver": "SelVA Dataset Saver",
    "SelvaBatchGenerate": "SelVA Batch Generate",
}


def test_every_node_is_registered_with_its_display_name():
    pack = load_pack()
    assert pack.NODE_DISPLAY_NAME_MAPPINGS == EXPECTED
    assert set(pack.NODE_CLASS_MAPPINGS) == set(EXPECTED)


@pytest.mark.parametrize("node_id", sorted(EXPECTED))
def test_node_definition_is_complete(node_id):
    cls = load_pack().NODE_CLASS_MAPPINGS[node_id]
    assert cls.CATEGORY == "SelVA"
    assert callable(getattr(cls, cls.FUNCTION))
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    assert all(isinstance(t, str) and t for t in cls.OUTPUT_TOOLTIPS)
    spec = input_spec(cls)
    assert spec, "a node without inputs"
    for name, value in spec.items():
        assert len(value) == 2 and value[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    # ComfyUI calls FUNCTION with keyword arguments named like the inputs
    import inspect

    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    named = set(params) - {"self"}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        # training settings arrive as **settings: exactly the node's listed settings
        var = next(n for n, p in params.items() if p.kind is inspect.Parameter.VAR_KEYWORD)
        named.discard(var)
        assert set(spec) == named | set(cls.REQUIRED) | set(cls.OPTIONAL)
        assert not named & (set(cls.REQUIRED) | set(cls.OPTIONAL))
    else:
        assert set(spec) == named
    required = cls.INPUT_TYPES()["required"]
    for name, p in params.items():
        if name != "self" and name not in required and p.kind is not inspect.Parameter.VAR_KEYWORD:
            assert p.default is not inspect.Parameter.empty, f"optional {name} needs a default"


def test_input_names_match_the_spec():
    classes = load_pack().NODE_CLASS_MAPPINGS
    names = {k: list(input_spec(v)) for k, v in classes.items()}
    assert names["SelvaModelLoader"][:3] == ["variant", "precision", "offload_strategy"]
    assert set(names["SelvaFeatureExtractor"]) == {
        "model", "video", "prompt", "video_info", "fps", "duration", "cache_dir", "mask",
        "mask_strength", "mask_clip", "mask_sync", "name", "audio", "start"}
    # inputs added later go last (saved workflows store widget values by position)
    assert list(classes["SelvaFeatureExtractor"].INPUT_TYPES()["optional"])[-3:] == ["name", "audio", "start"]
    assert set(names["SelvaSampler"]) == {
        "model", "features", "prompt", "negative_prompt", "duration", "steps", "cfg_strength",
        "seed", "normalize", "target_lufs", "batch_size", "steering_vectors", "steering_strength",
        "steering_blocks", "textual_inversion", "ti_strength", "window_seconds", "overlap_seconds",
        "init_audio", "denoise", "regenerate_start", "regenerate_end"}
    assert list(classes["SelvaSampler"].INPUT_TYPES()["optional"])[-6:] == [
        "window_seconds", "overlap_seconds", "init_audio", "denoise", "regenerate_start", "regenerate_end"]
    assert list(classes["SelvaTextToAudio"].INPUT_TYPES()["required"]) == [
        "model", "prompt", "negative_prompt", "duration", "steps", "cfg_strength", "seed", "batch_size"]
    optional = list(classes["SelvaSampler"].INPUT_TYPES()["optional"])
    assert optional[optional.index("steering_vectors"):optional.index("steering_vectors") + 5] == [
        "steering_vectors", "steering_strength", "steering_blocks", "textual_inversion", "ti_strength"]
    assert list(classes["SelvaDittoOptimizer"].INPUT_TYPES()["required"]) == [
        "model", "features", "prompt", "negative_prompt", "reference_dir", "n_opt_steps", "opt_lr",
        "n_ode_steps", "n_grad_steps", "style_weight", "steps", "cfg_strength", "seed"]
    assert classes["SelvaSampler"].RETURN_TYPES == ("AUDIO",)
    assert classes["SelvaVaeRoundtrip"].RETURN_NAMES == ("audio_reconstructed",)
    assert classes["SelvaFeatureExtractor"].RETURN_NAMES == ("features", "fps", "prompt")
    video_type = classes["SelvaFeatureExtractor"].INPUT_TYPES()["required"]["video"][0]
    assert set(video_type.split(",")) == {"IMAGE", "VIDEO"}
    defaults = {k: v[1].get("default") for k, v in input_spec(classes["SelvaSampler"]).items()}
    assert defaults["steps"] == 25 and defaults["cfg_strength"] == 4.5
    assert defaults["normalize"] is True and defaults["target_lufs"] == -27.0
    assert defaults["batch_size"] == 1
    loader = input_spec(classes["SelvaModelLoader"])
    assert {"small_16k", "small_44k", "medium_44k", "large_44k"} <= set(loader["variant"][0])
    assert list(loader["precision"][0]) == ["auto", "bf16", "fp16", "fp32"]
    assert list(loader["offload_strategy"][0]) == ["auto", "keep_in_vram", "offload_to_cpu"]


def test_pack_imports_like_comfyui_quietly_and_cheaply(tmp_path):
    """In a clean interpreter: ComfyUI's own top-level ``nodes`` module exists, the module name is
    a path, nothing is printed, heavy libraries stay unloaded and the root logger is untouched."""
    script = textwrap.dedent(f"""
        import importlib.util, json, logging, sys, types
        sys.modules["nodes"] = types.ModuleType("nodes")  # ComfyUI's own nodes.py
        root = logging.getLogger()
        before = (root.level, list(root.handlers))
        name = {str(REPO_ROOT)!r}.replace(".", "_x_")
        spec = importlib.util.spec_from_file_location(name, {str(REPO_ROOT / "__init__.py")!r},
            submodule_search_locations=[{str(REPO_ROOT)!r}])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        heavy = sorted(m for m in ("torch", "transformers", "open_clip", "av") if m in sys.modules)
        print(json.dumps({{"nodes": sorted(module.NODE_CLASS_MAPPINGS), "heavy": heavy,
                           "root_same": before == (root.level, list(root.handlers))}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, f"the pack printed something: {out.stdout!r}"
    got = json.loads(lines[0])
    assert got["nodes"] == sorted(EXPECTED)
    assert got["heavy"] == []
    assert got["root_same"]


# ------------------------------------------------------------------------------ model folders
def _fake_folder_paths(tmp_path, existing=None):
    table = {} if existing is None else dict(existing)
    fp = SimpleNamespace(models_dir=str(tmp_path / "models"), folder_names_and_paths=table)
    fp.get_folder_paths = lambda name: list(table[name][0])
    return fp


def test_models_folder_is_registered_with_explicit_extensions(tmp_path):
    compat = pack_module("nodes.comfy_compat")
    fp = _fake_folder_paths(tmp_path)
    compat.register_models_folder(fp)
    paths, exts = fp.folder_names_and_paths["selva"]
    assert paths == [str(tmp_path / "models" / "selva")]
    assert {".pth", ".pt", ".bin", ".safetensors", ".json"} <= set(exts)
    compat.register_models_folder(fp)  # idempotent
    assert fp.folder_names_and_paths["selva"][0] == paths


def test_extra_model_paths_entries_stay_first(tmp_path):
    compat = pack_module("nodes.comfy_compat")
    # what extra_model_paths.yaml leaves behind: the folder known, no extensions
    fp = _fake_folder_paths(tmp_path, {"selva": (["/big/disk/selva"], set())})
    compat.register_models_folder(fp)
    paths, exts = fp.folder_names_and_paths["selva"]
    assert paths == ["/big/disk/selva", str(tmp_path / "models" / "selva")]
    assert ".pth" in exts


def test_models_dir_is_the_folder_holding_the_weights(tmp_path):
    compat = pack_module("nodes.comfy_compat")
    a, b = tmp_path / "a", tmp_path / "b"
    (b / "weights").mkdir(parents=True)
    (b / "weights" / "x.pth").write_bytes(b"0")
    assert compat.pick_models_dir(["weights/x.pth", "weights/y.pth"], [a, b]) == b
    assert compat.pick_models_dir(["weights/z.pth"], [a, b]) == a  # none anywhere: first = download target


# ---------------------------------------------------------------------------------- loader
@pytest.fixture()
def loader_env(monkeypatch, models_dir):
    env_for_models(monkeypatch, models_dir)
    loader = pack_module("nodes.loader")
    loader.clear_cache()
    yield loader
    loader.clear_cache()


def test_loader_builds_the_pipeline_and_reuses_it(loader_env):
    (model,) = run_node("SelvaModelLoader", variant="tiny_16k", precision="fp32",
                        offload_strategy="auto")
    assert model.sample_rate == 16000 and model.variant.name == "tiny_16k"
    assert model.options.precision == "fp32"
    (again,) = run_node("SelvaModelLoader", variant="tiny_16k", precision="fp32",
                        offload_strategy="auto")
    assert again is model
    (other,) = run_node("SelvaModelLoader", variant="tiny_16k", precision="bf16",
                        offload_strategy="offload_to_cpu")
    assert other is not model and other.options.precision == "bf16"


def test_loader_reports_missing_weights_without_downloading(loader_env, tmp_path, monkeypatch):
    monkeypatch.setenv("SELVA_MODELS_DIR", str(tmp_path / "empty"))
    errors = pack_module("selva.errors")
    # networks load on first use, so the loader itself succeeds (the VAE round trip, say, needs
    # only the VAE and vocoder files); the first stage that needs a missing file lists them all
    (model,) = run_node("SelvaModelLoader", variant="tiny_16k", precision="fp32", offload_strategy="auto")
    with pytest.raises(errors.SelvaError) as info:
        model.preload(("generator",))
    msg = str(info.value)
    assert "generator_small_16k_sup_5.pth" in msg and "huggingface.co" in msg
    assert str(tmp_path / "empty") in msg


def test_loader_logs_through_its_own_logger(loader_env, caplog):
    with caplog.at_level(logging.INFO):
        run_node("SelvaModelLoader", variant="tiny_16k", precision="fp32", offload_strategy="auto")
    assert any(r.name.endswith("nodes.loader") for r in caplog.records)


def test_loaded_modules_are_inference_ready(loader_env):
    (model,) = run_node("SelvaModelLoader", variant="tiny_16k", precision="fp32",
                        offload_strategy="keep_in_vram")
    gen = model.manager.get("generator")
    assert not gen.training
    assert all(not p.requires_grad for p in gen.parameters())
    assert all(p.device.type == "cpu" for p in gen.parameters())
    assert next(gen.parameters()).dtype == torch.float32


def test_folder_inputs_rerun_when_the_folder_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("SELVA_OUTPUT_DIR", str(tmp_path))
    (tmp_path / "clips").mkdir()
    pack = load_pack()
    loader = pack.NODE_CLASS_MAPPINGS["SelvaDatasetLoader"]
    from_folder = pack.NODE_CLASS_MAPPINGS["SelvaDatasetFromFolder"]
    before = loader.IS_CHANGED(folder="clips")
    assert loader.IS_CHANGED(folder="clips") == before
    (tmp_path / "clips" / "a.wav").write_bytes(b"RIFF")
    assert loader.IS_CHANGED(folder="clips") != before
    pair = from_folder.IS_CHANGED(videos_dir="clips", out_dir="data")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.json").write_text("{}")
    assert from_folder.IS_CHANGED(videos_dir="clips", out_dir="data") != pair
