"""CLIP and T5 encoders (selva/encoders), checked against open_clip / transformers used as the
reference uses them, on tiny snapshots written to temporary folders in the real files' layout."""
from __future__ import annotations

import json
import shutil

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.transforms import Normalize
from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration, T5TokenizerFast

from comfyui_selva.selva.encoders import clip as C
from comfyui_selva.selva.encoders.clip import ClipEncoder
from comfyui_selva.selva.encoders.t5 import T5TextEncoder
from comfyui_selva.selva.errors import SelvaError

# The released snapshot's model_cfg (open_clip_config.json of apple/DFN5B-CLIP-ViT-H-14-384).
REAL_CLIP_CFG = {
    "embed_dim": 1024, "quick_gelu": True,
    "vision_cfg": {"image_size": 378, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
}
# Same layout and tokenizer (context 77, full vocabulary), tiny widths; 378 grid for 384 frames.
TINY_CLIP_CFG = {
    "embed_dim": 16, "quick_gelu": True,
    "vision_cfg": {"image_size": 378, "layers": 1, "width": 32, "head_width": 16, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PROMPTS = ["a dog barks twice", "rain on a tin roof, distant thunder"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread hand-offs would cost more than the work
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ CLIP
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    torch.manual_seed(1)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    with torch.no_grad():  # make the constant-initialised tensors informative
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias") or name == "logit_scale":
                p.add_(0.1 * torch.randn_like(p))
    (d / C.CONFIG_FILE).write_text(json.dumps({"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": {
        "mean": list(C.CLIP_MEAN), "std": list(C.CLIP_STD)}}))
    torch.save(model.state_dict(), d / C.WEIGHTS_FILE)
    return d


@pytest.fixture(scope="module")
def reference_clip(clip_dir):
    """The snapshot through open_clip's own loader, with the reference's patched encode_text."""
    model = open_clip.create_model(f"local-dir:{clip_dir}").eval()

    def patched_encode_text(text):
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(text).to(cast_dtype)
        x = x + model.positional_embedding.to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask)
        return F.normalize(model.ln_final(x), dim=-1)

    return model, patched_encode_text


def test_text_only_clip_has_no_image_tower_and_matches_reference(clip_dir, reference_clip):
    enc = ClipEncoder.from_pretrained(clip_dir)
    assert not enc.has_image_tower
    assert not any("visual" in n for n, _ in enc.named_parameters())
    assert all(not t.is_meta for t in list(enc.parameters()) + list(enc.buffers()))
    feats = enc.encode_text(PROMPTS)
    assert feats.shape == (2, 77, 32) and feats.dtype == torch.float32
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2, 77), atol=1e-5)
    model, patched = reference_clip
    tokens = open_clip.get_tokenizer("ViT-H-14-378-quickgelu")(PROMPTS)
    with torch.inference_mode():
        ref = patched(tokens)
    assert torch.equal(feats, ref)
    with pytest.raises(SelvaError, match="image tower"):
        enc.encode_frames(torch.rand(1, 2, 3, 384, 384))


def test_image_mode_matches_reference_for_any_batch_size(clip_dir, reference_clip):
    enc = ClipEncoder.from_pretrained(clip_dir, image=True)
    assert enc.has_image_tower
    frames = torch.rand(2, 3, 3, 384, 384)
    calls = []
    feats = enc.encode_frames(frames, batch_size=4, on_batch=lambda d, n: calls.append((d, n)))
    assert feats.shape == (2, 3, 16)
    assert calls == [(4, 6), (6, 6)]
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2, 3), atol=1e-5)
    model, _ = reference_clip
    norm = Normalize(mean=list(C.CLIP_MEAN), std=list(C.CLIP_STD))
    with torch.inference_mode():
        ref = model.encode_image(norm(frames).flatten(0, 1), normalize=True).unflatten(0, (2, 3))
    assert torch.allclose(feats, ref, atol=1e-6)
    for bs in (-1, 1, 5):
        assert torch.allclose(enc.encode_frames(frames, batch_size=bs), feats, atol=1e-6)
    with pytest.raises(SelvaError, match="384"):
        enc.encode_frames(torch.rand(1, 2, 3, 224, 224))


def test_clip_fp16_is_finite(clip_dir):
    enc = ClipEncoder.from_pretrained(clip_dir, image=True).to(torch.float16)
    assert torch.isfinite(enc.encode_text(PROMPTS)).all()
    assert torch.isfinite(enc.encode_frames(torch.rand(1, 2, 3, 384, 384, dtype=torch.float16))).all()


def _copy_with(tmp_path, src, edit):
    d = tmp_path / "snap"
    shutil.copytree(src, d)
    sd = torch.load(d / C.WEIGHTS_FILE, weights_only=True)
    edit(sd)
    torch.save(sd, d / C.WEIGHTS_FILE)
    return d


def test_clip_wrong_files_raise(clip_dir, tmp_path):
    bad = _copy_with(tmp_path, clip_dir, lambda sd: sd.__setitem__("ln_final.weight", torch.ones(31)))
    with pytest.raises(SelvaError, match=r"open_clip_pytorch_model\.bin.*wrong shape.*ln_final\.weight"):
        ClipEncoder.from_pretrained(bad)
    # a wrong image tensor is reported even when the image tower is not kept
    shutil.rmtree(bad)
    bad = _copy_with(tmp_path, clip_dir, lambda sd: sd.__setitem__("visual.proj", torch.ones(3, 3)))
    with pytest.raises(SelvaError, match=r"visual\.proj"):
        ClipEncoder.from_pretrained(bad)
    shutil.rmtree(bad)
    bad = _copy_with(tmp_path, clip_dir, lambda sd: sd.pop("positional_embedding"))
    with pytest.raises(SelvaError, match="missing.*positional_embedding"):
        ClipEncoder.from_pretrained(bad)
    shutil.rmtree(bad)
    bad = _copy_with(tmp_path, clip_dir, lambda sd: sd.__setitem__("text.extra", torch.ones(1)))
    with pytest.raises(SelvaError, match="unexpected"):
        ClipEncoder.from_pretrained(bad, image=True)
    (bad / C.WEIGHTS_FILE).write_bytes((clip_dir / C.WEIGHTS_FILE).read_bytes()[:5000])  # truncated
    with pytest.raises(SelvaError, match=r"open_clip_pytorch_model\.bin"):
        ClipEncoder.from_pretrained(bad)
    (bad / C.WEIGHTS_FILE).unlink()
    with pytest.raises(SelvaError, match=r"lacks open_clip_pytorch_model\.bin"):
        ClipEncoder.from_pretrained(bad)
    (bad / C.CONFIG_FILE).unlink()
    with pytest.raises(SelvaError, match=r"lacks open_clip_config\.json"):
        ClipEncoder.from_pretrained(bad)


def test_released_clip_architecture_on_meta():
    """The real config builds the 686-tensor, 986,714,881-element network of the released file,
    and the text-only load keeps only the text side."""
    model = C.build_clip(REAL_CLIP_CFG, device="meta")
    sd = model.state_dict()
    assert len(sd) == 686 and sum(v.numel() for v in sd.values()) == 986_714_881
    file_sd = {k: torch.empty(v.shape, device="meta") for k, v in sd.items()}
    C.load_clip_weights(model, file_sd, source="meta", image=False)
    assert not hasattr(model, "visual") or model.visual is None
    n_text = sum(p.numel() for p in model.parameters())
    assert n_text == sum(v.numel() for k, v in sd.items() if not k.startswith("visual."))
    assert model.attn_mask.device.type == "cpu" and model.attn_mask.shape == (77, 77)
    assert C._tokenizer(model.context_length)(["x"]).shape == (1, 77)


# -------------------------------------------------------------------------------------------- T5
WORDS = "a dog barks twice rain on tin roof distant thunder cat car engine".split()


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("t5")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0 - 0.1 * i) for i, w in enumerate(WORDS)]
    vocab += [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz,"]
    tok = T5TokenizerFast(vocab=vocab, extra_ids=4, model_max_length=512)
    tok.save_pretrained(str(d))
    cfg = T5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=1,
                   num_heads=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16)
    torch.manual_seed(2)
    T5ForConditionalGeneration(cfg).save_pretrained(str(d), safe_serialization=True)
    assert not (d / "spiece.model").exists()  # as the lead's snapshot: tokenizer.json only
    return d


def test_t5_matches_reference(t5_dir):
    enc = T5TextEncoder.from_pretrained(t5_dir)
    assert not any(n.startswith("model.decoder") for n, _ in enc.named_parameters())
    feats, mask = enc.encode(PROMPTS)
    ref_tok = T5TokenizerFast.from_pretrained(str(t5_dir))
    ref_model = T5EncoderModel.from_pretrained(str(t5_dir)).eval()
    batch = ref_tok(PROMPTS, max_length=ref_tok.model_max_length, padding=True, truncation=True,
                    return_tensors="pt")
    with torch.inference_mode():
        ref = ref_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    assert feats.shape == ref.shape and feats.shape[0] == 2 and feats.shape[2] == 16
    assert torch.equal(feats, ref)
    assert mask.dtype == torch.bool and torch.equal(mask, batch.attention_mask == 1)
    assert bool(mask[1].all()) and not bool(mask[0].all())  # the shorter prompt is padded
    assert int(mask[0].sum()) == 5  # "a dog barks twice" + </s>
    with pytest.raises(SelvaError, match="list"):
        enc.encode("a dog")


def _t5_copy(tmp_path, src, edit):
    d = tmp_path / "t5snap"
    shutil.copytree(src, d)
    sd = load_file(d / "model.safetensors")
    edit(sd)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    return d


def test_t5_wrong_files_raise(t5_dir, tmp_path):
    q = "encoder.block.0.layer.0.SelfAttention.q.weight"
    bad = _t5_copy(tmp_path, t5_dir, lambda sd: sd.__setitem__(q, torch.zeros(16, 8)))
    with pytest.raises(SelvaError, match=r"model\.safetensors.*wrong shape.*SelfAttention\.q\.weight"):
        T5TextEncoder.from_pretrained(bad)
    shutil.rmtree(bad)
    bad = _t5_copy(tmp_path, t5_dir, lambda sd: sd.pop("encoder.final_layer_norm.weight"))
    with pytest.raises(SelvaError, match=r"model\.safetensors.*final_layer_norm"):
        T5TextEncoder.from_pretrained(bad)
    shutil.rmtree(bad)
    bad = _t5_copy(tmp_path, t5_dir, lambda sd: sd.__setitem__("encoder.stray.weight", torch.zeros(2)))
    with pytest.raises(SelvaError, match=r"unexpected.*encoder\.stray\.weight"):
        T5TextEncoder.from_pretrained(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(SelvaError, match=r"lacks model\.safetensors"):
        T5TextEncoder.from_pretrained(bad)


def test_t5_tokenizes_exactly_as_its_tokenizer_json(t5_dir, tmp_path):
    """The file's pipeline is the spec (the reference's transformers reads it as is): a
    pre-tokenizer that adds no prefix space must not get one from the T5 tokenizer class."""
    from tokenizers import Tokenizer

    d = tmp_path / "t5never"
    shutil.copytree(t5_dir, d)
    spec = json.loads((d / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never",
                             "split": True}
    (d / "tokenizer.json").write_text(json.dumps(spec))
    enc = T5TextEncoder.from_pretrained(d)
    expected = Tokenizer.from_file(str(d / "tokenizer.json")).encode(PROMPTS[0]).ids
    assert enc.tokenizer(PROMPTS[0]).input_ids == expected
    with_prefix = Tokenizer.from_file(str(t5_dir / "tokenizer.json")).encode(PROMPTS[0]).ids
    assert expected != with_prefix  # the edit matters: "a" vs "\u2581a"
