"""Weight resolution, offline errors, checksums and safe loading."""
from __future__ import annotations

import hashlib

import pytest
import torch

from comfyui_selva.selva import weights as W
from comfyui_selva.selva.errors import SelvaError


def _fake_file(tmp_path, rel, payload=b"abc"):
    p = tmp_path / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(payload)
    return p


def test_every_release_file_is_listed_with_its_repo_path():
    paths = {f.path for f in W.FILES.values()}
    for rel in ("weights/video_enc_sup_5.pth", "weights/generator_small_16k_sup_5.pth",
                "weights/generator_small_44k_sup_5.pth", "weights/generator_medium_44k_sup_5.pth",
                "weights/generator_large_44k_sup_5.pth", "ext_weights/v1-16.pth",
                "ext_weights/v1-44.pth", "ext_weights/best_netG.pt",
                "ext_weights/synchformer_state_dict.pth"):
        assert rel in paths
    assert W.FILES["generator_medium_44k"].alternative_paths == ("weights/generator_medium_44khz_sup_5.pth",)
    assert W.FILES["video_enc"].url == "https://huggingface.co/jnwnlee/SelVA/resolve/main/weights/video_enc_sup_5.pth"


def test_local_file_found_under_either_name(tmp_path):
    wf = W.FILES["generator_small_44k"]
    assert W.local_path(wf, tmp_path) is None
    alt = _fake_file(tmp_path, "weights/generator_small_44khz_sup_5.pth")
    assert W.resolve_file(wf, tmp_path, allow_download=False) == alt
    primary = _fake_file(tmp_path, wf.path)
    assert W.resolve_file(wf, tmp_path, allow_download=False) == primary


def test_offline_missing_file_lists_url_and_destination(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    wf = W.FILES["vae_16k"]
    with pytest.raises(W.MissingWeightsError) as e:
        W.resolve_file(wf, tmp_path)
    msg = str(e.value)
    assert wf.url in msg and str(tmp_path / wf.path) in msg and "HF_HUB_OFFLINE" in msg


def test_offline_missing_snapshot_names_every_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    snap = W.HUB["t5"]
    with pytest.raises(W.MissingWeightsError) as e:
        W.resolve_snapshot(snap, tmp_path)
    for f in snap.files:
        assert f in str(e.value)


def test_local_snapshot_dir_is_used(tmp_path):
    snap = W.HUB["bigvgan_v2_44k"]
    d = tmp_path / "hf" / "nvidia--bigvgan_v2_44khz_128band_512x"
    for f in snap.files:
        _fake_file(d, f)
    assert W.resolve_snapshot(snap, tmp_path, allow_download=False) == d


def test_failed_download_becomes_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def boom(*a, **k):
        raise OSError("network unreachable")

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    with pytest.raises(W.MissingWeightsError) as e:
        W.resolve_file(W.FILES["bigvgan_16k"], tmp_path)
    assert "network unreachable" in str(e.value) and "best_netG.pt" in str(e.value)


def test_download_is_verified_against_md5(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    wf = W.WeightFile("x", "weights/x.pth", md5=hashlib.md5(b"good").hexdigest())

    def fake_download(repo, rel, local_dir):
        return str(_fake_file(local_dir, rel, b"bad"))

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(SelvaError, match="checksum") as e:
        W.resolve_file(wf, tmp_path)
    # the bad download is set aside, and the message says where (it used to say "Delete it" of
    # a file that was no longer there)
    aside = tmp_path / "weights" / "x.pth.md5-mismatch"
    assert aside.read_bytes() == b"bad" and not (tmp_path / "weights" / "x.pth").exists()
    assert f"set aside as {aside}; run again to download it afresh" in str(e.value)
    assert "Delete it" not in str(e.value)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, rel, local_dir: str(_fake_file(local_dir, rel, b"good")))
    assert W.resolve_file(wf, tmp_path).read_bytes() == b"good"


def test_load_checkpoint_reads_state_dicts_and_rejects_truncated_files(tmp_path):
    p = tmp_path / "ok.pth"
    torch.save({"a": torch.arange(4.0)}, p)
    assert torch.equal(W.load_checkpoint(p)["a"], torch.arange(4.0))
    data = p.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SelvaError) as e:
        W.load_checkpoint(bad)
    message = str(e.value)
    assert message.startswith(f"Cannot read {bad} as a checkpoint file: only plain tensor files load")
    assert message.endswith("The file is probably truncated or corrupt (an interrupted download?): "
                            "delete it and run again to download it afresh.")


def test_file_absent_from_the_hub_lists_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from huggingface_hub.errors import EntryNotFoundError

    def not_there(repo, rel, local_dir):
        raise EntryNotFoundError(f"{rel} not found")

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_there)
    wf = W.FILES["generator_small_44k"]
    with pytest.raises(W.MissingWeightsError) as e:
        W.resolve_file(wf, tmp_path)
    msg = str(e.value)
    assert wf.url in msg and str(tmp_path / wf.path) in msg and "generator_small_44khz_sup_5.pth" in msg


def test_offline_hub_is_a_failed_download_not_an_absent_file(tmp_path, monkeypatch):
    # huggingface_hub raises LocalEntryNotFoundError (an EntryNotFoundError) when it cannot reach
    # the Hub: that is a failed download, not "the repository has none of these names".
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from huggingface_hub.errors import LocalEntryNotFoundError

    tried = []

    def unreachable(repo, rel, local_dir):
        tried.append(rel)
        raise LocalEntryNotFoundError("cannot reach the Hub")

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    wf = W.FILES["generator_small_44k"]
    with pytest.raises(W.MissingWeightsError) as e:
        W.resolve_file(wf, tmp_path)
    assert "the download failed (cannot reach the Hub)" in str(e.value)
    assert "has none of" not in str(e.value) and tried == [wf.path]
