"""The shared strict loader every checkpoint loader goes through."""
import sys

import pytest
import torch
from torch import nn

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.models.state_dicts import (check_fit, load_strict, mismatch_report,
                                                    problem_report, unset_tensors)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))


def test_mismatch_report_names_each_kind_of_problem():
    expected = {"a": (2, 3), "b": (4,), "c": (1,)}
    assert mismatch_report(expected, dict(expected)) is None
    report = mismatch_report(expected, {"a": (3, 2), "c": (1,), "z": (5,)})
    assert report == ("1 missing key: b; 1 unexpected key: z; "
                      "1 wrong shape: a (file (3, 2), network (2, 3))")


def test_reports_list_only_the_first_few_keys():
    report = problem_report(missing=[f"k{i:02d}" for i in range(12)])
    assert report == "12 missing keys: k00, k01, k02, k03, k04, +7 more"
    assert problem_report() is None


def test_wrong_file_raises_naming_it_and_writes_nothing():
    net, src = _net(), _net()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bad = dict(src.state_dict())
    bad["1.weight"] = torch.ones(5)
    del bad["1.bias"]
    with pytest.raises(SelvaError) as err:
        load_strict(net, bad, source="some/file.pth", what="test net", hint="Use the other one.")
    msg = str(err.value)
    for part in ("some/file.pth", "test net", "1 missing key: 1.bias",
                 "1.weight (file (5,), network (4,))", "Use the other one.", "download"):
        assert part in msg
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_real_network_copies_and_meta_network_assigns():
    src = _net()
    real = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    load_strict(real, src.state_dict(), source="x", what="net")
    assert all(torch.equal(real.state_dict()[k], v) for k, v in src.state_dict().items())
    assert real[0].weight.data_ptr() != src[0].weight.data_ptr()

    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    load_strict(meta, src.state_dict(), source="x", what="net")
    assert meta[0].weight.data_ptr() == src[0].weight.data_ptr()
    assert unset_tensors(meta) == []


def test_shape_only_tensors_are_refused_by_a_real_network():
    with torch.device("meta"):
        shapes_only = _net().state_dict()
    with pytest.raises(SelvaError, match="no data"):
        load_strict(_net(), shapes_only, source="x", what="net")


def test_non_tensor_content_is_refused():
    with pytest.raises(SelvaError, match=r"f\.pth is not a state dict of tensors.*list"):
        check_fit({}, [1, 2], source="f.pth", what="net")
    with pytest.raises(SelvaError, match=r"not tensors: step"):
        check_fit({"step": ()}, {"step": 3}, source="f.pth", what="net")


def test_unset_tensors_lists_what_is_still_on_meta():
    with torch.device("meta"):
        net = _net()
    assert set(unset_tensors(net)) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert unset_tensors(net, ignore={"0.weight", "0.bias"}) == ["1.weight", "1.bias"]


def test_release_file_pages_copies_only_what_views_the_file(tmp_path):
    from comfyui_selva.selva.models.state_dicts import memory_span, release_file_pages
    from comfyui_selva.selva.weights import load_checkpoint

    torch.save({"weight": torch.randn(4, 3), "bias": torch.randn(4)}, tmp_path / "lin.pt")
    sd = load_checkpoint(tmp_path / "lin.pt")  # memory-mapped
    span = memory_span(sd)
    with torch.device("meta"):
        lin = torch.nn.Linear(3, 4)
    lin.load_state_dict(sd, assign=True)
    lin.weight = torch.nn.Parameter(lin.weight.detach() * 2)  # rebuilt at load: owns its memory
    inside = lambda t: span[0] <= t.untyped_storage().data_ptr() < span[1]  # noqa: E731
    assert inside(lin.bias) and not inside(lin.weight)
    want_bias, weight_ptr = lin.bias.detach().clone(), lin.weight.data_ptr()
    assert release_file_pages(lin, span) == 1
    assert not inside(lin.bias) and isinstance(lin.bias, torch.nn.Parameter)
    assert torch.equal(lin.bias, want_bias) and lin.weight.data_ptr() == weight_ptr
    assert release_file_pages(lin, None) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file mappings are read from /proc (Linux)")
def test_dropped_pages_of_a_memory_mapped_checkpoint_read_back_the_same_values(tmp_path):
    from comfyui_selva.selva.models.state_dicts import drop_mapped_pages, file_mapping_span

    def resident_bytes() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    path = tmp_path / "w.pt"
    big = torch.randn(8192, 1024)  # 32 MiB
    torch.save({"big": big, "small": torch.arange(3.0)}, path)
    sd = torch.load(path, mmap=True, weights_only=True)
    span = file_mapping_span(sd)
    assert span is not None  # torch.load(mmap=True) maps the file
    float(sd["big"].sum())  # every page read: resident in this process
    before = resident_bytes()
    drop_mapped_pages(sd["big"], span)
    assert before - resident_bytes() > 16 * 1024**2  # the pages left this process
    assert torch.equal(sd["big"], big)  # read again from the file
    assert torch.equal(sd["small"], torch.arange(3.0))


def test_pages_outside_a_file_mapping_are_never_dropped():
    from comfyui_selva.selva.models.state_dicts import drop_mapped_pages, file_mapping_span

    sd = {"w": torch.randn(256, 1024)}  # ordinary memory: dropping would zero it
    assert file_mapping_span(sd) is None
    before = sd["w"].clone()
    drop_mapped_pages(sd["w"], file_mapping_span(sd))
    # even a span given by mistake does not reach a tensor outside it
    drop_mapped_pages(sd["w"], (0, 4096))
    assert torch.equal(sd["w"], before)
