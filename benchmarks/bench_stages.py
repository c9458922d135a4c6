#!/usr/bin/env python3
"""Time every stage of a SelVA generation and its peak memory, and print a table.

    python benchmarks/bench_stages.py --variant small_16k --duration 8 --steps 25 --precision bf16
    python benchmarks/bench_stages.py --models-dir /path/to/models/selva   # real weights

With ``--models-dir`` the real weights are loaded; without it the same full-size architectures get
random weights, so timings and memory are those of the real model (the audio is noise). Stages: T5, CLIP text,
(CLIP frames with --clip-frames), TextSynchformer, sampling (steps x 1 batched generator pass for CFG),
VAE decode, vocoder. Peak memory is the accelerator's allocator peak during each stage on CUDA,
and the process's peak resident memory so far on the CPU (weights included).

Run from the repository root.
"""
from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selva.hooks import NO_HOOKS  # noqa: E402
from selva.loading import stage_dtypes  # noqa: E402
from selva.offload import OffloadManager, pick_device, resolve_dtype, resolve_offload  # noqa: E402
from selva.features import Features  # noqa: E402
from selva.encoding import PreparedInput, TextFeatures  # noqa: E402
from selva.pipeline import LoadOptions, SelvaPipeline  # noqa: E402
from selva.variants import VARIANTS, get_variant  # noqa: E402
from selva.video import prepare_frames  # noqa: E402


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Table:
    def __init__(self, device: torch.device):
        self.device = device
        self.rows: list[tuple[str, float, float]] = []

    @contextmanager
    def stage(self, name: str):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = rss_mib()
        self.rows.append((name, time.perf_counter() - t, peak))

    def print(self, title: str) -> None:
        mem = "peak VRAM MiB" if self.device.type == "cuda" else "peak RSS MiB"
        print(f"\n{title}\n{'stage':28s} {'seconds':>9s} {mem:>15s}")
        for name, sec, peak in self.rows:
            print(f"{name:28s} {sec:9.3f} {peak:15.1f}")
        print(f"{'total':28s} {sum(r[1] for r in self.rows):9.3f}")


# flan-t5-base and DFN5B-CLIP-ViT-H-14-384 hyperparameters (their config files), for random weights
FLAN_T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False)
DFN5B_CLIP = {"embed_dim": 1024, "quick_gelu": True,
              "vision_cfg": {"image_size": 378, "layers": 32, "width": 1280, "head_width": 80,
                             "patch_size": 14},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16,
                           "layers": 24}}


def _word_tokenizer():
    """A stand-in tokenizer for random T5 weights: the encoder's cost depends on the token count."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "a dog barking while bell rings".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)


def random_pipeline(options: LoadOptions) -> SelvaPipeline:
    """Full-size networks with random weights, registered like the real loader does."""
    from transformers import T5Config, T5EncoderModel

    from bigvgan.v1 import BIGVGAN_V1_16K, BigVGANv1
    from bigvgan.v2 import BIGVGAN_V2_44K_512X, BigVGANv2
    from selva.encoders.clip import ClipEncoder, _tokenizer, build_clip
    from selva.encoders.t5 import T5TextEncoder
    from selva.models.generator import SelvaGenerator
    from selva.models.mel import MelConverter
    from selva.models.text_synch import TextSynchformer
    from selva.models.vae import AudioVAE

    spec = get_variant(options.variant)
    device = pick_device(options.device)
    dtype = resolve_dtype(options.precision, device)
    mgr = OffloadManager(device=device, offload=resolve_offload(options.offload, device))
    dt = stage_dtypes(dtype)
    mgr.add("t5", T5TextEncoder(T5EncoderModel(T5Config(**FLAN_T5_BASE)), _word_tokenizer()), dt["t5"])
    clip = build_clip(DFN5B_CLIP)
    if not options.clip_frames:
        del clip.visual  # as the real loader: no image tower unless CLIP frames are used
    mgr.add("clip", ClipEncoder(clip, _tokenizer(77)), dt["clip"])
    mgr.add("text_synch", TextSynchformer(spec.text_synch), dt["text_synch"])
    mgr.add("generator", SelvaGenerator(spec.generator), dt["generator"])
    mgr.add("vae", AudioVAE(spec.vae, need_encoder=False).remove_weight_norm(), dt["vae"])
    if spec.vocoder == "bigvgan_v1":
        vocoder = BigVGANv1(spec.vocoder_config or BIGVGAN_V1_16K)
    else:
        vocoder = BigVGANv2(BIGVGAN_V2_44K_512X)
    mgr.add("vocoder", vocoder, dt["vocoder"])
    mgr.add("mel", MelConverter(spec.mel), dt["mel"])
    return SelvaPipeline(spec, options, mgr, dtype)


def run_stages(pipe: SelvaPipeline, prepared: PreparedInput, a: argparse.Namespace) -> Table:
    """One generation, stage by stage, into a new table."""
    table = Table(pipe.device)
    prompt = "a dog barking while a bell rings"
    with table.stage("T5"):
        with pipe.manager.use("t5") as t5:
            t5_f, t5_mask = t5.encode([prompt])
    with table.stage("CLIP text"):
        text_clip = pipe.encoding.encode_clip_text([prompt])
    text = TextFeatures(t5_f, t5_mask, text_clip)
    with table.stage("TextSynchformer"):
        sync = pipe.encoding.encode_sync(prepared.frames.sync_u8, None, 1.0, text, NO_HOOKS)
    clip_features = None
    if a.clip_frames:
        with table.stage("CLIP frames"):
            clip_features = pipe.encoding.encode_clip_frames(prepared.frames.clip_frames(), NO_HOOKS)
    feats = Features(variant=a.variant, prompt=prompt, duration=prepared.duration, fps=25.0,
                     text_t5=t5_f.float().cpu(), text_t5_mask=t5_mask.cpu(),
                     text_clip=text_clip.float().cpu(), sync_features=sync.float().cpu(),
                     sync_frames_u8=prepared.frames.sync_u8.permute(0, 2, 3, 1),
                     clip_features=None if clip_features is None else clip_features.float().cpu())
    with table.stage(f"sampling ({a.steps} steps)"):
        latent = pipe.sample_latent(feats, steps=a.steps, seed=0)
    with table.stage("VAE decode"):
        with pipe.manager.use("vae") as vae:
            mel = vae.decode(latent.to(pipe.device, pipe.stage_dtype("vae")).transpose(1, 2))
    with table.stage("vocoder"):
        with pipe.manager.use("vocoder") as vocoder:
            vocoder(mel.to(pipe.stage_dtype("vocoder")))
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="small_16k", choices=list(VARIANTS))
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--offload", default="keep_in_vram")
    ap.add_argument("--clip-frames", action="store_true")
    ap.add_argument("--models-dir", type=Path, default=None, help="real weights (else random)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the stages this many times; later passes are warm (kernels chosen, caches filled)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)

    options = LoadOptions(variant=a.variant, precision=a.precision, offload=a.offload, device=a.device,
                          models_dir=a.models_dir, clip_frames=a.clip_frames, allow_download=False)
    t = time.perf_counter()
    pipe = SelvaPipeline.load(options) if a.models_dir else random_pipeline(options)
    pipe.preload()  # stages load lazily: load them all here so the stage timings are compute only
    load_s = time.perf_counter() - t
    source = f"weights from {a.models_dir}" if a.models_dir else "random full-size weights"
    for run in range(1, a.repeat + 1):
        # a new video each pass: the pipeline keeps the last video's sync backbone tokens, and a
        # pass that reused them would not time the sync encoder
        frames = torch.randint(0, 256, (int(a.duration * 25), 360, 640, 3), dtype=torch.uint8)
        prepared = PreparedInput(prepare_frames(frames, fps=25.0, duration=a.duration))
        table = run_stages(pipe, prepared, a)
        table.print(f"SelVA {a.variant}, {a.duration:g} s, {a.steps} steps, {a.precision} on {pipe.device} "
                    f"({source}; built/loaded in {load_s:.1f} s), pass {run} of {a.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
