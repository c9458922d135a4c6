"""LoRA on the generator's two kinds of layer, applied as forward hooks.

The generator has ``Linear`` layers (``attn.qkv``, ``adaLN_modulation``, ...) and channel-last
sequence convolutions (``ChannelLastConv1d``: ``linear1``, ``ffn.w1/w2/w3`` with kernel 3 in the
latent/clip/fused blocks). For a conv the adapter is a conv with the base layer's kernel,
padding, stride and dilation down to ``rank`` channels, then a 1x1 conv up, run in the same
``(batch, length, channels)`` layout the base layer sees; its dense equivalent is
``delta W[o, i, k] = scale * sum_r up[o, r] * down[r, i, k]``.

Nothing here replaces a module or writes a base weight (except the PiSSA residual, which only
the trainer's own working copy of the generator ever gets): a hook adds
``strength * scale * up(down(x))`` to the layer's output and is removed afterwards.

:class:`LoraSet` is both forms: trainable (``LoraSet.create``; float32 parameters whatever the
base dtype) and frozen (``LoraSet.from_adapter``, what the loader attaches). ``to_adapter``
turns a trained set into the file format, converting PiSSA so it applies to the original base.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SelvaError
from ..models.layers import ChannelLastConv1d
from .format import INITS, AdapterMeta, LoraAdapter, LoraWeights

ADAPTABLE = (nn.Linear, ChannelLastConv1d)


# ------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class LoraConfig:
    rank: int = 16
    alpha: float = 16.0
    targets: tuple[str, ...] = ("attn.qkv",)
    init: str = "default"  # default | pissa
    rslora: bool = False  # scale alpha / sqrt(rank) instead of alpha / rank

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", parse_targets(self.targets))
        if int(self.rank) < 1:
            raise SelvaError(f"LoRA rank must be at least 1, got {self.rank}.")
        if not math.isfinite(float(self.alpha)) or float(self.alpha) <= 0:
            raise SelvaError(f"LoRA alpha must be a positive number, got {self.alpha}.")
        if self.init not in INITS:
            raise SelvaError(f"Unknown LoRA init {self.init!r}; choose one of {', '.join(INITS)}.")
        if not self.targets:
            raise SelvaError("Give at least one LoRA target (a layer-name suffix such as attn.qkv).")

    @property
    def scale(self) -> float:
        denom = math.sqrt(self.rank) if self.rslora else self.rank
        return float(self.alpha) / denom


def parse_targets(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"attn.qkv, linear1 ffn.w1"`` -> ``("attn.qkv", "linear1", "ffn.w1")`` (order kept, no repeats)."""
    items = text if not isinstance(text, str) else re.split(r"[\s,]+", text)
    cleaned = (item.strip().strip(".") for item in items)
    return tuple(dict.fromkeys(item for item in cleaned if item))  # dict keys: first order, no repeats


# ------------------------------------------------------------------------------------ targets
def adaptable_layers(generator: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in generator.named_modules() if isinstance(m, ADAPTABLE)}


def _matches(name: str, suffix: str) -> bool:
    """``suffix`` names the layer itself or a container above it, component-wise (``attn.qkv``
    matches ``...attn.qkv``, ``attn`` matches ``...attn.qkv``, ``tn.qkv`` matches nothing)."""
    return f".{suffix}." in f".{name}."


def target_suffixes(generator: nn.Module) -> list[str]:
    """Short suffixes that exist (block indices dropped), for error messages and docs."""
    seen: set[str] = set()
    for name in adaptable_layers(generator):
        parts = name.split(".")
        while len(parts) > 1 and parts[-1].isdigit():  # adaLN_modulation.1 -> adaLN_modulation
            parts.pop()
        digits = [i for i, p in enumerate(parts) if p.isdigit()]
        tail = parts[digits[-1] + 1:] if digits else parts
        seen.add(".".join(tail[-2:]))
    return sorted(seen)


def find_targets(generator: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the adaptable layers matched by any suffix; a suffix matching none is an error."""
    layers = adaptable_layers(generator)
    for suffix in targets:
        if not any(_matches(n, suffix) for n in layers):
            raise SelvaError(f"LoRA target {suffix!r} matches no Linear or sequence-conv layer of "
                             f"the generator. Suffixes that exist: "
                             f"{', '.join(target_suffixes(generator))}.")
    return [n for n in layers if any(_matches(n, s) for s in targets)]  # in the generator's order


def _check_fits(name: str, module: nn.Module, down_shape: tuple, up_shape: tuple, what: str) -> None:
    conv = isinstance(module, ChannelLastConv1d)
    out_ch, in_ch = module.weight.shape[:2]
    if conv and (module.groups != 1 or module.padding_mode != "zeros"):
        raise SelvaError(f"{what}: {name} is a grouped or non-zero-padded conv, which LoRA does not support.")
    want_down = (in_ch, module.weight.shape[2]) if conv else (in_ch,)
    ok = (tuple(down_shape[1:]) == want_down and up_shape[0] == out_ch
          and len(up_shape) == (3 if conv else 2))
    if not ok:
        kind = f"a conv {tuple(module.weight.shape)}" if conv else f"a linear {tuple(module.weight.shape)}"
        raise SelvaError(f"{what}: module {name} has down {tuple(down_shape)} / up {tuple(up_shape)}, "
                         f"which does not fit the generator's {name} ({kind}). The adapter was made "
                         f"for a different generator.")


# -------------------------------------------------------------------------------------- layers
class LoraLayer(nn.Module):
    """The low-rank pair for one base layer (linear or channel-last conv)."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor, alpha: float, *, trainable: bool,
                 conv_args: Optional[dict] = None) -> None:
        super().__init__()
        self.down = nn.Parameter(down, requires_grad=trainable)
        self.up = nn.Parameter(up, requires_grad=trainable)
        self.alpha = float(alpha)
        self.conv_args = conv_args  # None for linear layers
        self.dropout = 0.0  # on the adapter's input while training (the base path never drops)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``scale * up(down(x))`` in the adapter's dtype, for the base layer's input ``x``."""
        x = x.to(self.down.dtype)
        if self.dropout > 0 and self.training:
            x = F.dropout(x, self.dropout, training=True)
        if self.conv_args is None:
            h = F.linear(F.linear(x, self.down), self.up)
        else:
            h = F.conv1d(x.transpose(1, 2), self.down, **self.conv_args)
            h = F.conv1d(h, self.up).transpose(1, 2)
        return h * self.scale


def _conv_args(module: nn.Module) -> Optional[dict]:
    if not isinstance(module, ChannelLastConv1d):
        return None
    return {"stride": module.stride, "padding": module.padding, "dilation": module.dilation}


def _key(name: str) -> str:
    return name.replace(".", "__")  # ModuleDict keys cannot hold dots


def _flat(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().reshape(weight.shape[0], -1)


# ------------------------------------------------------------------------------------ the set
class LoraSet(nn.Module):
    """LoRA pairs for named generator layers; :meth:`attach` hooks them onto a generator."""

    def __init__(self, layers: dict[str, LoraLayer], config: Optional[LoraConfig] = None) -> None:
        super().__init__()
        self.names = list(layers)
        self.layers = nn.ModuleDict({_key(n): layer for n, layer in layers.items()})
        # how a trainable set was made; None for a frozen one, whose layers' alphas say everything
        # (the file's header rank / alpha are only notes, see format.py)
        self.config = config

    def layer(self, name: str) -> LoraLayer:
        return self.layers[_key(name)]

    def items(self) -> Iterator[tuple[str, LoraLayer]]:
        for name in self.names:
            yield name, self.layer(name)

    # ------------------------------------------------------------------------ trainable form
    @classmethod
    def create(cls, generator: nn.Module, config: LoraConfig, *, state: Optional[dict] = None,
               rng: Optional[torch.Generator] = None) -> "LoraSet":
        """A trainable set for ``config.targets`` of ``generator`` (float32 parameters).

        ``init="default"``: down Kaiming-uniform (from ``rng``), up zero, so the start is the base.
        ``init="pissa"``: down/up from the top singular vectors of each weight and the base weight
        replaced IN PLACE by the residual ``W - scale * up @ down``. Only ever pass the trainer's
        own working copy of the generator for pissa (never the pipeline's shared one).
        ``state``: a :meth:`state_dict` to resume from; with pissa the residual is rebuilt from its
        stored initial pair, so resuming reproduces the uninterrupted run bit for bit.
        """
        with torch.inference_mode(False):
            names = find_targets(generator, config.targets)
            layers = {}
            for name in names:
                module = generator.get_submodule(name)
                if config.init == "pissa":
                    down, up = cls._pissa_pair(name, module, config)
                else:
                    down, up = cls._default_pair(module, config.rank, rng)
                layer = LoraLayer(down.float(), up.float(), config.scale * config.rank,
                                  trainable=True, conv_args=_conv_args(module))
                if config.init == "pissa":
                    layer.register_buffer("init_down", layer.down.detach().clone())
                    layer.register_buffer("init_up", layer.up.detach().clone())
                layers[name] = layer
            lora = cls(layers, config).to(next(generator.parameters()).device)
            if state is not None:
                lora.load_state(state)
            if config.init == "pissa":
                lora._residualize(generator)
        return lora

    @staticmethod
    def _default_pair(module: nn.Module, rank: int, rng: Optional[torch.Generator]):
        out_ch, in_flat = _flat(module.weight).shape
        # Kaiming-uniform with a = sqrt(5), as nn.Linear initialises its own weight.
        bound = 1.0 / math.sqrt(in_flat)
        down = (torch.rand(rank, in_flat, generator=rng) * 2 - 1) * bound
        down = down.reshape(rank, *module.weight.shape[1:])
        up = torch.zeros(out_ch, rank, *([1] if module.weight.dim() == 3 else []))
        return down, up

    @staticmethod
    def _pissa_pair(name: str, module: nn.Module, config: LoraConfig):
        weight = _flat(module.weight)
        if config.rank > min(weight.shape):
            raise SelvaError(f"LoRA rank {config.rank} is larger than {name} allows with pissa "
                             f"(at most {min(weight.shape)}).")
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        root = (s[:config.rank] / config.scale).sqrt()
        up = u[:, :config.rank] * root
        down = root[:, None] * vh[:config.rank]
        down = down.reshape(config.rank, *module.weight.shape[1:]).cpu()
        up = up.reshape(up.shape[0], config.rank, *([1] if module.weight.dim() == 3 else [])).cpu()
        return down, up

    def _residualize(self, generator: nn.Module) -> None:
        with torch.no_grad():
            for name, layer in self.items():
                weight = generator.get_submodule(name).weight
                principal = LoraWeights(layer.init_down, layer.init_up, layer.alpha).dense_delta()
                weight.copy_((weight.float() - principal.to(weight.device)).to(weight.dtype))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def set_dropout(self, p: float) -> None:
        """Dropout on each adapter's input while the set is in training mode (0 = none)."""
        for _, layer in self.items():
            layer.dropout = float(p)

    def load_state(self, state: dict) -> None:
        """Load a :meth:`state_dict` of a set with the same targets and rank; clear errors otherwise."""
        mine = self.state_dict()
        missing = sorted(set(mine) - set(state))
        unknown = sorted(set(state) - set(mine))
        if missing or unknown:
            raise SelvaError(f"The checkpoint's LoRA does not match these settings (targets/rank/init): "
                             f"missing {missing[:3]}, unexpected {unknown[:3]}.")
        for key, value in state.items():
            if tuple(value.shape) != tuple(mine[key].shape):
                raise SelvaError(f"The checkpoint's LoRA {key} has shape {tuple(value.shape)}, these "
                                 f"settings make {tuple(mine[key].shape)}: the rank differs.")
        with torch.no_grad():
            self.load_state_dict(state)

    # --------------------------------------------------------------------------- frozen form
    @classmethod
    def from_adapter(cls, adapter: LoraAdapter, generator: nn.Module) -> "LoraSet":
        """A frozen set holding ``adapter``'s weights, checked against ``generator`` (whose convs
        give the pairs their stride, padding and dilation)."""
        check_adapter(adapter, generator)
        adapter = adapter.against(generator)
        layers = {name: LoraLayer(w.down.detach().float(), w.up.detach().float(), w.alpha, trainable=False,
                                  conv_args=_conv_args(generator.get_submodule(name)))
                  for name, w in adapter.modules.items()}
        return cls(layers)

    # ------------------------------------------------------------------------------ attaching
    @contextlib.contextmanager
    def attach(self, generator: nn.Module, strength: float = 1.0) -> Iterator[None]:
        """Hook every layer onto ``generator`` for the block: out += strength * delta(input).

        Strength 0 is :class:`LoraPatch`'s to skip (it attaches nothing, not even this set).
        """
        device = next(generator.parameters()).device
        if next(self.parameters()).device != device:
            self.to(device)  # keeps the Parameter objects (an optimizer's references stay valid)
        with contextlib.ExitStack() as stack:  # a RemovableHandle removes its hook on exit
            for name, layer in self.items():
                stack.enter_context(generator.get_submodule(name).register_forward_hook(
                    _hook(layer, float(strength))))
            yield

    # ------------------------------------------------------------------------------- exporting
    def to_adapter(self, *, variant: str, steps: int = 0, dataset_digest: str = "",
                   extra: Optional[dict[str, str]] = None) -> LoraAdapter:
        """The file form (float32 CPU copies), applying to the ORIGINAL base weights.

        A PiSSA set trained on the residual ``W - s B0 A0`` becomes the rank-2r pair
        ``s (B A - B0 A0) = (2r s / 2r) [B, -B0] @ [A; A0]``, recorded in the metadata.
        """
        cfg = self.config
        modules = {}
        for name, layer in self.items():
            down, up = layer.down.detach().float().cpu(), layer.up.detach().float().cpu()
            alpha = layer.alpha
            if cfg.init == "pissa":
                down = torch.cat([down, layer.init_down.float().cpu()], dim=0)
                up = torch.cat([up, -layer.init_up.float().cpu()], dim=1)
                alpha = layer.scale * down.shape[0]
            modules[name] = LoraWeights(down.clone(), up.clone(), float(alpha))
        info = dict(extra or {})
        if cfg.init == "pissa":
            info["pissa_conversion"] = "rank-2r: delta = B'A' - B0A0, applies to the original weights"
        meta = AdapterMeta(variant=variant, rank=cfg.rank, alpha=float(cfg.alpha), targets=cfg.targets,
                           init=cfg.init, rslora=cfg.rslora, steps=int(steps),
                           dataset_digest=dataset_digest, extra=info)
        return LoraAdapter(modules, meta)


def _hook(layer: LoraLayer, strength: float):
    def add_delta(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        delta = layer.delta(args[0])
        if strength != 1.0:
            delta = delta * strength
        return output + delta.to(output.dtype)
    return add_delta


def check_adapter(adapter: LoraAdapter, generator: nn.Module) -> None:
    """Every module of ``adapter`` exists in ``generator``, is adaptable and has matching shapes."""
    layers = adaptable_layers(generator)
    missing = [n for n in adapter.modules if n not in layers]
    if missing:
        known = dict(generator.named_modules())
        what = "is not a Linear or sequence-conv layer" if missing[0] in known else "does not exist"
        raise SelvaError(f"{adapter.name}: {len(missing)} module(s) are not in this generator, e.g. "
                         f"{missing[0]} ({what}). The adapter was made for a different model or "
                         f"pack; layers that exist end in: {', '.join(target_suffixes(generator))}.")
    for name, w in adapter.modules.items():
        _check_fits(name, layers[name], tuple(w.down.shape), tuple(w.up.shape), adapter.name)
