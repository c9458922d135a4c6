"""One vocoder-tuning run's networks, data and loss: what the shared training loop drives.

The vocoder is copied (outside inference mode, in fp32) onto the compute device; only that copy,
the mel converters and (optionally) the frozen discriminators live there while training. The
pipeline's own vocoder is never changed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import SelvaError
from ..hooks import NO_HOOKS, Hooks
from ..models.mel import MelConverter
from .checkpoint import identity_of, metadata, tuned_tensors
from .data import AudioSegments, segment_samples
from .losses import LossTerms, LossWeights, MultiResolutionSTFTLoss, feature_matching, l2sp, mel_l1, natural_log_mel
from .params import check_train_mode, snapshot, trainable_copy, trainable_parameters

log = logging.getLogger(__name__)


@dataclass
class VocoderTuningConfig:
    """The Trainer node's inputs (paths already resolved)."""

    data_dir: Path
    output_path: Path
    train_mode: str = "snake_alpha_only"
    steps: int = 2000
    lr: float = 1e-4
    batch_size: int = 4
    segment_seconds: float = 1.0
    lambda_l2sp: float = 1e-3
    save_every: int = 500
    seed: int = 0
    discriminator_path: Optional[Path] = None
    resume: Optional[Path] = None

    def validate(self) -> "VocoderTuningConfig":
        check_train_mode(self.train_mode)
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise SelvaError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.save_every < 0:
            raise SelvaError(f"save_every must be 0 (only at the end) or positive, got {self.save_every}.")
        if not self.lr > 0:
            raise SelvaError(f"lr must be positive, got {self.lr}.")
        if self.lambda_l2sp < 0:
            raise SelvaError(f"lambda_l2sp must be 0 or more, got {self.lambda_l2sp}.")
        if self.segment_seconds <= 0:
            raise SelvaError(f"segment_seconds must be positive, got {self.segment_seconds}.")
        return self


def _discriminators_for(pipe, path: Path):
    try:
        from ...bigvgan.discriminator_loading import discriminator_config, load_discriminators
        from ...bigvgan.discriminators import BIGVGAN_V2_44K_DISCRIMINATORS, DiscriminatorConfig
    except ImportError:  # selva imported as a top-level package
        from bigvgan.discriminator_loading import discriminator_config, load_discriminators
        from bigvgan.discriminators import BIGVGAN_V2_44K_DISCRIMINATORS, DiscriminatorConfig

    spec = pipe.variant
    path = Path(path)
    if spec.vocoder == "bigvgan_v2":
        default = replace(BIGVGAN_V2_44K_DISCRIMINATORS, sampling_rate=spec.sample_rate)
        builders = getattr(pipe, "_builders", None)
        if builders is not None and spec.vocoder_snapshot:  # the hub snapshot's config.json
            default = discriminator_config(builders._snapshot(spec.vocoder_snapshot) / "config.json", default)
    else:
        # BigVGAN v1's training set-up (MPD + MRD). SelVA's 16 kHz best_netG.pt was published
        # without discriminators, so only a user's own file of this layout can be given.
        default = DiscriminatorConfig(sampling_rate=spec.sample_rate, second="mrd")
    # a BigVGAN training run keeps its config.json beside its do_* discriminator files
    cfg = discriminator_config(path.parent / "config.json", default)
    if not Path(path).is_file():
        hint = ("SelVA's 16 kHz vocoder (best_netG.pt) was released WITHOUT discriminators: leave "
                "discriminator_path empty to tune with the mel + STFT losses, or give a BigVGAN v1 "
                "discriminator file (MPD + MRD) of your own."
                if spec.vocoder == "bigvgan_v1" else
                "Download bigvgan_discriminator_optimizer.pt from nvidia/bigvgan_v2_44khz_128band_512x.")
        raise SelvaError(f"Discriminator file not found: {path}. {hint}")
    return load_discriminators(path, cfg)


class VocoderTuner:
    """Holds the trainable vocoder copy, the data and the losses of one run."""

    def __init__(self, pipe, cfg: VocoderTuningConfig, hooks: Hooks = NO_HOOKS) -> None:
        # ComfyUI runs nodes in inference mode: everything autograd touches is made outside it
        with torch.inference_mode(False):
            self._build(pipe, cfg, hooks)

    def _build(self, pipe, cfg: VocoderTuningConfig, hooks: Hooks) -> None:
        self.pipe = pipe
        self.cfg = cfg.validate()
        self.device = pipe.device
        spec = pipe.variant
        if pipe.stage_name("vocoder") != "vocoder":
            log.warning("The model already has a tuned vocoder; tuning starts again from the base "
                        "vocoder (use resume to continue a run).")
        base = pipe.manager.get("vocoder")
        self.vocoder = trainable_copy(base, cfg.train_mode, self.device)
        del base
        self.params = trainable_parameters(self.vocoder, cfg.train_mode)
        self.anchor = snapshot(self.params)
        self.hop = int(self.vocoder.hop_length)
        if self.hop != spec.mel.hop_size:
            raise SelvaError(f"The vocoder's hop ({self.hop}) differs from the mel hop ({spec.mel.hop_size}).")
        self.sample_rate = int(spec.sample_rate)
        self.mel_input = MelConverter(spec.mel).to(self.device)  # what the vocoder reads
        self.mel_loss = natural_log_mel(spec.mel).to(self.device)
        self.stft_loss = MultiResolutionSTFTLoss().to(self.device)
        self.discriminators = None
        if cfg.discriminator_path:
            self.discriminators = _discriminators_for(pipe, Path(cfg.discriminator_path)).to(self.device)
        self.weights = LossWeights.for_run(cfg.lambda_l2sp, self.discriminators is not None)
        length = segment_samples(cfg.segment_seconds, self.sample_rate, self.hop)
        self.data = AudioSegments.from_folder(cfg.data_dir, self.sample_rate, length,
                                              on_file=lambda d, n: hooks.step("reading audio", d, n))
        self.identity = identity_of(pipe)

    # --------------------------------------------------------------------------- training
    def trainable(self) -> list[nn.Parameter]:
        return list(self.params.values())

    def make_optimizer(self) -> torch.optim.Optimizer:
        # BigVGAN's own AdamW betas; no weight decay: L2-SP pulls toward the pretrained values instead
        return torch.optim.AdamW(self.trainable(), lr=self.cfg.lr, betas=(0.8, 0.99), weight_decay=0.0)

    def loss_terms(self, step: int) -> LossTerms:
        """The losses of training step ``step`` (its batch depends only on the seed and ``step``)."""
        y = self.data.batch(step, self.cfg.batch_size, self.cfg.seed).to(self.device)
        with torch.no_grad():
            mel = self.mel_input(y.squeeze(1))
        y_hat = self.vocoder(mel)
        terms = LossTerms(mel=mel_l1(self.mel_loss, y_hat, y), stft=self.stft_loss(y_hat, y),
                          l2sp=l2sp(self.params, self.anchor).to(self.device))
        if self.discriminators is not None:
            with torch.no_grad():
                real = self.discriminators.feature_maps(y)
            terms.feature_matching = feature_matching(self.discriminators.feature_maps(y_hat), real)
        return terms

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        terms = self.loss_terms(step)
        total = terms.total(self.weights)
        return total, {"loss": float(total.detach()), **terms.as_floats()}

    # ---------------------------------------------------------------------------- outputs
    @torch.no_grad()
    def eval_audio(self) -> torch.Tensor:
        """The vocoder's current resynthesis [1, 1, T] (CPU) of a fixed excerpt of the data."""
        y = self.data.eval_segment().to(self.device)
        return self.vocoder(self.mel_input(y.squeeze(1))).float().cpu()

    def tensors(self) -> dict[str, torch.Tensor]:
        return tuned_tensors(self.vocoder, self.cfg.train_mode)

    def metadata(self, steps: int) -> dict[str, str]:
        return metadata(self.identity, mode=self.cfg.train_mode, steps=steps, variant=self.pipe.variant.name)
