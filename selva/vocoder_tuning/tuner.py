"""One vocoder-tuning run's networks, data and loss: what the shared training loop drives.

The vocoder is copied (outside inference mode, in fp32) onto the compute device; only that copy,
the mel converters and (optionally) the frozen discriminators live there while training. The
pipeline's own vocoder is never changed.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..artifacts import unique_path
from ..errors import SelvaError
from ..hooks import NO_HOOKS, Hooks
from ..loading import bigvgan_errors
from ..models.mel import MelConverter
from ..offload import module_bytes
from ..train.options import check_limits, setting
from ..train.loop import Batch, LoopConfig, StepInfo, TrainResult, TrainTask, list_checkpoints, run_training
from .checkpoint import identity_of, metadata, save_tuned_vocoder, tuned_tensors
from .data import AudioSegments, segment_samples
from .gafilter import attach_gafilters
from .losses import (LossTerms, LossWeights, MultiResolutionSTFTLoss, feature_matching, l2sp, mel_l1,
                     natural_log_mel, phase_aware_stft)
from .params import TRAIN_MODES, check_train_mode, snapshot, trainable_copy, trainable_parameters
from .stage import fresh_base_vocoder

log = logging.getLogger(__name__)


@dataclass
class VocoderTuningConfig:
    """A vocoder-tuning run: its folders (paths already resolved) and its settings, each setting
    written once (the Trainer node's inputs and the CLI's options come from these fields)."""

    data_dir: Path
    output_path: Path
    train_mode: str = setting("snake_alpha_only", "snake_alpha_only: only the periodic activations' "
                              "alpha/beta train (54,480 numbers in both released vocoders, hard to break). all_params: every "
                              "weight (stronger, needs more data, can add artefacts).", choices=TRAIN_MODES)
    steps: int = setting(2000, "Optimizer steps in total (a resumed run continues to this).", min=1,
                         max=1_000_000)
    lr: float = setting(1e-4, "Learning rate (AdamW, BigVGAN's betas 0.8/0.99). 1e-4 is BigVGAN's own; up to "
                        "1e-3 speeds snake_alpha_only up; lower it for all_params if artefacts appear.", min=1e-7, max=1e-1,
                        step=1e-5, round=False)
    batch_size: int = setting(4, "Segments per step.", min=1, max=64)
    segment_seconds: float = setting(1.0, "Length of each random training excerpt (rounded to whole mel "
                                     "frames).", min=0.1, max=10.0, step=0.1)
    lambda_l2sp: float = setting(1e-3, "Pull toward the pretrained weights (squared distance); higher keeps "
                                 "the original sound more, 0 lets it drift freely.", min=0.0, max=100.0,
                                 step=1e-4, round=False)
    save_every: int = setting(500, "Steps between checkpoints, tuned files and eval samples (0 = only at "
                              "the end).", min=0, max=1_000_000)
    seed: int = setting(0, "Seed of the segment choice; same seed, same run.", min=0, max=2**63 - 1, seed=True)
    # --- issue 23 (node inputs in this order, after the ones above)
    lambda_phase: float = setting(0.0, "Weight of the phase-aware loss (L1 on the STFT's real and imaginary "
                                  "parts and magnitude): keeps transients sharp. 0 = off; ~1 with it.",
                                  min=0.0, max=100.0, step=0.1)
    use_gafilter: bool = setting(False, "Add a learnable per-channel FIR filter (GAFilter) after each "
                                 "residual-block activation, starting as the identity: it can remove "
                                 "harmonic artefacts the Snake parameters alone cannot.")
    gafilter_kernel_size: int = setting(9, "GAFilter length in samples (odd): longer = finer frequency "
                                        "shaping.", min=1, max=63, step=2)
    lora_adapter: str = setting("", "Optional LoRA adapter (.safetensors): train on mels the generator makes "
                                "WITH it for each clip of data_dir (features .npz + same-name audio), paired "
                                "with the clip's recording, so the vocoder learns to turn the adapted "
                                "generator's mels into the real sound. Empty = mels of the recordings.")
    discriminator_path: Optional[Path] = None
    resume: Optional[Path] = None

    def validate(self) -> "VocoderTuningConfig":
        check_train_mode(self.train_mode)
        check_limits(self)
        if self.use_gafilter and self.gafilter_kernel_size % 2 == 0:
            raise SelvaError(f"gafilter_kernel_size must be an odd number, got {self.gafilter_kernel_size}.")
        return self


def _vocoder_snapshot(pipe) -> Optional[Path]:
    from .. import weights as W

    spec, opts = pipe.variant, pipe.options
    if not spec.vocoder_snapshot or opts.models_dir is None:
        return None
    try:
        return W.resolve_snapshot(W.HUB[spec.vocoder_snapshot], Path(opts.models_dir), allow_download=False)
    except W.MissingWeightsError:
        return None


def _discriminators_for(pipe, path: Path):
    try:
        from ...bigvgan.discriminator_loading import discriminator_config, load_discriminators
        from ...bigvgan.discriminators import BIGVGAN_V2_44K_DISCRIMINATORS, DiscriminatorConfig
    except ImportError:  # selva imported as a top-level package
        from bigvgan.discriminator_loading import discriminator_config, load_discriminators
        from bigvgan.discriminators import BIGVGAN_V2_44K_DISCRIMINATORS, DiscriminatorConfig

    spec = pipe.variant
    if spec.vocoder == "bigvgan_v2":
        default = replace(BIGVGAN_V2_44K_DISCRIMINATORS, sampling_rate=spec.sample_rate)
        snapshot_dir = _vocoder_snapshot(pipe)
        if snapshot_dir is not None:  # the hub snapshot's config.json, when it lists the discriminators
            default = discriminator_config(snapshot_dir / "config.json", default)
    else:
        # BigVGAN v1's training set-up (MPD + MRD). SelVA's 16 kHz best_netG.pt was published
        # without discriminators, so only a user's own file of this layout can be given.
        default = DiscriminatorConfig(sampling_rate=spec.sample_rate, second="mrd")
    # a BigVGAN training run keeps its config.json beside its do_* discriminator files
    cfg = discriminator_config(path.parent / "config.json", default)
    if not path.is_file():
        hint = ("SelVA's 16 kHz vocoder (best_netG.pt) was released WITHOUT discriminators: leave "
                "discriminator_path empty to tune with the mel + STFT losses, or give a BigVGAN v1 "
                "discriminator file (MPD + MRD) of your own."
                if spec.vocoder == "bigvgan_v1" else
                "Download bigvgan_discriminator_optimizer.pt from nvidia/bigvgan_v2_44khz_128band_512x.")
        raise SelvaError(f"Discriminator file not found: {path}. {hint}")
    return load_discriminators(path, cfg)


class VocoderTuner(TrainTask):
    """The vocoder-tuning task the shared training loop drives (selva/train/loop.py)."""

    resume_keys = ("variant", "vocoder", "sample_rate", "train_mode", "discriminators", "gafilter_kernel_size")

    # ComfyUI runs nodes in inference mode: everything autograd touches is made outside it
    @torch.inference_mode(False)
    def __init__(self, pipe, cfg: VocoderTuningConfig, hooks: Hooks = NO_HOOKS,
                 audio_cache: Optional[dict] = None) -> None:
        self.pipe = pipe
        self.cfg = cfg.validate()
        self.device = pipe.device
        spec = pipe.variant
        if pipe.stage_name("vocoder") != "vocoder":
            log.warning("The model already has a tuned vocoder; tuning starts again from the base "
                        "vocoder (use resume to continue a run).")
        # decode the data first: a bad folder fails before anything is loaded
        self.hop = int(spec.mel.hop_size)
        self.sample_rate = int(spec.sample_rate)
        length = segment_samples(cfg.segment_seconds, self.sample_rate, self.hop)
        self.pairs = None  # lora_adapter: (adapted generator's mel, recording) pairs instead of audio
        if str(cfg.lora_adapter or "").strip():
            from .lora_mels import lora_mel_pairs

            self.pairs = lora_mel_pairs(pipe, Path(cfg.data_dir), Path(cfg.lora_adapter), seed=cfg.seed,
                                        segment_frames=length // self.hop, hooks=hooks)
            self.data = self.pairs
        else:
            # a sweep decodes each folder once (audio_cache), whatever the runs' segment lengths
            audio_cache = {} if audio_cache is None else audio_cache
            key = (str(Path(cfg.data_dir).resolve()), self.sample_rate)
            if key not in audio_cache:
                audio_cache[key] = AudioSegments.from_folder(cfg.data_dir, self.sample_rate, length,
                                                             on_file=lambda d, n: hooks.step("reading audio", d, n))
            self.data = replace(audio_cache[key], length=length)
        # the base weights come from the loaded stage, else straight from the file on the CPU: the
        # stage itself is not put on the GPU just to be copied
        base = pipe.manager.get("vocoder") if pipe.manager.is_loaded("vocoder") else fresh_base_vocoder(pipe)
        if int(base.hop_length) != self.hop:
            raise SelvaError(f"The vocoder's hop ({base.hop_length}) differs from the mel hop ({self.hop}).")
        # let the host (ComfyUI) evict its models: the trained copy, Adam's two moments and the
        # activations must fit beside whatever stays
        make_room = getattr(pipe.manager, "make_room", None)
        if make_room is not None and self.device.type != "cpu":
            make_room(4 * module_bytes(base, torch.float32), self.device)
        self.vocoder = trainable_copy(base, cfg.train_mode, self.device)
        del base
        if cfg.use_gafilter:
            attach_gafilters(self.vocoder, int(cfg.gafilter_kernel_size))
        self.params = trainable_parameters(self.vocoder, cfg.train_mode)
        self.anchor = snapshot(self.params)
        self.mel_input = MelConverter(spec.mel).to(self.device)  # what the vocoder reads
        self.mel_loss = natural_log_mel(spec.mel).to(self.device)
        self.stft_loss = MultiResolutionSTFTLoss().to(self.device)
        self.discriminators = None
        if cfg.discriminator_path:
            with bigvgan_errors():
                self.discriminators = _discriminators_for(pipe, Path(cfg.discriminator_path)).to(self.device)
        self.weights = LossWeights.for_run(cfg.lambda_l2sp, self.discriminators is not None, cfg.lambda_phase)
        self.identity = identity_of(pipe)

    # ------------------------------------------------------------------- the loop's task API
    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.params.values())

    def num_items(self) -> int:
        return len(self.data)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"param.{n}": p.detach().clone() for n, p in self.params.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        names = {k[len("param."):] for k in state if k.startswith("param.")}
        if names != set(self.params):
            raise SelvaError(f"The checkpoint trains {len(names)} vocoder tensors, this run {len(self.params)}: "
                             f"it belongs to another vocoder or train_mode.")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[f"param.{n}"])

    def describe(self) -> dict:
        return {"variant": self.pipe.variant.name, "vocoder": self.identity.vocoder,
                "sample_rate": self.identity.sample_rate, "train_mode": self.cfg.train_mode,
                "discriminators": self.discriminators is not None, "lambda_l2sp": self.cfg.lambda_l2sp,
                "segment_seconds": self.cfg.segment_seconds, "data_dir": str(self.cfg.data_dir),
                "files": len(self.data),
                # recorded only when used, so runs from before these options still resume
                **({"lambda_phase": self.cfg.lambda_phase} if self.cfg.lambda_phase else {}),
                **({"gafilter_kernel_size": self.cfg.gafilter_kernel_size} if self.cfg.use_gafilter else {}),
                **({"lora_adapter": str(self.cfg.lora_adapter)} if self.pairs is not None else {})}

    def train_mode(self, training: bool) -> None:
        self.vocoder.train(training)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Per-item losses: each item is a random excerpt of one clip (offset from its generator)."""
        mel = None
        if self.pairs is not None:
            cut = [self.pairs.segment(idx, batch.generator(i)) for i, idx in enumerate(batch.indices)]
            mel = torch.stack([m for m, _ in cut]).to(self.device)
            y = torch.stack([a for _, a in cut])
        else:
            y = torch.stack([self.data.segment(idx, batch.generator(i)) for i, idx in enumerate(batch.indices)])
        return self.losses(y[:, None].to(self.device), mel)[0]

    @torch.no_grad()
    def eval_sample(self) -> Optional[tuple[torch.Tensor, int]]:
        """The vocoder's current resynthesis [1, T] (CPU) of a fixed excerpt of the data."""
        if self.pairs is not None:
            mel = self.pairs.eval_pair()[0][None].to(self.device)
        else:
            mel = self.mel_input(self.data.eval_segment().to(self.device).squeeze(1))
        return self.vocoder(mel).float().cpu()[0], self.sample_rate

    def export(self, run_dir: Path, tag: str) -> Optional[Path]:
        """``vocoder_<tag>.safetensors`` in the run folder (the Loader's input). A run continued in
        its folder (after a sweep's skip) finds its earlier final file there: that file may be in
        use, so the new one goes beside it (``vocoder_final_00001.safetensors``)."""
        meta = metadata(self.identity, mode=self.cfg.train_mode, steps=self.step, variant=self.pipe.variant.name)
        return save_tuned_vocoder(unique_path(Path(run_dir) / f"vocoder_{tag}.safetensors"),
                                  tuned_tensors(self.vocoder, self.cfg.train_mode), meta)

    # ------------------------------------------------------------------------------ losses
    def losses(self, y: torch.Tensor, mel: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, LossTerms]:
        """Per-item totals and the terms they sum, of resynthesising the segments ``y``
        [B, 1, T] from their mels (``mel``: given ones, e.g. a LoRA-adapted generator's, instead
        of the segments' own)."""
        if mel is None:
            with torch.no_grad():
                mel = self.mel_input(y.squeeze(1))
        y_hat = self.vocoder(mel)
        terms = LossTerms(mel=mel_l1(self.mel_loss, y_hat, y), stft=self.stft_loss(y_hat, y),
                          l2sp=l2sp(self.params, self.anchor).to(self.device))
        if self.discriminators is not None:
            with torch.no_grad():
                real = self.discriminators.feature_maps(y)
            terms.feature_matching = feature_matching(self.discriminators.feature_maps(y_hat), real)
        if self.weights.phase > 0:
            terms.phase = phase_aware_stft(y_hat, y)
        return terms.total(self.weights), terms


def loop_config(cfg: VocoderTuningConfig) -> LoopConfig:
    """How the shared loop runs a vocoder tuning (BigVGAN's own optimiser settings)."""
    return LoopConfig(steps=cfg.steps, lr=cfg.lr, warmup_steps=min(50, cfg.steps // 20),
                      batch_size=cfg.batch_size, save_every=cfg.save_every, seed=cfg.seed,
                      betas=(0.8, 0.99), weight_decay=0.0,  # L2-SP pulls toward the pretrained values instead
                      max_grad_norm=500.0,  # BigVGAN's clip_grad_norm: a guard, not a constraint
                      run_name="bigvgan")


def resume_target(resume: Optional[Path]) -> Optional[str]:
    """What the loop resumes from: a step checkpoint (.pt), a run folder, "latest", or the
    ``vocoder_step_NNNNNN.safetensors`` a save wrote (mapped to that step's checkpoint). Other
    files go to the loop as given: it says what they are."""
    if resume is None or not str(resume).strip():
        return None
    path = Path(resume)
    if path.suffix == ".safetensors" and path.stem.startswith("vocoder_"):
        tag = path.stem[len("vocoder_"):]
        ckpt = path.parent / "checkpoints" / f"{tag}.pt"
        if re.fullmatch(r"final(_\d+)?", tag):  # vocoder_final.safetensors or a later, numbered one
            ckpt = (list_checkpoints(path.parent) or [ckpt])[-1]
        if not ckpt.is_file():
            raise SelvaError(f"resume: {path} has no training checkpoint beside it ({ckpt}); give a "
                             f"checkpoints/step_NNNNNN.pt of the run, its folder, or 'latest'.")
        return str(ckpt)
    return str(resume)


def tune_vocoder(pipe, cfg: VocoderTuningConfig, hooks: Hooks = NO_HOOKS,
                 on_step: Optional[Callable[[StepInfo], None]] = None, *, run_dir: Optional[Path] = None,
                 should_stop: Optional[Callable[[], bool]] = None,
                 audio_cache: Optional[dict] = None) -> tuple[Path, TrainResult]:
    """Run a vocoder tuning to the end; returns the final tuned file and the loop's result.

    The run lives in a fresh ``<output_path>/bigvgan_NNN`` folder (step checkpoints, tuned
    files ``vocoder_step_NNNNNN.safetensors`` / ``vocoder_final.safetensors``, loss curves, eval
    samples); a cancel saves a checkpoint there and raises ``Interrupted``.
    """
    task = VocoderTuner(pipe, cfg, hooks, audio_cache)
    result = run_training(task, loop_config(cfg), Path(cfg.output_path), resume=resume_target(cfg.resume),
                          hooks=hooks, on_step=on_step, run_dir=run_dir, should_stop=should_stop)
    if result.exported is None:
        raise SelvaError("Training ended without writing a tuned vocoder (a bug).")
    return result.exported, result
