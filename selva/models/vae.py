"""SelVA's 1-D mel-spectrogram VAE (``ext_weights/v1-16.pth``, ``ext_weights/v1-44.pth``).

Built from EDM2-style magnitude-preserving layers: convolutions without bias whose weights are
normalised per output channel, pixel-norm at the start of every residual block, SiLU divided by
0.596 and residual sums that keep unit variance. The released files store the *raw* conv weights;
the normalisation (``remove_weight_norm``) is applied once right after loading, as the reference
does before inference.

Layouts (channels first throughout):
    mel     [B, data_dim, T]       log-mel from ``selva.models.mel`` (T even)
    moments [B, 2 * embed_dim, T/2] -> mean, logvar [B, embed_dim, T/2]
    latent  [B, embed_dim, T/2]    what ``decode`` takes. SelVA's generator works on
                                   [B, L, embed_dim] sequences; transpose(1, 2) before decode,
                                   exactly as the reference's FeaturesUtils.decode does.
The VAE works in a normalised mel space: ``encode`` subtracts data_mean and divides by data_std
(per mel band) first, ``decode`` undoes it at the end.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SelvaError
from ..weights import load_checkpoint
from .state_dicts import (check_fit, drop_mapped_pages, file_mapping_span, load_strict, memory_span,
                          release_file_pages, shapes_of)

log = logging.getLogger(__name__)

# Normalisation eps of the magnitude-preserving layers.
_NORM_EPS = 1e-4
# SiLU's output std for unit-normal input; dividing by it keeps activations at unit magnitude.
_SILU_GAIN = 0.596
# Residual blend weight of the branch (mp_sum with t=0.3).
_RES_BLEND = 0.3
# logvar is clamped to this range before exp(), as in the reference's Gaussian posterior.
_LOGVAR_RANGE = (-30.0, 20.0)


@dataclass(frozen=True)
class VAEConfig:
    data_dim: int  # mel bands
    embed_dim: int  # latent channels
    hidden_dim: int
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    # levels that get self-attention after each block (3 is out of range for three levels: the
    # released nets only have the attention in the middle block) and that halve time
    attn_layers: tuple[int, ...] = (3,)
    down_layers: tuple[int, ...] = (0,)
    kernel_size: int = 3
    clip_act: float = 256.0


VAE_16K = VAEConfig(data_dim=80, embed_dim=20, hidden_dim=384)
VAE_44K = VAEConfig(data_dim=128, embed_dim=40, hidden_dim=512)

# ----------------------------------------------------------------------------------------------
# magnitude-preserving primitives


def mp_normalize(x: torch.Tensor, dim: Union[int, Sequence[int], None] = None,
                 eps: float = _NORM_EPS) -> torch.Tensor:
    """Scale x so its RMS over ``dim`` (default: all but the first axis) is one.

    The norm is accumulated in fp32 (fp16 sums of squares overflow), the division in x's dtype.
    """
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    # ||x|| * sqrt(n_reduced / n_total) = ||x|| / sqrt(count per norm) = RMS
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / _SILU_GAIN


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Blend (1 - t) * a + t * b, rescaled back to unit variance for independent inputs."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


class MPConv1D(nn.Module):
    """Bias-free 1-D conv whose weight is unit-normalised per output channel before use.

    ``remove_weight_norm`` bakes that normalisation (and the 1/sqrt(fan_in) scale) into
    ``weight`` once; forward refuses to run before it, since raw weights give garbage.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size))
        self.weight_norm_removed = False

    def forward(self, x: torch.Tensor, gain: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.weight_norm_removed:
            raise RuntimeError("MPConv1D used before remove_weight_norm(); load weights through "
                               "load_vae or call AudioVAE.remove_weight_norm()")
        w = self.weight if gain is None else self.weight * gain
        return F.conv1d(x, w, padding=(w.shape[-1] // 2,))

    @torch.no_grad()
    def remove_weight_norm(self) -> None:
        if self.weight_norm_removed:
            return
        if self.weight.is_meta:
            # shape-only network (strict-load checks): nothing to compute
            self.weight_norm_removed = True
            return
        w = mp_normalize(self.weight.to(torch.float32))
        w = w / math.sqrt(w[0].numel())
        # rebind rather than copy_: after an assign-load the old storage may belong to the
        # caller's state dict, which must stay raw (loading it twice would normalise twice)
        self.weight.data = w.to(self.weight.dtype)
        self.weight_norm_removed = True


# ----------------------------------------------------------------------------------------------
# blocks


class ResnetBlock1D(nn.Module):
    def __init__(self, *, in_dim: int, out_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.conv1 = MPConv1D(in_dim, out_dim, kernel_size)
        self.conv2 = MPConv1D(out_dim, out_dim, kernel_size)
        if in_dim != out_dim:
            self.nin_shortcut = MPConv1D(in_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = mp_normalize(x, dim=1)  # pixel norm over channels
        h = self.conv1(mp_silu(x))
        h = self.conv2(mp_silu(h))
        if self.in_dim != self.out_dim:
            x = self.nin_shortcut(x)
        return mp_sum(x, h, _RES_BLEND)


class AttnBlock1D(nn.Module):
    """Single-head self-attention over time with cosine-normalised q, k, v."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.qkv = MPConv1D(channels, channels * 3, 1)
        self.proj_out = MPConv1D(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, length = x.shape
        y = self.qkv(x)
        # qkv channels are interleaved per channel: index = (c, [q|k|v]); one head
        y = y.reshape(b, 1, -1, 3, length)
        q, k, v = mp_normalize(y, dim=2).unbind(3)  # each [B, 1, C, L]
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                           v.transpose(-1, -2))  # [B, 1, L, C]
        h = h.transpose(-1, -2).reshape(b, -1, length)
        return mp_sum(x, self.proj_out(h), _RES_BLEND)


class Downsample1D(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = MPConv1D(channels, channels, 1)
        self.conv2 = MPConv1D(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.avg_pool1d(self.conv1(x), kernel_size=2, stride=2))


class Upsample1D(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = MPConv1D(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest-exact"))


class _Level(nn.Module):
    """One resolution level: residual blocks, optional attention after each, optional resample."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()

    def run_blocks(self, h: torch.Tensor, clip: float) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
            h = h.clamp(-clip, clip)
        return h


class _Middle(nn.Module):
    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock1D(in_dim=channels, out_dim=channels, kernel_size=kernel_size)
        self.attn_1 = AttnBlock1D(channels)
        self.block_2 = ResnetBlock1D(in_dim=channels, out_dim=channels, kernel_size=kernel_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder1D(nn.Module):
    """Normalised mel [B, data_dim, T] -> moments [B, 2 * embed_dim, T / 2**len(down_layers)]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.clip_act = cfg.clip_act
        dim, k = cfg.hidden_dim, cfg.kernel_size
        self.conv_in = MPConv1D(cfg.data_dim, dim, k)
        self.down = nn.ModuleList()
        ch = dim
        for level, mult in enumerate(cfg.ch_mult):
            stage = _Level()
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock1D(in_dim=ch, out_dim=dim * mult, kernel_size=k))
                ch = dim * mult
                if level in cfg.attn_layers:
                    stage.attn.append(AttnBlock1D(ch))
            if level in cfg.down_layers:
                stage.downsample = Downsample1D(ch)
            self.down.append(stage)
        self.mid = _Middle(ch, k)
        self.conv_out = MPConv1D(ch, 2 * cfg.embed_dim, k)
        # scalar gain on the output conv, trained from 0 (multiplies the weight by 1 + gain)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            h = stage.run_blocks(h, self.clip_act)
            if level in self.cfg.down_layers:
                h = stage.downsample(h)
        h = self.mid(h).clamp(-self.clip_act, self.clip_act)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class Decoder1D(nn.Module):
    """Latent [B, embed_dim, L] -> normalised mel [B, data_dim, L * 2**len(down_layers)]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.clip_act = cfg.clip_act
        dim, k = cfg.hidden_dim, cfg.kernel_size
        # level i upsamples where encoder level i - 1 downsampled (mirror image)
        self.up_levels = tuple(i + 1 for i in cfg.down_layers)
        ch = dim * cfg.ch_mult[-1]
        self.conv_in = MPConv1D(cfg.embed_dim, ch, k)
        # the reference builds these blocks with the default kernel size 3
        self.mid = _Middle(ch, 3)
        levels: list[_Level] = []
        for level in reversed(range(len(cfg.ch_mult))):
            stage = _Level()
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(ResnetBlock1D(in_dim=ch, out_dim=dim * cfg.ch_mult[level]))
                ch = dim * cfg.ch_mult[level]
                if level in cfg.attn_layers:
                    stage.attn.append(AttnBlock1D(ch))
            if level in self.up_levels:
                stage.upsample = Upsample1D(ch)
            levels.insert(0, stage)
        # indexed by level (up.0 is the finest), matching the checkpoint keys
        self.up = nn.ModuleList(levels)
        self.conv_out = MPConv1D(ch, cfg.data_dim, k)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid(h).clamp(-self.clip_act, self.clip_act)
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            h = stage.run_blocks(h, self.clip_act)
            if level in self.up_levels:
                h = stage.upsample(h)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


# ----------------------------------------------------------------------------------------------
# posterior and the VAE


@dataclass
class GaussianPosterior:
    """Diagonal Gaussian over the latent, [B, embed_dim, L] each."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> "GaussianPosterior":
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return cls(mean, logvar.clamp(*_LOGVAR_RANGE))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean


class AudioVAE(nn.Module):
    """The mel VAE. ``need_encoder=False`` builds the decoder only (the 16k/44k pipelines decode
    generated latents and never encode, saving ~40% of the weights)."""

    def __init__(self, cfg: VAEConfig, *, need_encoder: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        # Per-band statistics of the training log-mels: persistent buffers that every released
        # file carries (a load fills them); a network that was never loaded normalises nothing.
        self.register_buffer("data_mean", torch.zeros(1, cfg.data_dim, 1))
        self.register_buffer("data_std", torch.ones(1, cfg.data_dim, 1))
        self.encoder: Optional[Encoder1D] = Encoder1D(cfg) if need_encoder else None
        self.decoder = Decoder1D(cfg)

    @property
    def has_encoder(self) -> bool:
        return self.encoder is not None

    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.data_mean) / self.data_std

    def unnormalize(self, mel: torch.Tensor) -> torch.Tensor:
        return mel * self.data_std + self.data_mean

    def encode(self, mel: torch.Tensor) -> GaussianPosterior:
        """Log-mel [B, data_dim, T] -> posterior over latents [B, embed_dim, T / 2]."""
        if self.encoder is None:
            raise SelvaError("this VAE was loaded without its encoder (decoder-only mode)")
        return GaussianPosterior.from_moments(self.encoder(self.normalize(mel)))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent [B, embed_dim, L] (channels first) -> log-mel [B, data_dim, 2 L]."""
        if latent.ndim != 3 or latent.shape[1] != self.cfg.embed_dim:
            raise SelvaError(f"expected a latent [B, {self.cfg.embed_dim}, L], got "
                             f"{tuple(latent.shape)} (transpose a [B, L, C] sequence first)")
        return self.unnormalize(self.decoder(latent))

    def mp_convs(self) -> Iterator[MPConv1D]:
        return (m for m in self.modules() if isinstance(m, MPConv1D))

    def remove_weight_norm(self) -> "AudioVAE":
        """Bake the per-channel weight normalisation in (once; later calls do nothing)."""
        for conv in self.mp_convs():
            conv.remove_weight_norm()
        return self


# ----------------------------------------------------------------------------------------------
# loading

PathLike = Union[str, os.PathLike]


def _encoder_shapes(cfg: VAEConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        enc = Encoder1D(cfg)
    return {f"encoder.{k}": v.shape for k, v in enc.state_dict().items()}


def _load_raw(model: AudioVAE, sd: Mapping[str, Any], *, source: str) -> None:
    """Strict key/shape check and load of the raw (not yet normalised) weights."""
    what = f"VAE (data_dim={model.cfg.data_dim}, embed_dim={model.cfg.embed_dim})"
    hint = "Use the v1-16 file for 16 kHz models and v1-44 for 44.1 kHz ones."
    state = sd
    if not model.has_encoder:
        # The decoder-only network has no place for the encoder: check those entries against the
        # full architecture first, then leave them out.
        expected = shapes_of(model.state_dict())
        expected.update(_encoder_shapes(model.cfg))
        check_fit(expected, sd, source=source, what=what, hint=hint)
        state = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
    load_strict(model, state, source=source, what=what, hint=hint)
    for conv in model.mp_convs():
        conv.weight_norm_removed = False  # fresh raw weights


def _finish(model: AudioVAE) -> AudioVAE:
    model.remove_weight_norm()
    model.eval()
    model.requires_grad_(False)
    return model


def load_vae(path_or_state: PathLike | Mapping[str, Any], cfg: VAEConfig, *,
             need_encoder: bool = True, source: Optional[str] = None) -> AudioVAE:
    """Build the VAE for ``cfg`` and load ``v1-16.pth`` / ``v1-44.pth`` (path or loaded dict).

    The network is built on the meta device and takes over the file's tensors, so no randomly
    initialised copy is ever allocated.
    """
    with torch.device("meta"):
        model = AudioVAE(cfg, need_encoder=need_encoder)
    if isinstance(path_or_state, (str, os.PathLike)):
        source = source or str(path_or_state)
        log.debug("loading VAE from %s (encoder: %s)", source, need_encoder)
        sd = load_checkpoint(path_or_state)
        span = memory_span(sd)
        mapped = file_mapping_span(sd)
        _load_raw(model, sd, source=source)
        # the file's dict is ours: dropping it lets each raw weight be freed as soon as its
        # normalised replacement exists, and a memory-mapped file's pages of that weight are let
        # go at once (peak ~ one file, not two)
        del sd
        for conv in model.mp_convs():
            raw = conv.weight.data
            conv.remove_weight_norm()
            drop_mapped_pages(raw, mapped)
            del raw
        model = _finish(model)
        release_file_pages(model, span)  # and the mapped file itself, once nothing views it
        return model
    _load_raw(model, path_or_state, source=source or "VAE state dict")
    return _finish(model)


def load_vae_statistics(path: PathLike, cfg: VAEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The mel normalisation statistics ``(data_mean, data_std)``, each ``(data_dim,)`` float32,
    read from a VAE file without building the network (the file is memory-mapped, so only
    these two small tensors are read)."""
    sd = load_checkpoint(path)
    stats = []
    for name in ("data_mean", "data_std"):
        t = sd.get(name) if isinstance(sd, Mapping) else None
        if not isinstance(t, torch.Tensor) or t.numel() != cfg.data_dim:
            raise SelvaError(f"{path} has no {name} of {cfg.data_dim} values: it is not the VAE of "
                             f"this model. Use the v1-16 file for 16 kHz models and v1-44 for "
                             f"44.1 kHz ones.")
        stats.append(t.detach().float().reshape(-1).clone())
    return stats[0], stats[1]
