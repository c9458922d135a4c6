"""The ``auto`` precision and bf16 on devices that only emulate it (capabilities faked)."""
from __future__ import annotations

import logging

import pytest
import torch

from comfy_pack import pack_module

P = pack_module("selva.precision")
Caps = P.DeviceCaps


@pytest.fixture(autouse=True)
def _no_emulated_bf16(monkeypatch):
    monkeypatch.delenv(P.ALLOW_EMULATED_BF16_ENV, raising=False)
    P._logged.clear()


@pytest.mark.parametrize("caps,expected", [
    (Caps("cuda", True, "GPU cuda:0"), "bf16"),  # Ampere and newer
    (Caps("cuda", False, "GPU cuda:0"), "fp16"),  # Turing, Pascal
    (Caps("mps", True, "Apple MPS"), "fp16"),
    (Caps("mps", False, "Apple MPS"), "fp16"),
    (Caps("cpu", True, "this CPU"), "bf16"),  # AVX512-BF16 / AMX
    (Caps("cpu", False, "this CPU"), "fp32"),  # AVX2 only: bf16 would be emulated
    (Caps("xpu", False, "xpu"), "fp32"),
])
def test_auto_picks_by_device(caps, expected):
    assert P.choose_precision("auto", caps) == (expected, None)


def test_explicit_choices_where_bf16_is_native_are_kept():
    for caps in (Caps("cuda", True), Caps("cpu", True)):
        for p in ("bf16", "fp16", "fp32"):
            assert P.choose_precision(p, caps) == (p, None)
    assert P.choose_precision("fp16", Caps("cpu", False)) == ("fp16", None)
    assert P.choose_precision("fp32", Caps("cuda", False)) == ("fp32", None)


def test_bf16_on_an_emulating_cpu_runs_in_fp32_and_says_why(monkeypatch, caplog):
    chosen, warning = P.choose_precision("bf16", Caps("cpu", False, "this CPU"))
    assert chosen == "fp32"
    assert warning.startswith("this CPU has no native bf16 arithmetic (no AVX512-BF16 or AMX): bf16 would "
                              "be emulated, several times slower than fp32, so SelVA runs in fp32.")
    monkeypatch.setattr(P, "device_caps", lambda device: Caps("cpu", False, "this CPU"))
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        assert P.resolve_dtype("bf16", torch.device("cpu")) == torch.float32
    assert "no native bf16 arithmetic" in caplog.text
    monkeypatch.setenv(P.ALLOW_EMULATED_BF16_ENV, "1")  # asked for on purpose
    assert P.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_bf16_on_a_gpu_without_it_runs_in_fp16():
    chosen, warning = P.choose_precision("bf16", Caps("cuda", False, "GPU cuda:0"))
    assert chosen == "fp16" and warning.startswith("GPU cuda:0 has no bf16 support: using fp16 instead")


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(pack_module("selva.errors").SelvaError, match="Unknown precision 'fp8'; choose one of "
                                                                   "auto, bf16, fp16, fp32."):
        P.choose_precision("fp8", Caps("cpu", True))


def test_cpu_flags_are_read_from_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n\nprocessor\t: 1\n")
    assert P.cpu_flags(info) == {"fpu", "sse", "avx2", "avx512f"}
    assert not P.cpu_flags(info) & P.CPU_BF16_FLAGS
    info.write_text("flags : avx2 avx512_bf16 amx_tile amx_bf16\n")
    assert P.cpu_flags(info) & P.CPU_BF16_FLAGS == {"avx512_bf16", "amx_bf16"}
    info.write_text("Features\t: fp asimd bf16 i8mm\n")  # Arm
    assert "bf16" in P.cpu_flags(info)
    assert P.cpu_flags(tmp_path / "missing") == frozenset()
    # device_caps reads them for the CPU
    monkeypatch.setattr(P, "_cpu_has_native_bf16", lambda: False)
    assert P.device_caps(torch.device("cpu")) == Caps("cpu", False, "this CPU")
    monkeypatch.setattr(P, "_cpu_has_native_bf16", lambda: True)
    assert P.device_caps(torch.device("cpu")).bf16


def test_auto_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(P, "device_caps", lambda device: Caps("cpu", False, "this CPU"))
    with caplog.at_level(logging.INFO, logger=P.__name__):
        for _ in range(3):
            assert P.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert caplog.text.count("Precision auto on this CPU: fp32") == 1


def test_auto_is_the_default_everywhere(models_dir, monkeypatch):
    from node_helpers import load_pack

    LoadOptions = pack_module("selva.pipeline").LoadOptions
    assert LoadOptions().precision == "auto"
    args = pack_module("selva.cli").build_parser().parse_args(["generate", "--video", "v", "--out", "o.wav",
                                                               "--prompt", "x"])
    assert args.precision == "auto"
    loader = load_pack().NODE_CLASS_MAPPINGS["SelvaModelLoader"].INPUT_TYPES()["required"]["precision"]
    assert loader[1]["default"] == "auto" and loader[0][0] == "auto"
    # a pipeline loaded with the default on a CPU that emulates bf16 computes in fp32
    monkeypatch.setattr(P, "device_caps", lambda device: Caps("cpu", False, "this CPU"))
    pipe = pack_module("selva.pipeline").SelvaPipeline.load(LoadOptions(
        variant="tiny_16k", device="cpu", models_dir=models_dir, allow_download=False))
    assert pipe.dtype == torch.float32 and pipe.stage_dtype("generator") == torch.float32
    monkeypatch.setattr(P, "device_caps", lambda device: Caps("cpu", True, "this CPU"))
    pipe = pack_module("selva.pipeline").SelvaPipeline.load(LoadOptions(
        variant="tiny_16k", device="cpu", models_dir=models_dir, allow_download=False))
    assert pipe.dtype == torch.bfloat16
