"""Training pairs for a vocoder that must decode a LoRA-adapted generator's output.

For every clip of a LoRA dataset folder (features .npz + same-name audio) the generator, with
the adapter attached, samples the clip's latent (the Sampler's procedure: the clip's seed-fixed
noise, guidance 4.5, 25 Euler steps); the VAE turns it into a mel. The pair is (that mel, the
clip's recording at the vocoder's rate): the vocoder learns to turn what the adapted generator
makes into the real sound, not only to resynthesise clean mels. Segments are cut at the same
place in both (whole mel frames).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SelvaError
from ..hooks import NO_HOOKS, Hooks

log = logging.getLogger(__name__)

EVAL_STEPS = 25
CFG_STRENGTH = 4.5


@dataclass
class MelAudioPairs:
    mels: list[torch.Tensor]  # (n_mels, frames) float32 CPU
    audios: list[torch.Tensor]  # (frames * hop,) float32 CPU
    hop: int
    frames: int  # per segment

    def __len__(self) -> int:
        return len(self.mels)

    def segment(self, index: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(mel (n_mels, frames), audio (frames * hop,)) cut at one random frame of pair ``index``."""
        mel, audio = self.mels[index], self.audios[index]
        total = mel.shape[-1]
        if total <= self.frames:
            pad = self.frames - total
            return (torch.nn.functional.pad(mel, (0, pad), value=float(mel.min())),
                    torch.nn.functional.pad(audio, (0, self.frames * self.hop - audio.numel())))
        start = int(torch.randint(0, total - self.frames + 1, (1,), generator=generator))
        return mel[:, start:start + self.frames], audio[start * self.hop:(start + self.frames) * self.hop]

    def eval_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.segment(0, torch.Generator().manual_seed(0))


def lora_mel_pairs(pipe, data_dir: Path, adapter_path: Path, *, seed: int, segment_frames: int,
                   hooks: Hooks = NO_HOOKS) -> MelAudioPairs:
    """The (adapted generator's mel, recording) pair of every clip of ``data_dir``."""
    from ..adapters import LoraPatch, load_adapter
    from ..train.audio_files import fit_audio, read_audio
    from ..train.dataset import load_dataset
    from ..train.sampling import sample_latent_with

    adapter = load_adapter(Path(adapter_path))
    if adapter.meta.variant and adapter.meta.variant != pipe.variant.name:
        raise SelvaError(f"The LoRA adapter {adapter_path} was trained on {adapter.meta.variant}, the model "
                         f"is {pipe.variant.name}.")
    dataset = load_dataset(pipe, Path(data_dir), hooks=hooks)
    view = pipe.with_patches(generator=[LoraPatch(adapter, 1.0)])
    hop = int(pipe.variant.mel.hop_size)
    mels, audios = [], []
    with torch.inference_mode(False), torch.no_grad():
        for i, clip in enumerate(dataset.clips, 1):
            seq = pipe.variant.seq_lengths(clip.features.duration)
            with view.use_generator() as gen:
                latent = sample_latent_with(gen, clip.features, None, steps=EVAL_STEPS,
                                            cfg_strength=CFG_STRENGTH, seed=seed + i - 1, seq=seq)
            with pipe.manager.use(pipe.stage_name("vae")) as vae:
                mel = vae.decode(latent.to(pipe.device, pipe.stage_dtype("vae")).transpose(1, 2))
            mel = mel[0].float().cpu()
            wave, rate = read_audio(clip.audio_path)
            audio = fit_audio(wave, rate, pipe.sample_rate, mel.shape[-1] * hop)[0]
            mels.append(mel)
            audios.append(audio.clamp(-1.0, 1.0))
            hooks.step("LoRA mels", i, len(dataset.clips))
    log.info("Vocoder tuning on %d mels of the generator with LoRA %s", len(mels), adapter_path)
    return MelAudioPairs(mels, audios, hop, max(2, int(segment_frames)))
