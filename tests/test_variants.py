"""Variant table and the duration -> sequence length rules."""
from __future__ import annotations

import pytest

from comfyui_selva.selva import weights as W
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.variants import VARIANTS, get_variant


@pytest.mark.parametrize("name,latent", [("small_16k", 250), ("small_44k", 345),
                                         ("medium_44k", 345), ("large_44k", 345)])
def test_eight_seconds_matches_the_official_lengths(name, latent):
    seq = get_variant(name).seq_lengths(8.0)
    assert (seq.latent, seq.clip, seq.sync) == (latent, 64, 192)
    assert seq.audio_samples == latent * get_variant(name).hop * 2


def test_lengths_follow_duration_like_the_official_code():
    # 1.96 s is what the official reader makes of a 2 s clip: latent 62, not 63
    assert get_variant("small_16k").seq_lengths(1.96).latent == 62
    assert get_variant("small_16k").seq_lengths(2.0).latent == 63
    seq = get_variant("small_16k").seq_lengths(7.96)
    assert (seq.latent, seq.clip, seq.sync) == (249, 63, 184)
    assert get_variant("small_16k").seq_lengths(0.64).sync == 8  # exactly one segment


def test_too_short_and_unknown():
    with pytest.raises(SelvaError, match="sync segment"):
        get_variant("small_16k").seq_lengths(0.5)
    with pytest.raises(SelvaError, match="small_16k"):
        get_variant("tiny")


def test_every_variant_names_files_that_exist_in_the_table():
    for spec in VARIANTS.values():
        for key in (spec.video_enc_file, spec.generator_file, spec.vae_file):
            assert key in W.FILES
        assert (spec.vocoder_file in W.FILES) if spec.vocoder == "bigvgan_v1" else (spec.vocoder_snapshot in W.HUB)
        assert spec.mel.num_mels == spec.vae.data_dim
        assert spec.mel.hop_size == spec.hop and spec.mel.sampling_rate == spec.sample_rate
