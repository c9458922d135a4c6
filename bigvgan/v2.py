"""BigVGAN v2 as SelVA's 44.1 kHz vocoder uses it (``nvidia/bigvgan_v2_44khz_128band_512x``).

The hub snapshot's ``config.json`` is a flat dict of training and model hyperparameters;
``BigVGANv2Config.from_json`` keeps the ones that shape the generator.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from .generator import BigVGANGenerator, UpsamplingHop


@dataclass(frozen=True)
class BigVGANv2Config(UpsamplingHop):
    num_mels: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    resblock: str = "1"
    activation: str = "snakebeta"
    snake_logscale: bool = True
    # NVIDIA's defaults when config.json lacks the keys (older v2 configs): bias and tanh on
    use_bias_at_final: bool = True
    use_tanh_at_final: bool = True
    sampling_rate: int = 44_100

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "BigVGANv2Config":
        """Build from the parsed config.json; keys that do not shape the generator are ignored."""
        required = ("num_mels", "upsample_rates", "upsample_kernel_sizes",
                    "upsample_initial_channel", "resblock_kernel_sizes",
                    "resblock_dilation_sizes")
        missing = [k for k in required if k not in data]
        if missing:
            raise KeyError(f"BigVGAN config lacks {missing}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
            kwargs[key] = tuple(int(v) for v in kwargs[key])
        kwargs["resblock_dilation_sizes"] = tuple(
            tuple(int(v) for v in d) for d in kwargs["resblock_dilation_sizes"])
        kwargs["resblock"] = str(kwargs.get("resblock", "1"))
        return cls(**kwargs)


# nvidia/bigvgan_v2_44khz_128band_512x (its config.json): hop 512, no final bias, clamp not tanh.
BIGVGAN_V2_44K_512X = BigVGANv2Config(
    num_mels=128,
    upsample_rates=(8, 4, 2, 2, 2, 2),
    upsample_kernel_sizes=(16, 8, 4, 4, 4, 4),
    upsample_initial_channel=1536,
    resblock_kernel_sizes=(3, 7, 11),
    resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),
    resblock="1",
    activation="snakebeta",
    snake_logscale=True,
    use_bias_at_final=False,
    use_tanh_at_final=False,
    sampling_rate=44_100,
)


class BigVGANv2(BigVGANGenerator):
    """44.1 kHz BigVGAN v2: mel [B, 128, T] (natural-log mel of MEL_44K) -> [B, 1, T * 512]."""

    def __init__(self, cfg: BigVGANv2Config = BIGVGAN_V2_44K_512X) -> None:
        super().__init__(cfg)
