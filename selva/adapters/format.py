"""LoRA adapter files: the in-memory value (``SELVA_LORA``) and its readers / writer.

What we write is safetensors in ComfyUI's LoRA key convention, one triple per adapted module
(module names exactly as in the released generator's state dict)::

    <module>.lora_down.weight   (rank, in)  or (rank, in, kernel) for sequence convolutions
    <module>.lora_up.weight     (out, rank) or (out, rank, 1)
    <module>.alpha              scalar: the module's delta is (alpha / rank) * up @ down

plus header metadata (format, version, variant, rank, alpha, targets, init, rslora, steps,
dataset digest). The per-module ``alpha`` always gives the effective scale with the plain
``alpha / rank`` rule, so rsLoRA and converted PiSSA adapters need no special reader anywhere.

Also read: peft-style ``lora_A`` / ``lora_B`` keys (safetensors or ``.pt``, with an
``adapter_config.json`` beside the file when present), and the ``.pt`` adapters of the earlier
SelVA ComfyUI pack (``{"state_dict": {"<module>.lora_A": ..., "<module>.lora_B": ...},
"meta": {"variant", "rank", "alpha", "target", "steps"}}``), loaded with ``weights_only=True``.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..artifacts import load_safetensors, read_pt, write_safetensors
from ..errors import SelvaError

log = logging.getLogger(__name__)

FORMAT = "selva-lora"
FORMAT_VERSION = 1
INITS = ("default", "pissa")
ADAPTER_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclass
class LoraWeights:
    """One adapted module: ``delta W = (alpha / rank) * up @ down``."""

    down: torch.Tensor  # (rank, in) or (rank, in, kernel)
    up: torch.Tensor  # (out, rank) or (out, rank, 1)
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    @property
    def is_conv(self) -> bool:
        return self.down.dim() == 3

    def dense_delta(self) -> torch.Tensor:
        """The full weight delta in the base layer's weight layout (for tests and merging)."""
        up = self.up.float().reshape(self.up.shape[0], self.rank)
        if self.is_conv:
            return self.scale * torch.einsum("or,rik->oik", up, self.down.float())
        return self.scale * up @ self.down.float()


@dataclass
class AdapterMeta:
    """What the header says about how the adapter was made."""

    variant: Optional[str]  # None: an older file that did not say (cannot be checked)
    rank: int
    alpha: float
    targets: tuple[str, ...]
    init: str = "default"
    rslora: bool = False
    steps: int = 0
    dataset_digest: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class LoraAdapter:
    """The ``SELVA_LORA`` value: weights that apply to the ORIGINAL base generator, + metadata.

    Tensors are on the CPU in whatever dtype the file held (ours: float32). ``path`` is where it
    was read from or last written to (None for one that came straight from a trainer).
    """

    modules: dict[str, LoraWeights]
    meta: AdapterMeta
    path: Optional[Path] = None
    # Earlier-pack PiSSA files only: each module's stored residual base weight; such an adapter
    # becomes a plain one against the real generator's weights in :meth:`against`.
    base_residuals: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.modules:
            raise SelvaError("The LoRA adapter holds no modules.")

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "adapter from the trainer"

    def against(self, generator: torch.nn.Module) -> "LoraAdapter":
        """The adapter to apply to ``generator`` (itself, unless it is an earlier PiSSA file)."""
        if not self.base_residuals:
            return self
        from ..compat.adapters import pissa_against_base

        pairs = pissa_against_base(self, generator)
        meta = replace(self.meta, extra={**self.meta.extra,
                                         "pissa_conversion": "earlier pack: rank 2r, (W_res - W) + B A"})
        return LoraAdapter({n: LoraWeights(*p) for n, p in pairs.items()}, meta, self.path)

    def check_variant(self, variant: str) -> None:
        """Refuse an adapter trained for another generator, naming both."""
        if self.meta.variant is None:
            log.warning("%s does not say which SelVA variant it was trained for; assuming %s.",
                        self.name, variant)
            return
        if self.meta.variant != variant:
            raise SelvaError(f"{self.name} was trained for SelVA {self.meta.variant}, but the model "
                             f"is {variant}: load the {self.meta.variant} model, or use an "
                             f"adapter trained on {variant}.")


# ------------------------------------------------------------------------------------- write
def _header(meta: AdapterMeta, modules: Mapping[str, LoraWeights]) -> dict[str, str]:
    ranks = sorted({w.rank for w in modules.values()})
    header = {
        "format": FORMAT, "format_version": str(FORMAT_VERSION),
        "variant": meta.variant or "", "rank": str(meta.rank), "alpha": repr(float(meta.alpha)),
        "targets": json.dumps(list(meta.targets)), "init": meta.init,
        "rslora": "true" if meta.rslora else "false", "steps": str(int(meta.steps)),
        "dataset_digest": meta.dataset_digest, "module_ranks": json.dumps(ranks),
    }
    header.update({k: str(v) for k, v in meta.extra.items() if k not in header})
    return header


def save_adapter(adapter: LoraAdapter, path: Path, *, overwrite: bool = False) -> Path:
    """Write ``adapter`` as safetensors, atomically; an existing file is kept unless ``overwrite``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise SelvaError(f"LoRA adapters are written as .safetensors, got {path.name}.")
    if path.exists() and not overwrite:
        raise SelvaError(f"{path} already exists; choose another name (it is never overwritten).")
    tensors: dict[str, torch.Tensor] = {}
    for name, w in adapter.modules.items():
        tensors[f"{name}.lora_down.weight"] = w.down.detach().cpu().contiguous()
        tensors[f"{name}.lora_up.weight"] = w.up.detach().cpu().contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(w.alpha), dtype=torch.float32)
    try:
        write_safetensors(path, tensors, _header(adapter.meta, adapter.modules))
    except OSError as e:
        raise SelvaError(f"Cannot write the adapter to {path.parent}: {e}.") from e
    adapter.path = path
    return path


# -------------------------------------------------------------------------------------- read
_PEFT_KEY = re.compile(r"^(?P<module>.+?)\.lora_(?P<part>A|B)(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")
_COMFY_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$")
_PEFT_PREFIXES = ("base_model.model.", "model.", "generator.", "net_generator.")


def load_adapter(path: Path) -> LoraAdapter:
    """Read any supported adapter file (see the module docstring); errors say what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise SelvaError(f"LoRA adapter not found: {path}.")
    residuals: dict[str, torch.Tensor] = {}
    suffix = path.suffix.lower()  # ADAPTER.SAFETENSORS, OLD.PT: names as a Windows tool wrote them
    if suffix == ".safetensors":
        tensors, header = load_safetensors(path, "LoRA adapter")
    elif suffix in (".pt", ".pth", ".bin"):
        tensors, header = _read_torch(path)
        if header.get("source_format") == "selva-pt":  # the earlier pack's names and PiSSA files
            from ..compat.adapters import split_residuals, translate_meta

            header = translate_meta(header)
            tensors, residuals = split_residuals(tensors)
    else:
        raise SelvaError(f"{path.name}: not a LoRA adapter file (expected one of "
                         f"{', '.join(ADAPTER_SUFFIXES)}).")
    if any(k.endswith(("lora_down.weight", "lora_up.weight")) for k in tensors):
        modules = _comfy_modules(tensors, path)
        meta = _meta_from_header(header, modules, path)
    elif any(".lora_A" in k or ".lora_B" in k for k in tensors):
        config = _peft_config(path, header)
        modules = _peft_modules(tensors, path, config)
        meta = _meta_from_header(config, modules, path)
    else:
        sample = ", ".join(sorted(tensors)[:3]) or "none"
        raise SelvaError(f"{path.name} holds no LoRA weights (no lora_down/lora_up or lora_A/lora_B "
                         f"keys; first keys: {sample}).")
    return LoraAdapter(modules, meta, path, base_residuals=residuals)


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    obj = read_pt(path, "PyTorch adapter", fix="re-save it as safetensors")
    meta: dict[str, Any] = {}
    if isinstance(obj, dict) and "state_dict" in obj:
        meta = dict(obj.get("meta") or {})
        meta.setdefault("source_format", "selva-pt")
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SelvaError(f"{path.name} is not a LoRA state dict (expected tensors by name, or "
                         f"{{'state_dict': ..., 'meta': ...}}).")
    return dict(obj), meta


def _strip_prefix(name: str) -> str:
    for prefix in _PEFT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _by_module(tensors: Mapping[str, torch.Tensor], pattern: re.Pattern, path: Path, expected: str) -> dict:
    """``{module: {part: tensor}}`` (``lora_down.weight`` kept as ``lora_down``) by ``pattern``."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = pattern.match(key)
        if m is None:
            raise SelvaError(f"{path.name}: unexpected key {key!r} (expected {expected}).")
        parts.setdefault(_strip_prefix(m["module"]), {})[m["part"].split(".")[0]] = value
    return parts


def _comfy_modules(tensors: Mapping[str, torch.Tensor], path: Path) -> dict[str, LoraWeights]:
    parts = _by_module(tensors, _COMFY_KEY, path, "<module>.lora_down.weight, <module>.lora_up.weight "
                                                  "and <module>.alpha")
    modules = {}
    for name, p in parts.items():
        if "lora_down" not in p or "lora_up" not in p:
            missing = "lora_down" if "lora_down" not in p else "lora_up"
            raise SelvaError(f"{path.name}: module {name} has no {missing}.weight.")
        rank = p["lora_down"].shape[0]
        alpha = float(p["alpha"].item()) if "alpha" in p else float(rank)
        modules[name] = _weights(name, p["lora_down"], p["lora_up"], alpha, path)
    return modules


def _peft_config(path: Path, header: Mapping[str, Any]) -> dict[str, Any]:
    """peft keeps r / lora_alpha in adapter_config.json beside the weights; older .pt in "meta"."""
    config = dict(header)
    side = path.with_name("adapter_config.json")
    if side.is_file():
        try:
            peft = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise SelvaError(f"Cannot read {side}: {e}.") from e
        config.setdefault("rank", peft.get("r"))
        config.setdefault("alpha", peft.get("lora_alpha"))
        config.setdefault("rslora", peft.get("use_rslora", False))
        targets = peft.get("target_modules")
        if targets:
            config.setdefault("targets", [targets] if isinstance(targets, str) else list(targets))
    return config


def _peft_modules(tensors: Mapping[str, torch.Tensor], path: Path,
                  config: Mapping[str, Any]) -> dict[str, LoraWeights]:
    parts = _by_module(tensors, _PEFT_KEY, path, "<module>.lora_A / <module>.lora_B")
    modules = {}
    for name, p in parts.items():
        if "A" not in p or "B" not in p:
            raise SelvaError(f"{path.name}: module {name} has no lora_{'A' if 'A' not in p else 'B'}.")
        rank = int(p["A"].shape[0])
        alpha = _header_number(config, "alpha", float, rank, path)
        if rank != _header_number(config, "rank", int, rank, path):
            raise SelvaError(f"{path.name}: module {name} has rank {rank} but the file says "
                             f"{config.get('rank')}.")
        if _truthy(config.get("rslora")):
            alpha = alpha * math.sqrt(rank)  # alpha / sqrt(r) expressed as an alpha / r scale
        modules[name] = _weights(name, p["A"], p["B"], alpha, path)
    return modules


def _weights(name: str, down: torch.Tensor, up: torch.Tensor, alpha: float, path: Path) -> LoraWeights:
    """Check the pair's shapes agree; an up of (out, rank) for a conv down gains its 1x1 axis."""
    if down.dim() not in (2, 3) or up.dim() not in (2, 3):
        raise SelvaError(f"{path.name}: module {name} has weights of shapes {tuple(down.shape)} and "
                         f"{tuple(up.shape)}; expected 2-D (linear) or 3-D (sequence conv) ones.")
    if up.dim() == 3 and up.shape[-1] != 1:
        raise SelvaError(f"{path.name}: module {name}: lora_up must be a 1x1 conv, got {tuple(up.shape)}.")
    if up.shape[1] != down.shape[0]:
        raise SelvaError(f"{path.name}: module {name}: lora_up {tuple(up.shape)} does not fit "
                         f"lora_down {tuple(down.shape)} (ranks differ).")
    if down.dim() == 3 and up.dim() == 2:
        up = up[..., None]
    if down.dim() == 2 and up.dim() == 3:
        up = up[..., 0]
    if not (down.is_floating_point() and up.is_floating_point()):
        raise SelvaError(f"{path.name}: module {name} holds non-float weights.")
    return LoraWeights(down, up, float(alpha))


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _header_number(header: Mapping[str, Any], key: str, kind: type, default: Any, path: Path) -> Any:
    """``header[key]`` as ``kind`` (``default`` when absent or empty); a clear error otherwise."""
    value = header.get(key) or default
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise SelvaError(f"{path.name}: its header says {key} = {value!r}, which is not "
                         f"{'a whole number' if kind is int else 'a number'}; the file is damaged "
                         f"or was not written as a LoRA adapter.") from None


def _meta_from_header(header: Mapping[str, Any], modules: Mapping[str, LoraWeights], path: Path) -> AdapterMeta:
    if header.get("format") == FORMAT:
        version = _header_number(header, "format_version", int, 0, path)
        if version > FORMAT_VERSION:
            raise SelvaError(f"This adapter uses format version {version}; this pack reads up to "
                             f"{FORMAT_VERSION}. Update ComfyUI-SelVA.")
    targets = header.get("targets", header.get("target"))
    if isinstance(targets, str):
        try:
            targets = json.loads(targets)
        except json.JSONDecodeError:
            targets = targets.replace(",", " ").split()
    first = next(iter(modules.values()))
    rank = _header_number(header, "rank", int, first.rank, path)
    init = str(header.get("init") or "default")
    known = {"format", "format_version", "variant", "rank", "alpha", "targets", "target", "init",
             "rslora", "steps", "dataset_digest", "module_ranks", "source_format"}
    return AdapterMeta(
        variant=str(header["variant"]) if header.get("variant") else None,
        rank=rank, alpha=_header_number(header, "alpha", float, rank, path),
        targets=tuple(targets) if targets else tuple(sorted({n.rsplit(".", 1)[-1] for n in modules})),
        init=init, rslora=_truthy(header.get("rslora", False)),
        steps=_header_number(header, "steps", int, 0, path), dataset_digest=str(header.get("dataset_digest") or ""),
        extra={k: str(v) for k, v in header.items() if k not in known and isinstance(v, (str, int, float))})
