"""The held-out metrics against hand computations, on tiny or random-weight networks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.evaluation import desync as D
from comfyui_selva.selva.evaluation.fd import compute_fd, embedding_statistics, frechet_distance
from comfyui_selva.selva.evaluation.kl import kl_per_pair
from comfyui_selva.selva.models.synchformer import Synchformer, load_synchformer, load_synchformer_backbone
from comfyui_selva.selva.models.synchformer import MotionFormer
from eval_helpers import TINY_CONFIG, tiny_synchformer
from manifest import state_dict_for

SYNCHFORMER_FILE = "ext_weights/synchformer_state_dict.pth"


# ------------------------------------------------------------------------------------- FD
def test_fd_of_two_gaussians_with_known_statistics():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    # diagonal covariances commute: tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(a) - sqrt(b))^2
    expected = (1 + 0 + 4) + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # a rotated pair with equal covariances is the squared mean distance only
    r = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    s = r @ np.diag([1.0, 2.0, 3.0]) @ r.T
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(5.0, rel=1e-6)


def test_fd_of_sample_sets_uses_their_mean_and_unbiased_covariance():
    real = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    generated = real * 3 + 1  # mean (4, 4), covariance 9x the real one
    mu, cov = embedding_statistics(real)
    assert mu.tolist() == [1.0, 1.0] and np.allclose(cov, np.eye(2) * 4 / 3)
    # |mu diff|^2 = 18; tr(S + 9S - 2 * 3S) = 4 tr(S) = 4 * 8/3
    assert compute_fd(generated, real) == pytest.approx(18 + 32 / 3, rel=1e-9)
    assert compute_fd(real, real) == pytest.approx(0.0, abs=1e-9)


def test_fd_needs_two_clips():
    with pytest.raises(SelvaError, match="at least 2 clips per set"):
        compute_fd(np.ones((1, 4)), np.ones((3, 4)))


# ------------------------------------------------------------------------------------- KL
def test_kl_of_known_distributions_is_real_to_generated():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])  # real
    q = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.2, 0.7]])  # generated
    kl = kl_per_pair(q.log() + 3.0, p.log())  # logits: any shift gives the same softmax
    forward = 0.7 * math.log(0.7 / 0.2) + 0.2 * math.log(0.2 / 0.5) + 0.1 * math.log(0.1 / 0.3)
    backward = 0.2 * math.log(0.2 / 0.7) + 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.1)
    assert forward != pytest.approx(backward, rel=1e-2)
    assert kl[0].item() == pytest.approx(forward, rel=1e-5)
    assert kl[1].item() == pytest.approx(0.0, abs=1e-6)
    assert kl_per_pair(p.log(), q.log())[0].item() == pytest.approx(backward, rel=1e-5)


def test_kl_rejects_unpaired_logits():
    with pytest.raises(SelvaError, match="paired logits of equal shape"):
        kl_per_pair(torch.zeros(2, 5), torch.zeros(3, 5))


# -------------------------------------------------------------------------------- DeSync
def test_offset_grid_and_decoding():
    grid = D.offset_grid()
    assert grid.shape == (21,) and grid[0] == -2.0 and grid[10] == 0.0 and grid[-1] == 2.0
    assert grid[13].item() == pytest.approx(0.6, abs=1e-6)
    logits = torch.full((3, 21), -5.0)
    logits[0, 0], logits[1, 10], logits[2, 17] = 1.0, 1.0, 1.0
    assert D.decode_offsets(logits).tolist() == pytest.approx([-2.0, 0.0, 1.4], abs=1e-6)
    with pytest.raises(SelvaError, match="21 offset logits"):
        D.decode_offsets(torch.zeros(1, 20))


def test_clip_and_set_desync_are_mean_absolute_offsets_and_list_unscored():
    clips = {"a": D.ClipDesync(offsets=(-0.4, 0.2)), "b": D.ClipDesync(offsets=(0.0, 2.0)),
             "c": D.ClipDesync(reason="too short")}
    assert clips["a"].value == pytest.approx(0.3) and clips["c"].value is None
    assert D.set_desync(clips) == pytest.approx((0.4 + 0.2 + 0.0 + 2.0) / 4)
    assert D.set_desync({"c": clips["c"]}) is None


def test_min_duration_is_fourteen_segments():
    assert D.min_scorable_duration() == pytest.approx(4.8)


def test_silent_audio_mel_matches_the_normalisation_by_hand():
    scorer = D.DesyncScorer(tiny_synchformer())
    mels = scorer.audio_mels(torch.zeros(16000 * 5), 16000, 5.0)
    # 5 s: (80000 - 10240) // 5120 + 1 = 14 segments of 65 mel frames padded to 66
    assert mels.shape == (14, 128, 66)
    silent = (math.log(1e-6) - D.MEL_MEAN) / (2 * D.MEL_STD)
    padded = (0.0 - D.MEL_MEAN) / (2 * D.MEL_STD)
    assert torch.allclose(mels[..., :65], torch.full_like(mels[..., :65], silent), atol=1e-5)
    assert torch.allclose(mels[..., 65], torch.full_like(mels[..., 65], padded))


def test_scorer_uses_the_first_and_last_fourteen_segments(monkeypatch):
    scorer = D.DesyncScorer(tiny_synchformer())
    frames = (torch.rand(150, 224, 224, 3) * 255).to(torch.uint8)  # 6 s: 17 video segments
    video = scorer.video_features(frames, 6.0)
    assert video.shape == (17, 8, 32)
    seen = []

    def fake_logits(vis, aud):
        seen.append((vis.clone(), aud.clone()))
        out = torch.zeros(1, 21)
        out[0, 3 if len(seen) == 1 else 20] = 1.0  # -1.4 s, then +2.0 s
        return out

    monkeypatch.setattr(scorer.model, "offset_logits", fake_logits)
    wave = torch.randn(6 * 16000) * 0.1  # (96000 - 10240) // 5120 + 1 = 17 audio segments
    result = scorer.score(video, wave, 16000, 6.0)
    audio = scorer.audio_features(wave, 16000, 6.0)
    assert result.offsets == pytest.approx((-1.4, 2.0)) and result.value == pytest.approx(1.7)
    assert torch.equal(seen[0][0][0], video[:14]) and torch.equal(seen[1][0][0], video[-14:])
    assert torch.allclose(seen[0][1][0], audio[:14]) and torch.allclose(seen[1][1][0], audio[-14:])


def test_short_or_incomplete_clips_are_unscored_with_the_reason():
    scorer = D.DesyncScorer(tiny_synchformer())
    frames = (torch.rand(100, 224, 224, 3) * 255).to(torch.uint8)
    short = scorer.video_features(frames, 4.0)
    assert short == "4.00 s is shorter than the 4.8 s DeSync needs"
    assert scorer.score(short, torch.zeros(64000), 16000, 4.0).reason == short
    missing = scorer.video_features(frames, 5.0)
    assert missing == "the video has 100 frames at 25 fps, 5.00 s needs 125"
    video = scorer.video_features((torch.rand(125, 224, 224, 3) * 255).to(torch.uint8), 5.0)
    cut = scorer.score(video, torch.zeros(16000 * 4), 16000, 5.0)
    assert not cut.scored and cut.reason == "the audio has 4.000 s at 16 kHz, 5.00 s needed"


def test_tiny_synchformer_end_to_end_shapes_and_segment_count_guard():
    model = tiny_synchformer()
    aud = model.audio_features(torch.randn(1, 14, 128, 66))
    vis = model.video_features(torch.rand(1, 14, 16, 3, 224, 224) * 2 - 1)
    assert aud.shape == (1, 14, 6, 32) and vis.shape == (1, 14, 8, 32)
    assert model.offset_logits(vis, aud).shape == (1, 21)
    with pytest.raises(SelvaError, match="exactly 14 segments"):
        model.offset_logits(vis[:, :13], aud[:, :13])
    with pytest.raises(SelvaError, match=r"mel segments of shape \(N, 128, 66\)"):
        model.afeat_extractor(torch.randn(2, 128, 65))


# ---------------------------------------------------------------------------- loading
def test_the_full_released_layout_loads_strictly():
    with torch.device("meta"):
        model = Synchformer()
    state = state_dict_for(SYNCHFORMER_FILE)
    assert len(state) == 513
    load_synchformer(model, state, source=SYNCHFORMER_FILE)
    assert sum(p.numel() for p in model.parameters()) == 237_460_245
    # the video-only loader used by generation still takes the same file
    with torch.device("meta"):
        video = MotionFormer()
    load_synchformer_backbone(video, state, source=SYNCHFORMER_FILE)


@pytest.mark.parametrize("change", ["drop", "extra", "shape"])
def test_strict_loading_names_what_does_not_fit(change):
    with torch.device("meta"):
        model = Synchformer()
    state = state_dict_for(SYNCHFORMER_FILE)
    if change == "drop":
        del state["transformer.off_head.bias"]
        expect = "transformer.off_head.bias"
    elif change == "extra":
        state["transformer.extra_head.weight"] = torch.empty(2, device="meta")
        expect = "transformer.extra_head.weight"
    else:
        state["afeat_extractor.ast.embeddings.position_embeddings"] = torch.empty(1, 1214, 768, device="meta")
        expect = "position_embeddings"
    with pytest.raises(SelvaError, match=expect):
        load_synchformer(model, state, source=SYNCHFORMER_FILE)


def test_scorer_from_file_round_trip(tmp_path, monkeypatch):
    from eval_helpers import write_tiny_synchformer

    monkeypatch.setattr(D, "SYNCHFORMER_CONFIG", TINY_CONFIG)
    path = write_tiny_synchformer(tmp_path / "s.pth", seed=3)
    scorer = D.DesyncScorer.from_file(path)
    reference = tiny_synchformer(seed=3)
    x = torch.randn(1, 14, 128, 66)
    assert torch.equal(scorer.model.audio_features(x), reference.audio_features(x))
