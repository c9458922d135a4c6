"""Checking a state dict against a network and loading it strictly: one implementation for every loader.

Every released file must load with ``strict=True`` and a wrong file must never leave a half-loaded
network behind. So all names and shapes are compared *before* anything is written, and the
``SelvaError`` names the file, what it should have been, the first few differing keys and what to
do. A network built on the meta device takes the file's tensors as they are (``assign=True``),
which is what full-size loading tests and the pipeline rely on; a real network copies them.
"""
from __future__ import annotations

from typing import Any, Collection, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..errors import SelvaError
from ..host_memory import drop_clean_pages, file_mappings, mapping_holding, tensor_span

Shape = tuple[int, ...]

# How many keys a message lists per kind of problem; the count says how many there are in all.
PREVIEW_LIMIT = 5

_ADVICE = ("Check that it is the file this model needs, and complete (delete a damaged download "
           "to fetch it again).")


def preview(items: Iterable[str], limit: int = PREVIEW_LIMIT) -> str:
    """The first ``limit`` of ``items`` in sorted order, and how many more there are."""
    items = sorted(items)
    more = f", +{len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def shapes_of(state: Mapping[str, torch.Tensor]) -> dict[str, Shape]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def problem_report(*, missing: Collection[str] = (), unexpected: Collection[str] = (),
                   wrong_shape: Iterable[tuple[str, Sequence[int], Sequence[int]]] = ()) -> Optional[str]:
    """One line naming the first few missing keys, unexpected keys and wrong shapes.

    ``wrong_shape`` holds ``(key, shape in the file, shape in the network)``. None when there is
    nothing to report.
    """
    wrong = [f"{k} (file {tuple(got)}, network {tuple(want)})" for k, got, want in wrong_shape]
    kinds = (("missing key", missing), ("unexpected key", unexpected), ("wrong shape", wrong))
    return "; ".join(f"{_counted(len(items), noun)}: {preview(items)}"
                     for noun, items in kinds if items) or None


def mismatch_report(expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]]) -> Optional[str]:
    """How the ``found`` key -> shape table differs from the ``expected`` one, or None if it fits."""
    return problem_report(
        missing=expected.keys() - found.keys(),
        unexpected=found.keys() - expected.keys(),
        wrong_shape=[(k, found[k], expected[k]) for k in expected.keys() & found.keys()
                     if tuple(found[k]) != tuple(expected[k])])


def require_tensors(state_dict: Any, *, source: str, what: str) -> Mapping[str, torch.Tensor]:
    """``state_dict`` itself if it maps names to tensors; else a SelvaError naming the file."""
    if not isinstance(state_dict, Mapping):
        raise SelvaError(f"{source} is not a state dict of tensors (it holds a "
                         f"{type(state_dict).__name__}), so it cannot be the {what}.")
    odd = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise SelvaError(f"{source} is not a state dict of tensors (entries that are not tensors: "
                         f"{preview(map(str, odd))}), so it cannot be the {what}.")
    return state_dict


def mismatch_error(report: str, *, source: str, what: str, hint: Optional[str] = None) -> SelvaError:
    extra = f"{hint} " if hint else ""
    return SelvaError(f"{source} does not fit the {what}: {report}. {extra}{_ADVICE}")


def check_fit(expected: Mapping[str, Sequence[int]], state_dict: Any, *, source: str, what: str,
              hint: Optional[str] = None) -> Mapping[str, torch.Tensor]:
    """Raise SelvaError unless ``state_dict`` holds exactly the ``expected`` keys and shapes.

    ``hint`` is one more sentence for the message (e.g. what the file looks like instead).
    Returns the checked state dict.
    """
    state_dict = require_tensors(state_dict, source=source, what=what)
    report = mismatch_report(expected, shapes_of(state_dict))
    if report:
        raise mismatch_error(report, source=source, what=what, hint=hint)
    return state_dict


def is_on_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in module.state_dict().values())


def load_strict(module: nn.Module, state_dict: Any, *, source: str, what: str,
                hint: Optional[str] = None) -> None:
    """Check ``state_dict`` completely against ``module``, then load it with ``strict=True``.

    Nothing is written unless every key and shape fits. A module on the meta device takes the
    tensors as they are (``assign=True``); a real module copies them, so shape-only (meta)
    tensors are refused there: they hold no data.
    """
    state_dict = check_fit(shapes_of(module.state_dict()), state_dict, source=source, what=what,
                           hint=hint)
    on_meta = is_on_meta(module)
    if not on_meta and any(v.is_meta for v in state_dict.values()):
        raise SelvaError(f"{source}: the state dict holds no data (meta tensors), so it cannot "
                         f"fill a real {what} network.")
    module.load_state_dict(state_dict, strict=True, assign=on_meta)


def unset_tensors(module: nn.Module, ignore: Collection[str] = ()) -> list[str]:
    """Names of parameters and buffers still on the meta device (not in ``ignore``)."""
    return [n for n, t in list(module.named_parameters()) + list(module.named_buffers())
            if t.is_meta and n not in ignore]


def _tensors_in(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _tensors_in(value)


def memory_span(obj: Any) -> Optional[tuple[int, int]]:
    """The address range of every CPU tensor in ``obj`` (a loaded checkpoint: nested dicts)."""
    spans = [(t.untyped_storage().data_ptr(), t.untyped_storage().data_ptr() + t.untyped_storage().nbytes())
             for t in _tensors_in(obj) if t.device.type == "cpu" and t.untyped_storage().nbytes()]
    if not spans:
        return None
    return min(s for s, _ in spans), max(e for _, e in spans)


def file_mapping_span(obj: Any) -> Optional[tuple[int, int]]:
    """:func:`memory_span` of a loaded checkpoint, but only when that whole range lies in one
    file-backed memory mapping of this process (``torch.load(mmap=True)``), else None.

    Only Linux can tell (``/proc/self/maps``); elsewhere, and for a checkpoint read into
    ordinary memory, the answer is None and :func:`drop_mapped_pages` does nothing.
    """
    span = memory_span(obj)
    if span is None or mapping_holding(span, file_mappings()) is None:
        return None
    return span


def drop_mapped_pages(t: torch.Tensor, span: Optional[tuple[int, int]]) -> None:
    """Let the kernel drop the resident pages wholly inside ``t``'s bytes, when they lie in
    ``span`` (a file mapping found by :func:`file_mapping_span`).

    For weights rebuilt at load time (weight norm folded): each raw factor read from the file
    stays resident as long as the mapping lives, so without this a load peaks at the raw file
    plus the rebuilt weights. Only clean pages go (selva/host_memory.py): should anything read
    them again they are simply read from the file again.
    """
    own = tensor_span(t)
    if span is None or own is None or not (span[0] <= own[0] and own[1] <= span[1]):
        return
    drop_clean_pages(own)


def release_file_pages(module: nn.Module, span: Optional[tuple[int, int]]) -> int:
    """Give ``module`` its own copy of the few tensors it still shares with a loaded file.

    For networks whose weights are rebuilt at load time (weight norm folded into plain weights):
    the memory-mapped file stays mapped, with every page read while rebuilding still counted as
    resident, as long as any tensor views it. Copying the small leftovers (biases, statistics)
    lets the whole mapping go once the checkpoint dict is dropped. Returns how many were copied.
    """
    if span is None:
        return 0
    lo, hi = span
    copied = 0
    for holder in module.modules():
        for table in (holder._parameters, holder._buffers):
            for name, t in table.items():
                if t is None or t.device.type != "cpu" or t.is_meta:
                    continue
                if lo <= t.untyped_storage().data_ptr() < hi:
                    fresh = t.detach().clone()
                    table[name] = nn.Parameter(fresh, requires_grad=t.requires_grad) \
                        if isinstance(t, nn.Parameter) else fresh
                    copied += 1
    return copied
