"""BigVGAN's discriminators, used frozen as feature extractors when a vocoder is fine-tuned.

NVIDIA trains BigVGAN against two discriminators: the multi-period discriminator (MPD, from
HiFi-GAN) and a second, spectral one: UnivNet's multi-resolution discriminator (MRD, BigVGAN v1)
or the multi-scale sub-band CQT discriminator (CQTD, BigVGAN v2; ``use_cqtd_instead_of_mrd`` in
the release's config.json). The released ``bigvgan_discriminator_optimizer.pt`` stores them as
``{"mpd": ..., "mrd": ..., "optim_g": ..., "optim_d": ..., "steps": ..., "epoch": ...}`` (the
second one is called ``mrd`` whatever its kind).

Attribute names equal the released state-dict keys. Convolutions are plain: the file stores most
of them as weight-norm factors, which :mod:`bigvgan.discriminator_loading` folds into plain
weights after checking that exactly the convolutions the reference wraps in weight norm have
them. ``forward`` returns the feature maps only (what feature matching compares).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.1

SECOND_KINDS = ("cqtd", "mrd")


@dataclass(frozen=True)
class DiscriminatorConfig:
    """The hyperparameters of the release's config.json that shape the discriminators."""

    sampling_rate: int
    second: str = "cqtd"  # "cqtd" (BigVGAN v2) | "mrd" (BigVGAN v1)
    mpd_reshapes: tuple[int, ...] = (2, 3, 5, 7, 11)
    discriminator_channel_mult: float = 1
    use_spectral_norm: bool = False
    # MRD: (n_fft, hop, win) per resolution
    resolutions: tuple[tuple[int, int, int], ...] = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
    mrd_channel_mult: float | None = None
    # CQTD
    cqtd_filters: int = 32
    cqtd_max_filters: int = 1024
    cqtd_filters_scale: int = 1
    cqtd_dilations: tuple[int, ...] = (1, 2, 4)
    cqtd_in_channels: int = 1
    cqtd_out_channels: int = 1
    cqtd_hop_lengths: tuple[int, ...] = (512, 256, 256)
    cqtd_n_octaves: tuple[int, ...] = (9, 9, 9)
    cqtd_bins_per_octaves: tuple[int, ...] = (24, 36, 48)
    cqtd_normalize_volume: bool = False

    def __post_init__(self) -> None:
        if self.second not in SECOND_KINDS:
            raise ValueError(f"second discriminator must be one of {SECOND_KINDS}, got {self.second!r}")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "DiscriminatorConfig":
        """From a BigVGAN training config.json (keys that do not shape the discriminators are ignored)."""
        if data.get("use_mbd_instead_of_mrd"):
            raise ValueError("the multi-band discriminator (use_mbd_instead_of_mrd) is not supported")
        second = "cqtd" if data.get("use_cqtd_instead_of_mrd") else "mrd"
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {k: v for k, v in data.items()
                                  if k in known and k != "second" and v is not None}
        for key, value in list(kwargs.items()):
            if isinstance(value, list):
                kwargs[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        return cls(second=second, **kwargs)


# The discriminators of nvidia/bigvgan_v2_44khz_128band_512x (its config.json).
BIGVGAN_V2_44K_DISCRIMINATORS = DiscriminatorConfig(sampling_rate=44_100, second="cqtd", cqtd_filters=128)


def _weight_normed(conv: nn.Module) -> nn.Module:
    """Mark a conv the reference wraps in weight norm: its file entry holds (gain, direction)."""
    conv.weight_normed = True
    return conv


def weight_normed_prefixes(module: nn.Module) -> set[str]:
    """``"<name>."`` of every conv inside ``module`` whose released weights are weight-normed."""
    return {f"{name}." for name, m in module.named_modules() if getattr(m, "weight_normed", False)}


def _pad(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class PeriodDiscriminator(nn.Module):
    """Looks at the waveform folded into rows of ``period`` samples (2-D convs along time)."""

    def __init__(self, period: int, channel_mult: float = 1, kernel_size: int = 5, stride: int = 3) -> None:
        super().__init__()
        self.period = period
        widths = [1] + [int(c * channel_mult) for c in (32, 128, 512, 1024, 1024)]
        strides = (stride, stride, stride, stride, 1)
        self.convs = nn.ModuleList(
            _weight_normed(nn.Conv2d(cin, cout, (kernel_size, 1), (s, 1), padding=(_pad(5), 0)))
            for cin, cout, s in zip(widths[:-1], widths[1:], strides))
        self.conv_post = _weight_normed(nn.Conv2d(widths[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, c, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period), mode="reflect")
        x = x.view(b, c, -1, self.period)
        fmaps = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            fmaps.append(x)
        fmaps.append(self.conv_post(x))
        return fmaps


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            PeriodDiscriminator(p, cfg.discriminator_channel_mult) for p in cfg.mpd_reshapes)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        return [d(x) for d in self.discriminators]


class ResolutionDiscriminator(nn.Module):
    """2-D convs over one linear-magnitude STFT (UnivNet's MRD member)."""

    def __init__(self, resolution: Sequence[int], channel_mult: float = 1) -> None:
        super().__init__()
        self.n_fft, self.hop, self.win = (int(v) for v in resolution)
        ch = int(32 * channel_mult)
        self.convs = nn.ModuleList([
            _weight_normed(nn.Conv2d(1, ch, (3, 9), padding=(1, 4))),
            *(_weight_normed(nn.Conv2d(ch, ch, (3, 9), stride=(1, 2), padding=(1, 4))) for _ in range(3)),
            _weight_normed(nn.Conv2d(ch, ch, (3, 3), padding=(1, 1))),
        ])
        self.conv_post = _weight_normed(nn.Conv2d(ch, 1, (3, 3), padding=(1, 1)))

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        side = (self.n_fft - self.hop) // 2
        x = F.pad(x, (side, side), mode="reflect").squeeze(1)
        # rectangular: the reference calls torch.stft without a window (= ones of win_length)
        window = torch.ones(self.win, device=x.device)
        spec = torch.stft(x.float(), n_fft=self.n_fft, hop_length=self.hop, win_length=self.win,
                          window=window, center=False, return_complex=True)
        return spec.abs()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.spectrogram(x).unsqueeze(1).to(x.dtype)
        fmaps = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), LRELU_SLOPE)
            fmaps.append(h)
        fmaps.append(self.conv_post(h))
        return fmaps


class MultiResolutionDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        mult = cfg.mrd_channel_mult if cfg.mrd_channel_mult is not None else cfg.discriminator_channel_mult
        self.discriminators = nn.ModuleList(ResolutionDiscriminator(r, mult) for r in cfg.resolutions)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        return [d(x) for d in self.discriminators]


def _nnaudio_cqt(**kwargs: Any) -> nn.Module:
    try:
        from nnAudio.features.cqt import CQT2010v2
    except ImportError as exc:  # only needed for the 44.1 kHz discriminator
        raise ImportError("The BigVGAN v2 CQT discriminator needs the nnAudio package: "
                          "pip install nnAudio") from exc
    return CQT2010v2(**kwargs)


class CQTDiscriminator(nn.Module):
    """2-D convs over a constant-Q transform (real and imaginary parts as two channels), each
    octave first through its own small conv (the "sub-band" part)."""

    def __init__(self, cfg: DiscriminatorConfig, hop_length: int, n_octaves: int, bins_per_octave: int) -> None:
        super().__init__()
        import torchaudio

        self.n_octaves = n_octaves
        self.bins_per_octave = bins_per_octave
        self.normalize_volume = cfg.cqtd_normalize_volume
        kernel, stride = (3, 9), (1, 2)
        in_ch = cfg.cqtd_in_channels * 2
        # the reference analyses at twice the sampling rate, so the CQT reaches the Nyquist band
        self.cqt_transform = _nnaudio_cqt(sr=cfg.sampling_rate * 2, hop_length=hop_length,
                                          n_bins=bins_per_octave * n_octaves,
                                          bins_per_octave=bins_per_octave, output_format="Complex",
                                          pad_mode="constant", verbose=False)
        self.conv_pres = nn.ModuleList(
            nn.Conv2d(in_ch, in_ch, kernel, padding=(_pad(3), _pad(9))) for _ in range(n_octaves))
        width = lambda i: min(cfg.cqtd_filters_scale ** i * cfg.cqtd_filters, cfg.cqtd_max_filters)  # noqa: E731
        self.convs = nn.ModuleList([nn.Conv2d(in_ch, cfg.cqtd_filters, kernel, padding=(_pad(3), _pad(9)))])
        cin = width(1)
        for i, dilation in enumerate(cfg.cqtd_dilations):
            cout = width(i + 1)
            self.convs.append(_weight_normed(nn.Conv2d(
                cin, cout, kernel, stride=stride, dilation=(dilation, 1),
                padding=(_pad(3, dilation), _pad(9)))))
            cin = cout
        cout = width(len(cfg.cqtd_dilations) + 1)
        self.convs.append(_weight_normed(nn.Conv2d(cin, cout, (3, 3), padding=(1, 1))))
        self.conv_post = _weight_normed(nn.Conv2d(cout, cfg.cqtd_out_channels, (3, 3), padding=(1, 1)))
        self.resample = torchaudio.transforms.Resample(orig_freq=cfg.sampling_rate,
                                                       new_freq=cfg.sampling_rate * 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.normalize_volume:
            x = x - x.mean(dim=-1, keepdim=True)
            x = 0.8 * x / (x.abs().amax(dim=-1, keepdim=True) + 1e-9)
        z = self.cqt_transform(self.resample(x.float()))  # [B, bins, frames, (re, im)]
        z = z.permute(0, 3, 2, 1).to(x.dtype)  # [B, 2, frames, bins]
        bpo = self.bins_per_octave
        h = torch.cat([conv(z[..., i * bpo:(i + 1) * bpo]) for i, conv in enumerate(self.conv_pres)], dim=-1)
        fmaps = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), LRELU_SLOPE)
            fmaps.append(h)
        # the reference leaves the final logits out of the CQT discriminator's feature maps
        return fmaps


class MultiScaleSubbandCQTDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        scales = zip(cfg.cqtd_hop_lengths, cfg.cqtd_n_octaves, cfg.cqtd_bins_per_octaves)
        self.discriminators = nn.ModuleList(
            CQTDiscriminator(cfg, hop, octaves, bpo) for hop, octaves, bpo in scales)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        return [d(x) for d in self.discriminators]


@dataclass
class PretrainedDiscriminators:
    """The release's MPD and second discriminator, frozen (feature extractors only)."""

    mpd: nn.Module
    second: nn.Module
    config: DiscriminatorConfig
    source: str = ""
    extra: dict = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "PretrainedDiscriminators":
        self.mpd.to(device)
        self.second.to(device)
        return self

    def feature_maps(self, wave: torch.Tensor) -> list[torch.Tensor]:
        """Every feature map of both discriminators for a waveform [B, 1, T], flattened into one list."""
        return [f for fmaps in (*self.mpd(wave), *self.second(wave)) for f in fmaps]


def build_second(cfg: DiscriminatorConfig) -> nn.Module:
    return MultiScaleSubbandCQTDiscriminator(cfg) if cfg.second == "cqtd" else MultiResolutionDiscriminator(cfg)
