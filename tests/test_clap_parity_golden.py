"""Our CLAP embeddings and score against laion_clap's, kept from a run of tools/clap_parity.py.

``tests/data/clap_parity_golden.npz`` holds what laion_clap's ``CLAP_Module`` (as av-benchmark
runs it) computed on the parity inputs: every clip's audio and text embedding, the token ids and
the scores. The inputs and the full-size random weights are rebuilt here from their definitions
(``tools/clap_parity.py``, ``tools/clap_parity_weights.py``), so CI checks the agreement without
laion_clap or its environment.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_selva.selva.evaluation import clap as C
from eval_helpers import _clap_tools

GOLDEN = Path(__file__).resolve().parent / "data" / "clap_parity_golden.npz"
RTOL = 1e-4
pytestmark = pytest.mark.skipif(not GOLDEN.is_file(), reason="no golden file")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tools = _clap_tools()
    golden = dict(np.load(GOLDEN))
    folder = tmp_path_factory.mktemp("clap_tok")
    tools.write_tokenizer(folder)
    with torch.no_grad():  # never switch gradients off for the tests that run after these
        model = C.build_clap(tools.parity_checkpoint(layout=C.released_layout()), source="parity weights")
    scorer = C.ClapScorer(model, C.load_tokenizer(folder))
    return tools, golden, scorer


def _close(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


def test_text_embeddings_and_tokens_match_laion_clap(setup):
    tools, golden, scorer = setup
    for clip in tools.CLIPS:
        tokens = scorer.tokenizer([clip["caption"]], padding="max_length", truncation=True, max_length=77,
                                  return_tensors="pt")["input_ids"][0].numpy()
        assert np.array_equal(tokens, golden[f"tokens_{clip['name']}"]), clip["name"]
        ours = scorer.text_embeddings([clip["caption"]])[0].numpy()
        assert _close(ours, golden[f"text_emb_{clip['name']}"]) < RTOL, clip["name"]


def test_audio_embeddings_and_scores_match_laion_clap(setup):
    tools, golden, scorer = setup
    ref = json.loads(golden["ref_json"].tobytes().decode())
    for i, clip in enumerate(tools.CLIPS):
        wave = torch.from_numpy(tools.clip_audio(i))
        audio = scorer.audio_embedding(wave, clip["rate"], clip["duration"])
        assert _close(audio.numpy(), golden[f"audio_emb_{clip['name']}"]) < RTOL, clip["name"]
        text = scorer.text_embeddings([clip["caption"]])
        score = float(C.clap_scores(audio[None], text)[0])
        assert score == pytest.approx(ref["per_clip"][clip["name"]], rel=RTOL, abs=1e-6)
    # the set's score is the mean of the per-clip cosines (av-benchmark's LAION-CLAP-Score)
    per_clip = [float(C.clap_scores(torch.from_numpy(golden[f"audio_emb_{c['name']}"])[None],
                                    torch.from_numpy(golden[f"text_emb_{c['name']}"])[None])[0])
                for c in tools.CLIPS]
    assert float(np.mean(per_clip)) == pytest.approx(ref["LAION-CLAP-Score"], rel=1e-5)
