"""PaSST embeddings and AudioSet logits, the features av-benchmark's FD-PaSST and KL-PaSST use.

The network is ``hear21passt``'s ``passt_s_swa_p16_128_ap476`` behind its mel front end (built the
way ``hear21passt.base.get_basic_model(mode="all")`` builds it), with weights read from the
released ``passt-s-f128-p16-s10-ap.476-swa.pt`` (``weights_only``) and loaded strictly.

Audio goes in as av-benchmark's ``AudioDataset`` prepares it: mono, DC removed, resampled to 32 kHz,
cut to the clip's duration, then zero-padded or cut to 10 s (320000 samples).
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Union

import torch

from ..errors import SelvaError

PASST_RATE = 32000
PASST_SAMPLES = 320000  # 10 s, the model's window
NUM_CLASSES = 527
ARCH = "passt_s_swa_p16_128_ap476"


def build_passt(state_dict=None, *, source: str = "PaSST checkpoint") -> torch.nn.Module:
    """The mel front end + PaSST-S wrapper (``mode="all"``); ``state_dict`` loaded strictly if given."""
    try:
        from hear21passt.models import passt, preprocess
        from hear21passt import wrapper
    except ImportError as e:
        raise SelvaError("FD and KL need the PaSST network from the hear21passt package: "
                         "pip install hear21passt==0.0.26 (it brings timm).") from e
    # hear21passt prints the whole network while building it: keep our stdout clean
    with contextlib.redirect_stdout(io.StringIO()):
        mel = preprocess.AugmentMelSTFT(n_mels=128, sr=PASST_RATE, win_length=800, hopsize=320, n_fft=1024,
                                        freqm=48, timem=192, htk=False, fmin=0.0, fmax=None, norm=1,
                                        fmin_aug_range=10, fmax_aug_range=2000)
        net = passt.get_model(arch=ARCH, pretrained=False)
    if state_dict is not None:
        if not isinstance(state_dict, dict):
            raise SelvaError(f"{source} is not a PaSST state dict (found {type(state_dict).__name__}).")
        state_dict = passt.checkpoint_filter_fn(state_dict, net)
        result = net.load_state_dict(state_dict, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise SelvaError(f"{source} does not fit PaSST-S ({ARCH}): missing "
                             f"{list(result.missing_keys)[:5]}, unexpected {list(result.unexpected_keys)[:5]}. "
                             f"Download passt-s-f128-p16-s10-ap.476-swa.pt again.")
    return wrapper.PasstBasicWrapper(mel=mel, net=net, mode="all").eval()


class PasstEmbedder:
    """Clip audio -> (768-d embedding, 527 logits), as av-benchmark extracts them."""

    def __init__(self, model: torch.nn.Module, device: Union[str, torch.device] = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @classmethod
    def from_file(cls, path: Path, device: Union[str, torch.device] = "cpu") -> "PasstEmbedder":
        from ..weights import load_checkpoint

        return cls(build_passt(load_checkpoint(path), source=str(path)), device)

    @staticmethod
    def prepare(wave: torch.Tensor, rate: int, duration: float) -> torch.Tensor:
        """Mono, DC removed, 32 kHz, ``duration`` seconds, then padded/cut to 10 s: (320000,)."""
        from .clap import prepare_audio

        wave = prepare_audio(wave, rate, duration, PASST_RATE)
        if wave.shape[0] >= PASST_SAMPLES:
            return wave[:PASST_SAMPLES]
        return torch.nn.functional.pad(wave, (0, PASST_SAMPLES - wave.shape[0]))

    def __call__(self, wave: torch.Tensor, rate: int, duration: float) -> tuple[torch.Tensor, torch.Tensor]:
        """-> embedding (768,), logits (527,) on the CPU."""
        x = self.prepare(wave, rate, duration)[None].to(self.device)
        with torch.inference_mode(), contextlib.redirect_stdout(io.StringIO()):  # it prints shapes
            out = self.model(x).float().cpu()[0]
        return out[NUM_CLASSES:], out[:NUM_CLASSES]
