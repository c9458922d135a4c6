"""The start-up warning when another pack (the earlier SelVA pack) registers SelVA's node ids."""
from __future__ import annotations

import logging
from pathlib import Path

from comfy_pack import pack_module

IDS = ["SelvaModelLoader", "SelvaFeatureExtractor", "SelvaSampler", "SelvaLoraLoader", "SelvaLoraTrainer",
       "SelvaMuxVideo"]


def _pack(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def _custom_nodes(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "custom_nodes"
    ours = _pack(root / "ComfyUI-SelVA", {"__init__.py": '"SelvaSampler"'})
    # The earlier pack's layout: a nodes/ package whose table maps id -> (module, class, name).
    table = "".join(f'    "{i}": (".x", "{i}", "{i}"),\n' for i in IDS[:5])
    _pack(root / "ComfyUI-SelVA-old", {"__init__.py": "from .nodes import NODE_CLASS_MAPPINGS\n",
                                       "nodes/__init__.py": "_NODE_MODULES = {\n" + table + "}\n"})
    _pack(root / "ComfyUI-SelVA-older.disabled", {"__init__.py": '"SelvaSampler"'})
    _pack(root / "other-pack", {"__init__.py": 'NODE_CLASS_MAPPINGS = {"Sampler": 1}  # SelvaSampler\n'})
    return root, ours


def test_finds_the_other_pack_and_nothing_else(tmp_path):
    other_packs = pack_module("nodes.other_packs")
    root, ours = _custom_nodes(tmp_path)
    found = other_packs.find_other_selva_packs(ours, IDS, [root])
    assert found == {root / "ComfyUI-SelVA-old": IDS[:5]}


def test_the_warning_names_the_folder_and_what_to_do(tmp_path, caplog):
    other_packs = pack_module("nodes.other_packs")
    root, ours = _custom_nodes(tmp_path)
    with caplog.at_level(logging.WARNING):
        other_packs.warn_about_other_selva_packs(ours, IDS, [root])
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = record.getMessage()
    assert f"{root / 'ComfyUI-SelVA-old'} also registers 5 of SelVA's node ids" in text
    assert "(SelvaModelLoader, SelvaFeatureExtractor, SelvaSampler, SelvaLoraLoader, ...)" in text
    assert "rename it to 'ComfyUI-SelVA-old.disabled'" in text
    assert "docs/coming-from-earlier-pack.md" in text


def test_alone_it_says_nothing(tmp_path, caplog):
    other_packs = pack_module("nodes.other_packs")
    root = tmp_path / "custom_nodes"
    ours = _pack(root / "ComfyUI-SelVA", {"__init__.py": '"SelvaSampler"'})
    with caplog.at_level(logging.WARNING):
        assert other_packs.warn_about_other_selva_packs(ours, IDS, [root]) == {}
    assert not caplog.records


def test_outside_comfyui_nothing_is_scanned(tmp_path, monkeypatch):
    # The command line and the tests import the pack without ComfyUI: a checkout's sibling
    # folders are not custom nodes, and no other pack can take the ids there.
    other_packs = pack_module("nodes.other_packs")
    root, ours = _custom_nodes(tmp_path)
    monkeypatch.setattr(other_packs.comfy_compat, "folder_paths", None)
    assert other_packs.warn_about_other_selva_packs(ours, IDS) == {}
