"""The CLAP score: front end against hand computations, length fitting, scoring, strict loading."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.evaluation import clap as C
from eval_helpers import tiny_clap_arch, tiny_clap_checkpoint, write_tiny_clap


# ------------------------------------------------------------------------------ front end
def _slaney_hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    linear = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, linear)


def _slaney_mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * 200.0 / 3)


def _hand_filterbank():
    """librosa.filters.mel(sr=48000, n_fft=1024, n_mels=64, fmin=50, fmax=14000), written out."""
    freqs = np.linspace(0, 24000, 513)
    edges = _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(50.0), _slaney_hz_to_mel(14000.0), 66))
    bank = np.zeros((513, 64))
    for m in range(64):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        bank[:, m] = np.maximum(0, np.minimum(up, down)) * 2.0 / (hi - lo)
    return bank


def test_log_mel_matches_a_hand_dft_and_mel_filterbank():
    g = torch.Generator().manual_seed(0)
    n = 4800
    t = torch.arange(n) / 48000
    wave = 0.3 * torch.sin(2 * math.pi * 997 * t) + 0.05 * torch.randn(n, generator=g)
    got = C.log_mel(wave[None])[0, 0].double().numpy()  # (frames, 64)

    x = np.pad(wave.double().numpy(), 512, mode="reflect")  # centred frames
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)  # periodic Hann
    k = np.arange(513)[:, None] * np.arange(1024)[None, :]
    cos, sin = np.cos(2 * np.pi * k / 1024), np.sin(2 * np.pi * k / 1024)
    frames = np.stack([x[i * 480:i * 480 + 1024] * window for i in range(n // 480 + 1)])
    power = (frames @ cos.T) ** 2 + (frames @ sin.T) ** 2
    want = 10 * np.log10(np.maximum(power @ _hand_filterbank(), 1e-10))
    assert got.shape == want.shape == (11, 64)
    assert np.abs(got - want).max() < 2e-3  # dB, float32 against float64
    bank = _hand_filterbank()
    assert np.abs(C.mel_filterbank().double().numpy() - bank).max() < 1e-5 * bank.max()  # float32


def test_mel_floor_is_amin_and_ref_one():
    silent = C.log_mel(torch.zeros(1, 9600))
    assert torch.all(silent == -100.0)  # 10 * log10(1e-10), no top_db clipping


# ----------------------------------------------------------------------------- length fitting
def test_short_clips_are_repeated_whole_then_zero_padded():
    out = C.fit_length(torch.tensor([1.0, 2.0, 3.0]), samples=8)
    assert out.tolist() == [1, 2, 3, 1, 2, 3, 0, 0]
    exact = torch.arange(8.0)
    assert torch.equal(C.fit_length(exact, samples=8), exact)


def test_long_clips_get_a_seeded_window():
    wave = torch.arange(30.0)
    a, b = C.fit_length(wave, samples=8), C.fit_length(wave, samples=8)
    assert torch.equal(a, b) and a.shape == (8,)
    start = C.crop_start(30, 8, 0)
    assert torch.equal(a, wave[start:start + 8])
    starts = {C.crop_start(30, 8, seed) for seed in range(40)}
    assert len(starts) > 5 and min(starts) >= 0 and max(starts) <= 22  # any of the 23 windows


def test_empty_clip_is_a_clear_error():
    with pytest.raises(SelvaError, match="CLAP got an empty clip"):
        C.fit_length(torch.zeros(0))


def test_prepare_audio_is_mono_without_dc_at_48k_cut_to_duration():
    t = torch.arange(16000) / 16000
    left = torch.sin(2 * math.pi * 440 * t) + 0.5
    stereo = torch.stack([left, left * 0.0 + 0.5])
    out = C.prepare_audio(stereo, 16000, 0.5)
    assert out.shape == (24000,)
    full = C.prepare_audio(stereo, 16000, 1.0)
    assert abs(float(full.mean())) < 1e-3  # the DC of both channels removed
    assert float(full.abs().max()) == pytest.approx(0.5, abs=0.02)  # (sin + 0) / 2, resampled


# --------------------------------------------------------------------------------- scoring
def test_scores_are_cosines_of_paired_embeddings():
    audio = torch.tensor([[1.0, 0.0], [2.0, 2.0], [0.0, -3.0]])
    text = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    assert C.clap_scores(audio, text).tolist() == pytest.approx([0.0, 1.0, -1.0])


# -------------------------------------------------------------------------------- loading
def test_the_full_released_layout_loads_strictly():
    layout = C.released_layout()
    assert len(layout) == 505 and layout["audio_branch.layers.2.blocks.0.attn.qkv.weight"] == (1536, 512)
    state = {"module." + k: torch.empty(s, device="meta") for k, s in layout.items()}
    with torch.device("meta"):  # strict: a tensor left over or missing on either side raises
        C.build_clap({"epoch": 15, "state_dict": state}, source="full.pt")


@pytest.mark.parametrize("change, expect", [
    ("drop", "missing audio_model.audio_encoder.layers.0.blocks.0.attention.self.query.weight"),
    ("extra", "has 1 tensor\\(s\\) a LAION-CLAP HTSAT-base checkpoint does not have: audio_branch.fusion_model.w"),
    ("shape", "tensor\\(s\\) of another size, e.g. text_projection.linear1.weight \\(8, 8\\) \\(model \\(8, 16\\)\\)"),
    ("front_end", "audio_branch.logmel_extractor.melW has shape \\(513, 128\\), expected \\(513, 64\\)"),
    ("not_a_dict", "is not a LAION-CLAP checkpoint \\(expected a state dict, found list\\)"),
])
def test_strict_loading_names_what_does_not_fit(change, expect):
    ck = tiny_clap_checkpoint()
    sd = ck["state_dict"]
    if change == "drop":
        del sd["module.audio_branch.layers.0.blocks.0.attn.qkv.weight"]
    elif change == "extra":
        sd["module.audio_branch.fusion_model.w"] = torch.zeros(2)
    elif change == "shape":
        sd["module.text_projection.0.weight"] = torch.zeros(8, 8)
    elif change == "front_end":
        sd["module.audio_branch.logmel_extractor.melW"] = torch.zeros(513, 128)
    else:
        ck = [1, 2]
    with pytest.raises(SelvaError, match=expect):
        C.build_clap(ck, arch=tiny_clap_arch(), source="clap.pt")


def test_plain_state_dicts_and_the_old_position_ids_buffer_are_accepted():
    ck = tiny_clap_checkpoint()
    plain = {k[len("module."):]: v for k, v in ck["state_dict"].items()}
    plain["text_branch.embeddings.position_ids"] = torch.arange(514)[None]
    a = C.build_clap(ck, arch=tiny_clap_arch())
    b = C.build_clap(plain, arch=tiny_clap_arch())
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_every_checkpoint_tensor_reaches_the_model():
    """A loader that skipped a tensor would leave the model's own random init there."""
    ck = tiny_clap_checkpoint()
    model = C.build_clap(ck, arch=tiny_clap_arch())
    own = model.state_dict()
    sd = ck["state_dict"]
    qkv = sd["module.audio_branch.layers.1.blocks.0.attn.qkv.weight"]
    assert torch.equal(own["audio_model.audio_encoder.layers.1.blocks.0.attention.self.key.weight"],
                       qkv.chunk(3)[1])
    assert torch.equal(own["text_model.encoder.layer.0.output.LayerNorm.weight"],
                       sd["module.text_branch.encoder.layer.0.output.LayerNorm.weight"])
    assert torch.equal(own["audio_model.audio_encoder.batch_norm.running_var"],
                       sd["module.audio_branch.bn0.running_var"])
    assert torch.equal(own["audio_projection.linear2.bias"], sd["module.audio_projection.2.bias"])


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_with_a_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "music_speech_audioset_epoch_15_esc_89.98.pt"
    torch.save({"epoch": 15, "state_dict": {"module.x": _Payload(marker)}}, path)
    torch.load(path, weights_only=False)["state_dict"]["module.x"].close()
    assert marker.exists()  # the payload runs when unpickled unsafely
    marker.unlink()
    with pytest.raises(SelvaError, match="Cannot read .*music_speech_audioset"):
        C.ClapScorer.from_files(path, tmp_path)
    assert not marker.exists()


# ---------------------------------------------------------------------------- the scorer
@pytest.fixture
def tiny_scorer(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "CLAP_ARCH", tiny_clap_arch())
    write_tiny_clap(tmp_path / "clap.pt", tmp_path / "tok")
    return C.ClapScorer.from_files(tmp_path / "clap.pt", tmp_path / "tok")


def test_scorer_embeddings_are_unit_vectors_and_depend_on_their_input(tiny_scorer):
    t = torch.arange(16000 * 3) / 16000
    a = tiny_scorer.audio_embedding(torch.sin(2 * math.pi * 300 * t), 16000, 3.0)
    b = tiny_scorer.audio_embedding(torch.sin(2 * math.pi * 3000 * t)[None], 16000, 3.0)
    texts = tiny_scorer.text_embeddings(["a dog barks", "soft piano music"])
    assert a.shape == (8,) and texts.shape == (2, 8)
    assert float(a.norm()) == pytest.approx(1.0, abs=1e-5)
    assert texts.norm(dim=-1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert not torch.allclose(a, b, atol=1e-4) and not torch.allclose(texts[0], texts[1], atol=1e-4)
    # the batch path and the one-clip path agree
    x = C.fit_length(C.prepare_audio(torch.sin(2 * math.pi * 300 * t), 16000, 3.0))
    assert torch.allclose(tiny_scorer.audio_embeddings_48k(x[None])[0], a, atol=1e-6)


def test_prompts_are_padded_and_cut_to_77_tokens(tiny_scorer):
    tokens = tiny_scorer.tokenizer(["word " * 200, "hi"], padding="max_length", truncation=True,
                                   max_length=C.TEXT_TOKENS, return_tensors="pt")
    assert tokens["input_ids"].shape == (2, 77)
    assert tokens["input_ids"][1, -1] == 1 and tokens["attention_mask"][1].sum() < 10  # <pad> is 1


def test_missing_tokenizer_files_are_named(tmp_path):
    with pytest.raises(SelvaError, match="lacks vocab.json, merges.txt of the roberta-base tokenizer"):
        C.load_tokenizer(tmp_path)


# -------------------------------------------------------------------------------- weights
def test_clap_weights_download_from_hugging_face_on_first_use(tmp_path, monkeypatch):
    import huggingface_hub

    from comfyui_selva.selva.evaluation import weights as EW

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def hf_hub_download(repo_id, filename, local_dir=None, **kw):
        calls.append(("file", repo_id, filename))
        path = tmp_path / "models" / "evaluation" / filename
        assert str(local_dir) == str(path.parent)
        path.write_bytes(b"x")
        return str(path)

    def snapshot_download(repo_id, allow_patterns=(), local_dir=None, local_files_only=False, **kw):
        if local_files_only:
            raise FileNotFoundError("not cached")
        calls.append(("snapshot", repo_id, tuple(allow_patterns)))
        for name in allow_patterns:
            (tmp_path / "models" / "hf" / "FacebookAI--roberta-base").mkdir(parents=True, exist_ok=True)
            (tmp_path / "models" / "hf" / "FacebookAI--roberta-base" / name).write_text("{}")
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    paths = EW.resolve_metric_weights(["clap"], tmp_path / "models")
    assert calls == [("file", "lukewys/laion_clap", "music_speech_audioset_epoch_15_esc_89.98.pt"),
                     ("snapshot", "FacebookAI/roberta-base", ("vocab.json", "merges.txt"))]
    assert paths["clap"] == tmp_path / "models" / "evaluation" / "music_speech_audioset_epoch_15_esc_89.98.pt"
    assert paths["roberta_tokenizer"] == tmp_path / "models" / "hf" / "FacebookAI--roberta-base"
    calls.clear()
    assert EW.resolve_metric_weights(["clap"], tmp_path / "models") == paths and calls == []  # kept files
