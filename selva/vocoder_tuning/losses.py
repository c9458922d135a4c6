"""The losses of vocoder tuning: mel L1, multi-resolution STFT, L2-SP and feature matching.

The waveform losses take [B, 1, T] (prediction first) and return one value per item, shape
[B], as the shared training loop wants them; spectral computations run in fp32. L2-SP is one
number for the whole network.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
from torch import nn

from ..models.mel import MelConfig, MelConverter

# (n_fft, hop, window) of the usual multi-resolution STFT loss (Parallel WaveGAN's set).
STFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
_MAG_FLOOR = 1e-7


@dataclass(frozen=True)
class LossWeights:
    mel: float = 1.0
    stft: float = 1.0
    l2sp: float = 1e-3
    feature_matching: float = 0.0
    phase: float = 0.0

    @classmethod
    def for_run(cls, lambda_l2sp: float, with_discriminators: bool, lambda_phase: float = 0.0) -> "LossWeights":
        """Reconstruction only: mel L1 + STFT. With the pretrained discriminators, feature matching
        (summed over every layer of both) leads and the spectral terms only keep it anchored.
        ``lambda_phase`` adds the complex-STFT term (0 = not computed)."""
        if with_discriminators:
            return cls(mel=0.1, stft=0.1, l2sp=lambda_l2sp, feature_matching=1.0, phase=lambda_phase)
        return cls(mel=1.0, stft=1.0, l2sp=lambda_l2sp, phase=lambda_phase)


def natural_log_mel(cfg: MelConfig) -> MelConverter:
    """The vocoder's own mel analysis, with the natural log BigVGAN's training loss uses."""
    return MelConverter(replace(cfg, log="ln"))


def _per_item_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def mel_l1(mel: MelConverter, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _per_item_mean((mel(pred.squeeze(1).float()) - mel(target.squeeze(1).float())).abs())


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence plus log-magnitude L1, averaged over several STFT resolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.resolutions = STFT_RESOLUTIONS
        for i, (_, _, win) in enumerate(self.resolutions):
            self.register_buffer(f"window_{i}", torch.hann_window(win), persistent=False)

    def _magnitude(self, x: torch.Tensor, i: int) -> torch.Tensor:
        n_fft, hop, win = self.resolutions[i]
        spec = torch.stft(x, n_fft, hop_length=hop, win_length=win, window=getattr(self, f"window_{i}"),
                          return_complex=True)
        return spec.abs().clamp_min(_MAG_FLOOR)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.squeeze(1).float(), target.squeeze(1).float()
        total = pred.new_zeros(pred.shape[0])
        for i in range(len(self.resolutions)):
            p, t = self._magnitude(pred, i), self._magnitude(target, i)
            convergence = (t - p).flatten(1).norm(dim=1) / t.flatten(1).norm(dim=1).clamp_min(_MAG_FLOOR)
            total = total + convergence + _per_item_mean((p.log() - t.log()).abs())
        return total / len(self.resolutions)


def phase_aware_stft(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-item L1 on the real part, imaginary part and magnitude of the STFT, averaged over the
    resolutions (FA-GAN's phase-aware loss): unlike magnitude losses it sees a right spectrum with
    the wrong phase (smeared transients), so it keeps attacks sharp."""
    pred, target = pred.squeeze(1).float(), target.squeeze(1).float()
    total = pred.new_zeros(pred.shape[0])
    for n_fft, hop, win in STFT_RESOLUTIONS:
        window = torch.hann_window(win, device=pred.device)
        p = torch.stft(pred, n_fft, hop_length=hop, win_length=win, window=window, return_complex=True)
        t = torch.stft(target, n_fft, hop_length=hop, win_length=win, window=window, return_complex=True)
        total = total + (_per_item_mean((p.real - t.real).abs()) + _per_item_mean((p.imag - t.imag).abs())
                         + _per_item_mean((p.abs() - t.abs()).abs()))
    return total / (3 * len(STFT_RESOLUTIONS))


def l2sp(params: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """Squared distance of the trained tensors to their pretrained values (Li et al., L2-SP)."""
    terms = [(p - anchor[n]).pow(2).sum() for n, p in params.items()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def feature_matching(pred_maps: Sequence[torch.Tensor], target_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean L1 between the discriminators' feature maps of prediction and target, summed over layers."""
    total = pred_maps[0].new_zeros(pred_maps[0].shape[0], dtype=torch.float32)
    for p, t in zip(pred_maps, target_maps):
        total = total + _per_item_mean((p.float() - t.float()).abs())
    return total


@dataclass
class LossTerms:
    mel: torch.Tensor
    stft: torch.Tensor
    l2sp: torch.Tensor
    feature_matching: Optional[torch.Tensor] = None
    phase: Optional[torch.Tensor] = None

    def total(self, w: LossWeights) -> torch.Tensor:
        """Per-item totals [B]; the network-wide L2-SP term is added to every item (the loop
        averages items, so it counts once)."""
        loss = w.mel * self.mel + w.stft * self.stft + w.l2sp * self.l2sp
        if self.feature_matching is not None:
            loss = loss + w.feature_matching * self.feature_matching
        if self.phase is not None:
            loss = loss + w.phase * self.phase
        return loss
