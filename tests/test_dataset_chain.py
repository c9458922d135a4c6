"""The audio dataset chain (issue 23): the earlier pack's SelvaDataset* nodes on selva/datasets,
each showing its effect on small synthetic clips; a chain-cleaned dataset trains like any other."""
from __future__ import annotations

import math

import pytest
import torch

from comfyui_selva.selva.audio import measure_lufs, output_normalize, true_peak
from comfyui_selva.selva.datasets import chain as C
from comfyui_selva.selva.datasets import read_dataset
from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.train.audio_files import read_audio
from comfyui_selva.selva.train.dataset import load_dataset
from comfyui_selva.selva.train.files import write_wav
from dataset_media import bursts, sound
from node_helpers import frames, run_node

RATE = 16000


def item(name, wave, rate=RATE, **kw):
    return {"waveform": wave[None], "sample_rate": rate, "name": name, **kw}


@pytest.fixture
def out_dir(tmp_path, monkeypatch):
    out = tmp_path / "comfy_output"
    out.mkdir()
    monkeypatch.setenv("SELVA_OUTPUT_DIR", str(out))
    return out


def test_loader_reads_a_folder_recursively_and_names_clips_by_stem(out_dir):
    (out_dir / "audio" / "sub").mkdir(parents=True)
    write_wav(out_dir / "audio" / "a.wav", sound(0.5, RATE), RATE)
    write_wav(out_dir / "audio" / "sub" / "b.wav", sound(0.5, 22050, channels=2), 22050)
    (out_dir / "audio" / ".selva_cache").mkdir()
    write_wav(out_dir / "audio" / ".selva_cache" / "hidden.wav", sound(0.5, RATE), RATE)
    (dataset,) = run_node("SelvaDatasetLoader", folder="audio")
    assert [(d["name"], d["sample_rate"], tuple(d["waveform"].shape)) for d in dataset] == [
        ("a", RATE, (1, 1, 8000)), ("b", 22050, (1, 2, 11025))]
    write_wav(out_dir / "audio" / "sub" / "a.wav", sound(0.5, RATE), RATE)
    with pytest.raises(SelvaError, match="Two audio files are both named 'a'"):
        run_node("SelvaDatasetLoader", folder="audio")


def test_resampler_and_item_extractor():
    data = [item("x", sound(1.0, 22050), 22050), item("y", sound(1.0, RATE))]
    (out,) = run_node("SelvaDatasetResampler", dataset=data, target_sr=RATE)
    assert [d["sample_rate"] for d in out] == [RATE, RATE] and out[0]["waveform"].shape[-1] == RATE
    assert out[1]["waveform"] is data[1]["waveform"] or torch.equal(out[1]["waveform"], data[1]["waveform"])
    audio, name, total = run_node("SelvaDatasetItemExtractor", dataset=out, index=3)  # wraps around
    assert (name, total) == ("y", 2) and audio["sample_rate"] == RATE


def test_lufs_normalizer_reaches_the_target_under_the_true_peak_ceiling():
    data = [item("quiet", sound(1.0, RATE, amplitude=0.01)), item("silent", torch.zeros(1, RATE))]
    (out,) = run_node("SelvaDatasetLUFSNormalizer", dataset=data, target_lufs=-20.0, true_peak_dbtp=-1.0)
    assert measure_lufs(out[0]["waveform"][0], RATE) == pytest.approx(-20.0, abs=0.1)
    assert torch.equal(out[1]["waveform"], data[1]["waveform"])  # unmeasurable: left as it is
    (loud,) = run_node("SelvaDatasetLUFSNormalizer", dataset=data[:1], target_lufs=-6.0, true_peak_dbtp=-3.0)
    assert true_peak(loud[0]["waveform"][0]) == pytest.approx(10 ** (-3 / 20), rel=1e-3)
    # the Output Normalizer's rule, to the sample: a dataset is levelled as the Sampler's audio is
    wave = data[0]["waveform"]
    assert torch.equal(loud[0]["waveform"], output_normalize(wave, RATE, -6.0, -3.0))


def test_compressor_turns_down_loud_parts_only_and_mix_zero_is_dry():
    quiet, loud = sound(0.5, RATE, amplitude=0.02), sound(0.5, RATE, amplitude=0.9)
    data = [item("x", torch.cat([quiet, loud], dim=-1))]
    (out,) = run_node("SelvaDatasetCompressor", dataset=data, threshold_db=-18.0, ratio=4.0, attack_ms=1.0,
                      release_ms=50.0, mix=1.0)
    w = out[0]["waveform"][0, 0]
    assert torch.allclose(w[:7000], data[0]["waveform"][0, 0, :7000], atol=1e-6)  # under the threshold
    assert float(w[12000:].abs().max()) < 0.9 * 0.5  # over it: turned down
    (dry,) = run_node("SelvaDatasetCompressor", dataset=data, threshold_db=-18.0, ratio=4.0, attack_ms=1.0,
                      release_ms=50.0, mix=0.0)
    assert torch.equal(dry[0]["waveform"], data[0]["waveform"])


def test_inspector_rejects_clipped_noisy_silent_and_codec_cut_clips():
    rate = 44100
    good = bursts(1.0, rate)
    noisy = sound(1.0, rate, amplitude=0.3) + 0.1 * torch.randn(1, rate, generator=torch.Generator().manual_seed(1))
    clipped = bursts(1.0, rate, amplitude=1.5).clamp(-1, 1)
    silent = torch.cat([bursts(0.2, rate), torch.zeros(1, int(0.8 * rate))], dim=-1)
    data = [item(n, w, rate) for n, w in (("good", good), ("noisy", noisy), ("clipped", clipped), ("silent", silent))]
    kept, report = run_node("SelvaDatasetInspector", dataset=data, skip_rejected=True, min_snr_db=15.0,
                            check_codec_artifacts=True, max_silence_fraction=0.5)
    assert [d["name"] for d in kept] == ["good"]
    assert "REJECTED noisy: low SNR" in report and "REJECTED clipped: clipping" in report
    assert "REJECTED silent: mostly silent" in report and "4 clip(s): 1 clean, 3 flagged (removed)" in report
    kept, report = run_node("SelvaDatasetInspector", dataset=data, skip_rejected=False, min_snr_db=15.0,
                            check_codec_artifacts=True, max_silence_fraction=0.5)
    assert len(kept) == 4 and "FLAGGED  noisy" in report
    # a lossy-codec cut: white noise low-passed at 10 kHz has nothing above 15 kHz
    noise = torch.randn(1, rate, generator=torch.Generator().manual_seed(2))
    spec = torch.fft.rfft(noise)
    spec[..., 10000:] = 0  # bins are 1 Hz apart for a 1 s clip
    cut = torch.fft.irfft(spec, n=rate)
    assert C.has_codec_shelf(0.3 * cut, rate) and not C.has_codec_shelf(0.3 * noise, rate)


def test_hf_smoother_and_spectral_matcher(model):
    data = [item("x", sound(1.0, RATE, 7000.0, 0.3)), item("y", sound(1.0, 8000, 1000.0, 0.3), rate=8000)]
    (out,) = run_node("SelvaDatasetHfSmoother", dataset=data, cutoff_hz=5000.0, blend=1.0)
    rms = float(out[0]["waveform"].pow(2).mean().sqrt())
    assert rms < 0.1 * 0.3 / math.sqrt(2)  # 7 kHz is well above the cutoff: -20 dB and more
    assert torch.equal(out[1]["waveform"], data[1]["waveform"])  # 8 kHz audio has nothing above 5 kHz
    (matched,) = run_node("SelvaDatasetSpectralMatcher", dataset=data, mode="16k", strength=1.0,
                          max_gain_db=12.0, model=model)
    assert [d["sample_rate"] for d in matched] == [RATE, RATE]
    # the same EQ as the single-clip Spectral Matcher (whose gains are capped at 12 dB)
    assert torch.allclose(matched[0]["waveform"], model.decoding.spectral_match(data[0]["waveform"], RATE, strength=1.0),
                          atol=1e-5)
    (gentle,) = run_node("SelvaDatasetSpectralMatcher", dataset=data[:1], mode="16k", strength=1.0,
                         max_gain_db=1.0, model=model)
    assert not torch.allclose(gentle[0]["waveform"], matched[0]["waveform"], atol=1e-4)
    with pytest.raises(SelvaError, match="mode is 44k but the connected model is tiny_16k"):
        run_node("SelvaDatasetSpectralMatcher", dataset=data, mode="44k", strength=1.0, max_gain_db=6.0,
                 model=model)


def test_augmenter_makes_seeded_variants_of_the_same_length():
    data = [item("dog", sound(1.0, RATE, 440.0, 0.5))]
    kw = dict(dataset=data, variants_per_clip=3, gain_range_db=6.0, seed=7, pitch_range_semitones=2.0,
              time_stretch_range=0.2, keep_originals=True)
    (out,) = run_node("SelvaDatasetAugmenter", **kw)
    assert [d["name"] for d in out] == ["dog", "dog_aug00", "dog_aug01", "dog_aug02"]
    assert [d.get("origin_name") for d in out] == [None, "dog", "dog", "dog"]
    assert all(d["waveform"].shape == data[0]["waveform"].shape for d in out)
    assert all(float(d["waveform"].abs().max()) < 1.0 for d in out)
    (again,) = run_node("SelvaDatasetAugmenter", **kw)
    assert all(torch.equal(a["waveform"], b["waveform"]) for a, b in zip(out, again))
    (gain_only,) = run_node("SelvaDatasetAugmenter", dataset=data, variants_per_clip=2, gain_range_db=6.0,
                            seed=7, keep_originals=False)
    ratios = [float(d["waveform"].abs().max() / 0.5) for d in gain_only]
    assert all(10 ** (-6 / 20) - 1e-3 <= r <= 10 ** (6 / 20) + 1e-3 for r in ratios) and len(set(ratios)) == 2


def test_saver_writes_audio_beside_copied_features_and_the_result_trains(model, out_dir):
    src = out_dir / "source"
    src.mkdir()
    feats = run_node("SelvaFeatureExtractor", model=model, video=frames(1.0, seed=1), prompt="a dog",
                     fps=25.0, duration=1.0, cache_dir="", mask_strength=1.0, mask_clip=True, mask_sync=True)[0]
    feats.save(src / "dog.npz")
    write_wav(src / "dog.wav", sound(1.0, 22050, 440.0, 0.3), 22050)
    (src / "dog.txt").write_text("a small dog\n")
    (loaded,) = run_node("SelvaDatasetLoader", folder="source")
    (augmented,) = run_node("SelvaDatasetAugmenter", dataset=loaded, variants_per_clip=1, gain_range_db=3.0, seed=1)
    (report,) = run_node("SelvaDatasetSaver", dataset=augmented, output_dir="clean", npz_source_dir="source")
    clean = out_dir / "clean"
    assert sorted(p.name for p in clean.iterdir()) == ["dog.flac", "dog.npz", "dog.txt", "dog_aug00.flac",
                                                       "dog_aug00.npz", "dog_aug00.txt"]
    assert "features copied: 2, missing: 0" in report
    wave, rate = read_audio(clean / "dog.flac")
    assert rate == 22050 and torch.allclose(wave, read_audio(src / "dog.wav")[0], atol=2e-4)
    assert [c.stem for c in read_dataset(clean)] == ["dog", "dog_aug00"]
    ds = load_dataset(model, clean)  # a chain-cleaned dataset trains like any other
    assert [c.prompt for c in ds.clips] == ["a small dog", "a small dog"]
    with pytest.raises(SelvaError, match="already holds dog.flac, dog.npz.*nothing is overwritten"):
        run_node("SelvaDatasetSaver", dataset=augmented, output_dir="clean", npz_source_dir="source")
    with pytest.raises(SelvaError, match="output_dir and npz_source_dir are the same folder"):
        run_node("SelvaDatasetSaver", dataset=augmented, output_dir="source", npz_source_dir="source")
    assert math.isfinite(measure_lufs(wave, rate))


def test_pitch_shift_moves_the_pitch_and_keeps_the_length():
    wave = sound(1.0, RATE, 440.0, 0.5)

    def peak_hz(w):
        return float(torch.fft.rfft(w[0]).abs().argmax()) * RATE / w.shape[-1]

    up = C._pitch_shift(wave, 12.0)
    assert up.shape == wave.shape and peak_hz(up) == pytest.approx(880.0, abs=10)
    assert peak_hz(C._pitch_shift(wave, -2.0)) == pytest.approx(440.0 * 2 ** (-2 / 12), abs=10)
    faster = C._phase_vocoder(wave, 1.25)
    assert faster.shape[-1] == pytest.approx(RATE / 1.25, abs=512) and peak_hz(faster) == pytest.approx(440, abs=10)


def test_spectral_matcher_without_a_model_needs_the_mode_vae(tmp_path):
    from comfyui_selva.selva.datasets.profile import spectral_matcher_for

    with pytest.raises(SelvaError, match=r"The 16k VAE \(vae_16k\) is not in .*: connect a SelVA Model Loader"):
        spectral_matcher_for("16k", 1.0, 12.0, None, [tmp_path])
    with pytest.raises(SelvaError, match="mode must be one of 16k, 44k"):
        spectral_matcher_for("22k", 1.0, 12.0, None, [tmp_path])
