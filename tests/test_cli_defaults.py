"""`python -m selva generate` starts from the same values as the Feature Extractor and Sampler nodes."""
from __future__ import annotations

from comfy_pack import pack_module


def _node_defaults(node_cls) -> dict:
    spec = node_cls.INPUT_TYPES()
    return {name: opts[1].get("default") for group in ("required", "optional")
            for name, opts in spec.get(group, {}).items() if len(opts) > 1 and isinstance(opts[1], dict)}


def test_generate_defaults_are_the_nodes_defaults():
    cli = pack_module("selva.cli")
    nodes = pack_module("nodes")
    args = cli.build_parser().parse_args(["generate", "--video", "in.mp4", "--prompt", "dog", "--out", "o.wav"])
    sampler = _node_defaults(nodes.NODE_CLASS_MAPPINGS["SelvaSampler"])
    features = _node_defaults(nodes.NODE_CLASS_MAPPINGS["SelvaFeatureExtractor"])
    pairs = {"seed": (args.seed, sampler["seed"]), "steps": (args.steps, sampler["steps"]),
             "cfg": (args.cfg, sampler["cfg_strength"]), "batch_size": (args.batch_size, sampler["batch_size"]),
             "target_lufs": (args.target_lufs, sampler["target_lufs"]),
             "normalize": (not args.no_normalize, sampler["normalize"]),
             "window_seconds": (args.window_seconds, sampler["window_seconds"]),
             "overlap_seconds": (args.overlap_seconds, sampler["overlap_seconds"]),
             "duration": (8.0 if args.duration is None else args.duration, features["duration"]), "start": (args.start, features["start"]),
             "mask_strength": (args.mask_strength, features["mask_strength"]),
             "mask_clip": (not args.no_mask_clip, features["mask_clip"]),
             "mask_sync": (not args.no_mask_sync, features["mask_sync"])}
    # generate leaves --duration unset so text to audio can require it; with a video it means 8 s
    differ = {k: v for k, v in pairs.items() if v[0] != v[1]}
    assert not differ, f"CLI default vs node default: {differ}"
