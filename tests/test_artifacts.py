"""The one atomic write, the one "next free numbered name" and the one safetensors reader/writer
(selva/artifacts.py) that training, style, vocoder tuning, adapters and media all use."""
from __future__ import annotations

import pytest
import torch

from comfyui_selva.selva import artifacts as A
from comfyui_selva.selva.errors import SelvaError


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("the user's file")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        A.write_atomic(target, fail)
    assert target.read_text() == "the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_the_temporary_keeps_the_suffix_so_format_by_suffix_writers_work(tmp_path):
    with A.atomic_path(tmp_path / "sub" / "clip.mp4") as tmp:
        assert tmp.parent == tmp_path / "sub" and tmp.name.endswith(".mp4") and tmp.name.startswith(".")
        tmp.write_bytes(b"x")
    assert (tmp_path / "sub" / "clip.mp4").read_bytes() == b"x"


def test_written_files_get_the_permissions_of_any_new_file_not_owner_only(tmp_path):
    import os
    mask = os.umask(0o022)
    os.umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives under this umask
    A.write_atomic(tmp_path / "ours.txt", lambda tmp: tmp.write_text("x"))
    assert (tmp_path / "ours.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~mask


def test_the_training_names_are_the_same_implementation():
    from comfyui_selva.selva.train import files

    assert files.atomic_write is A.write_atomic


def test_next_numbered_path_is_one_above_the_highest_never_a_gap(tmp_path):
    assert A.next_numbered_path(tmp_path, "run") == tmp_path / "run_001"
    for name in ("run_001", "run_004", "run_x", "other_009", "run_007.txt"):
        (tmp_path / name).mkdir()
    assert A.next_numbered_path(tmp_path, "run") == tmp_path / "run_005"
    assert A.next_numbered_path(tmp_path, "run", ".txt", digits=5) == tmp_path / "run_00008.txt"
    (tmp_path / "cmp_0003.json").touch()
    assert A.next_numbered_path(tmp_path, "cmp", ".png", digits=4, also=(".json",)) == tmp_path / "cmp_0004.png"
    assert A.unique_path(tmp_path / "new.png") == tmp_path / "new.png"
    (tmp_path / "new.png").touch()
    assert A.unique_path(tmp_path / "new.png") == tmp_path / "new_00001.png"


def test_safetensors_round_trip_keeps_metadata_and_copies_only_views(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    path = A.write_safetensors(tmp_path / "a.safetensors", {"row": base[1], "all": base}, {"kind": "x", "n": 3})
    tensors, meta = A.load_safetensors(path, "test")
    assert torch.equal(tensors["row"], base[1]) and torch.equal(tensors["all"], base)
    assert meta == {"kind": "x", "n": "3"}
    A.save_safetensors(tmp_path / "b.safetensors", {"t": base}, {"list": [1, 2], "s": "x"})
    _, meta = A.load_safetensors(tmp_path / "b.safetensors", "test")
    assert A.meta_value(meta, "list") == [1, 2] and A.meta_value(meta, "s") == "x"
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(SelvaError) as e:
        A.load_safetensors(tmp_path / "bad.safetensors", "test")
    assert str(e.value).startswith(f"Cannot read {tmp_path / 'bad.safetensors'} as a safetensors test file (")
    with pytest.raises(SelvaError) as e:
        A.load_safetensors(tmp_path / "missing.safetensors", "test")
    assert str(e.value) == f"test file {tmp_path / 'missing.safetensors'} does not exist."


class _OpensAFile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_read_pt_refuses_code_in_one_line_and_never_runs_it(tmp_path):
    marker = tmp_path / "payload_ran"
    torch.save({"w": torch.ones(2), "x": _OpensAFile(marker)}, tmp_path / "evil.pt")
    with pytest.raises(SelvaError) as e:
        A.read_pt(tmp_path / "evil.pt", "steering", fix="make it again")
    assert not marker.exists()
    assert str(e.value) == (f"Cannot read {tmp_path / 'evil.pt'} as a steering file: only plain tensor files "
                            f"load (weights_only=True), and this one is not (it refers to the Python object "
                            f"io.open, which a tensor file never needs). Make it again.")
    assert "weights_only` set to `False`" not in str(e.value)  # never nudge towards the unsafe load
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(SelvaError, match=r"not a PyTorch file, or a damaged one: Unsupported operand"):
        A.read_pt(tmp_path / "junk.pt", "steering")
    torch.save({"w": torch.arange(3.0)}, tmp_path / "ok.pt")
    assert torch.equal(A.read_pt(tmp_path / "ok.pt", "steering", mmap=True)["w"], torch.arange(3.0))
