"""Full-size random weights of a released variant, in the released layout, written once per machine.

Real weights cannot be downloaded in tests, yet the integration tests must load real-size networks
through the product's own code (strict key/shape checks, memory-mapped loading, the T5 / CLIP
snapshot readers). ``full_models_dir("small_16k")`` returns a models folder holding every file the
variant reads: the checkpoint files from ``tests/data/checkpoint_manifest.json`` (keys, shapes and
nesting of the released files) and the Hugging Face snapshots (flan-T5-base, DFN5B CLIP) built from
their public architectures. (Variants that need the BigVGAN v2 snapshot are not supported yet.)

The folder lives in a cache (``$SELVA_TEST_CACHE``, else ``~/.cache/selva-tests``) under a name
keyed by a digest of the manifest, ``FORMAT_VERSION`` and the variant, so it is rebuilt only when
one of them changes (older folders are not deleted: remove them by hand). It is written into a temporary sibling folder and renamed into place when complete,
under a file lock: a killed run never leaves a half-written folder that a later run would trust.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from manifest import MANIFEST_PATH, file_entry
from tiny import write_t5_tokenizer

from comfyui_selva.selva import variants as V
from comfyui_selva.selva.loading import required_files, required_snapshots

# Random values with the magnitudes of trained networks (N(0, 1) weights blow up deep stacks).
WEIGHT_SCALE = 0.02
SEED = 20240

# google/flan-t5-base's config.json (the architecture; the vocabulary is a small test one).
FLAN_T5_BASE = dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12,
                    num_heads=12, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                    relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
                    tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
                    eos_token_id=1, vocab_size=32128)
# apple/DFN5B-CLIP-ViT-H-14-384's open_clip_config.json.
DFN5B_CLIP = {
    "model_cfg": {
        "embed_dim": 1024, "quick_gelu": True,
        "vision_cfg": {"image_size": 378, "layers": 32, "width": 1280, "head_width": 80,
                       "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16,
                     "layers": 24},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                       "std": [0.26862954, 0.26130258, 0.27577711],
                       "interpolation": "bicubic", "resize_mode": "squash"},
}


def cache_root() -> Path:
    env = os.environ.get("SELVA_TEST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "selva-tests"


# Bump when the files written here change (their values, layout or snapshots).
FORMAT_VERSION = 1


def cache_key(variant: str) -> str:
    h = hashlib.sha256()
    h.update(MANIFEST_PATH.read_bytes())
    h.update(f"{FORMAT_VERSION}:{WEIGHT_SCALE}:{SEED}:{variant}".encode())
    return h.hexdigest()[:16]


def full_models_dir(variant: str = "small_16k") -> Path:
    """The cached folder of ``variant``'s full-size random weights, written first if absent."""
    root = cache_root()
    final = root / f"full-{variant}-{cache_key(variant)}"
    if (final / ".complete").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".lock-{variant}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be writing the same folder
        if (final / ".complete").is_file():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{variant}-", dir=root))
        try:
            started = time.monotonic()
            write_variant(tmp, variant)
            (tmp / ".complete").write_text(f"written in {time.monotonic() - started:.0f} s\n")
            os.chmod(tmp, 0o755)  # mkdtemp made it private; the cache is shared like ~/.cache
            if final.exists():  # a stale, incomplete folder from an older scheme
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    # Folders of older keys are left alone: another checkout may still be using them.
    return final


# ----------------------------------------------------------------------------- writers
def write_variant(models_dir: Path, variant: str) -> None:
    spec = V.get_variant(variant)
    for wf in required_files(spec):
        write_checkpoint(models_dir / wf.path, wf.path)
    for snap in required_snapshots(spec):
        target = models_dir / "hf" / snap.local_name
        writers = {"t5": write_flan_t5, "clip": write_dfn5b_clip}
        if snap.key not in writers:  # the 44.1 kHz BigVGAN v2 snapshot needs its release config
            raise NotImplementedError(f"no full-size writer for the {snap.repo_id} snapshot "
                                      f"({variant}); use small_16k or a tiny variant")
        writers[snap.key](target)


def _fill(key: str, shape: list[int], g: torch.Generator) -> torch.Tensor:
    """A random tensor whose magnitude suits what the named parameter does."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf.endswith("_std"):  # normalisation statistics: positive, about 1
        return torch.empty(shape).uniform_(0.5, 1.5, generator=g)
    if leaf.endswith("_mean"):
        return torch.randn(shape, generator=g) * 0.1
    if leaf == "weight_g":  # weight-norm magnitude per output channel, as a default init has
        return torch.empty(shape).uniform_(0.3, 0.7, generator=g)
    if leaf == "filter":  # anti-aliasing low-pass kernel: positive taps summing to 1
        t = torch.rand(shape, generator=g) + 0.1
        return t / t.sum(dim=-1, keepdim=True)
    if leaf in ("alpha", "beta"):  # Snake activations store log-scale parameters: about 0
        return torch.randn(shape, generator=g) * WEIGHT_SCALE
    if leaf == "weight" and len(shape) == 1 and "norm" in key:  # norm gains: about 1
        return 1.0 + torch.randn(shape, generator=g) * WEIGHT_SCALE
    return torch.randn(shape, generator=g) * WEIGHT_SCALE


def write_checkpoint(path: Path, rel: str) -> None:
    """One released checkpoint file (``torch.save`` of a state dict, nested as released)."""
    entry = file_entry(rel)
    nested = entry["structure"]["type"] == "dict"
    g = torch.Generator().manual_seed(SEED)
    state: dict = {}
    for key, shape, dtype in entry["tensors"]:
        t = _fill(key, shape, g).to(getattr(torch, dtype))
        if nested:
            top, inner = key.split("/", 1)
            state.setdefault(top, {})[inner] = t
        else:
            state[key] = t
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def write_flan_t5(directory: Path) -> None:
    """google/flan-t5-base's architecture (encoder and decoder) with a small test tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    vocab = write_t5_tokenizer(directory)
    assert vocab <= FLAN_T5_BASE["vocab_size"]
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(T5Config(**FLAN_T5_BASE))
    model.save_pretrained(directory, safe_serialization=True)


def write_dfn5b_clip(directory: Path) -> None:
    """DFN5B CLIP ViT-H/14 (both towers, as released) with open_clip's own initialisation."""
    import open_clip

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(json.dumps(DFN5B_CLIP, indent=2))
    torch.manual_seed(SEED)
    model = open_clip.CLIP(**DFN5B_CLIP["model_cfg"])
    torch.save(model.state_dict(), directory / "open_clip_pytorch_model.bin")
