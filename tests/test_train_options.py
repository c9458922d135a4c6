"""Training settings are written once (selva/train/options.py) and become both the command-line
options and the node inputs; the nodes keep their input names, order, defaults and limits."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from comfy_pack import load_pack

from selva.errors import SelvaError
from selva.train.options import add_cli_options, check_limits, from_namespace, setting, settings_table

RECORDED = Path(__file__).parent / "data" / "training_node_inputs.json"


def _rows(node_cls) -> list:
    spec = node_cls.INPUT_TYPES()
    rows = []
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            opts = dict(value[1]) if len(value) > 1 else {}
            opts.pop("tooltip", None)
            rows.append([section, name, value[0] if isinstance(value[0], str) else list(value[0]), opts])
    return rows


@pytest.mark.parametrize("node", sorted(json.loads(RECORDED.read_text())))
def test_node_inputs_keep_their_names_order_defaults_and_limits(node):
    """The inputs recorded before the settings were written once come first, unchanged (a
    choice list may only grow); new inputs only follow them."""
    recorded = json.loads(RECORDED.read_text())[node]
    now = _rows(load_pack().NODE_CLASS_MAPPINGS[node])
    assert [r[:2] for r in now[:len(recorded)]] == [r[:2] for r in recorded]
    for (section, name, kind, opts), (_, _, kind_now, opts_now) in zip(recorded, now):
        if isinstance(kind, list):
            assert kind == kind_now[:len(kind)], f"{node}.{name}: choices {kind} -> {kind_now}"
        else:
            assert kind == kind_now, f"{node}.{name}"
        assert opts == opts_now, f"{node}.{name}: {opts} -> {opts_now}"
    for section, name, _, _ in now[len(recorded):]:
        assert section == "optional", f"{node}.{name}: a new input must be optional and last"


@dataclass
class _Opts:
    steps: int = setting(10, "optimizer steps", min=1, max=100)
    lr: float = setting(1e-4, "learning rate", min=1e-7)
    mode: str = setting("a", "which mode", choices=("a", "b"))
    flag: bool = setting(False, "a switch")
    on: bool = setting(True, "on by default")


def test_cli_options_come_from_the_settings():
    p = argparse.ArgumentParser()
    add_cli_options(p, _Opts)
    d = from_namespace(_Opts, p.parse_args([]))
    assert d == _Opts()
    o = from_namespace(_Opts, p.parse_args(["--steps", "5", "--lr=0.5", "--mode", "b", "--flag", "--no-on"]))
    assert o == _Opts(steps=5, lr=0.5, mode="b", flag=True, on=False)
    assert p.parse_args(["--no_on"]).on is False
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "c"])
    assert "optimizer steps (default: 10)" in p.format_help()


def test_a_percent_sign_in_help_prints_as_written():
    # argparse %-formats help strings: an unescaped "~30% slower" printed argparse's own dict.
    from selva.train.lora_trainer import LoraTrainOptions

    p = argparse.ArgumentParser()
    add_cli_options(p, LoraTrainOptions)
    text = " ".join(p.format_help().split())
    assert "much less VRAM, ~30% slower" in text
    assert "option_strings" not in text


def test_limits_are_checked_with_the_settings_own_words():
    check_limits(_Opts())
    with pytest.raises(SelvaError, match=r"^steps must be at most 100, got 101\.$"):
        check_limits(_Opts(steps=101))
    with pytest.raises(SelvaError, match=r"^steps must be at least 1, got 0\.$"):
        check_limits(_Opts(steps=0))
    with pytest.raises(SelvaError, match=r"^mode 'c' is not one of a, b\.$"):
        check_limits(_Opts(mode="c"))


def test_settings_table_lists_every_setting_once():
    table = settings_table(_Opts)
    assert [r["name"] for r in table] == ["steps", "lr", "mode", "flag", "on"]
    assert table[0] == {"name": "steps", "type": "int", "default": 10, "help": "optimizer steps",
                        "min": 1, "max": 100, "choices": None}
