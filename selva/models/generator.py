"""The SelVA audio generator: MMAudio's MM-DiT predicting rectified-flow velocities.

Inputs per clip: CLIP frame features (8 fps), text-conditioned Synchformer features (24 per
second, from ``text_synch``), CLIP text tokens (77). The network maps a noisy VAE latent and a
flow time ``t`` in [0, 1] to a velocity; ``sampling.euler_sample`` integrates it from noise.
Sequence lengths depend on the clip duration; call ``set_seq_lengths`` before each duration.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SelvaError
from .layers import (MLP, ChannelLastConv1d, ConvMLP, FinalBlock, JointBlock, Linear,
                     MMDitSingleBlock, TimestepEmbedder, cast_to, compute_dtype,
                     compute_rope_rotations)
from .state_dicts import is_on_meta, load_strict, require_tensors, shapes_of

log = logging.getLogger(__name__)

SYNC_FRAMES_PER_SEGMENT = 8  # Synchformer features per 16-frame video segment
ROPE_THETA = 10000


@dataclass(frozen=True)
class GeneratorConfig:
    latent_dim: int
    clip_dim: int
    sync_dim: int
    text_dim: int
    hidden_dim: int
    depth: int  # joint blocks + fused blocks
    fused_depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    text_seq_len: int = 77
    v2: bool = False

    @property
    def joint_depth(self) -> int:
        return self.depth - self.fused_depth

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads


def _released(latent_dim: int, num_heads: int, depth: int, fused_depth: int) -> GeneratorConfig:
    return GeneratorConfig(latent_dim=latent_dim, clip_dim=1024, sync_dim=768, text_dim=1024,
                           hidden_dim=64 * num_heads, depth=depth, fused_depth=fused_depth,
                           num_heads=num_heads)


SMALL_16K = _released(latent_dim=20, num_heads=7, depth=12, fused_depth=8)
SMALL_44K = _released(latent_dim=40, num_heads=7, depth=12, fused_depth=8)
MEDIUM_44K = _released(latent_dim=40, num_heads=14, depth=12, fused_depth=8)
LARGE_44K = _released(latent_dim=40, num_heads=14, depth=21, fused_depth=14)

# Keys some checkpoints may carry although the network recomputes them (sinusoid frequencies,
# rotary tables). The reference loader deletes exactly these before its strict load; nothing else
# is ever dropped, so a file from another network still fails loudly.
DERIVED_KEYS = frozenset({'t_embed.freqs', 'latent_rot', 'clip_rot'})


@dataclass
class Conditions:
    """Per-clip features after the input projections (reused over all sampling steps)."""
    clip_f: torch.Tensor  # (B, clip_seq_len, hidden)
    sync_f: torch.Tensor  # (B, latent_seq_len, hidden), upsampled to the latent rate
    text_f: torch.Tensor  # (B, text_seq_len, hidden)
    clip_f_c: torch.Tensor  # (B, hidden) pooled CLIP condition
    text_f_c: torch.Tensor  # (B, hidden) pooled text condition

    def expand(self, bs: int) -> "Conditions":
        """The same conditions for a batch of ``bs`` (views of batch-1 fields, no copies)."""
        def grow(t: torch.Tensor) -> torch.Tensor:
            if t.shape[0] == bs:
                return t
            if t.shape[0] != 1:
                raise SelvaError(f"conditions of batch {t.shape[0]} cannot serve a batch of {bs}")
            return t.expand(bs, *t.shape[1:])

        return Conditions(**{f.name: grow(getattr(self, f.name)) for f in fields(Conditions)})

    @staticmethod
    def stack(parts: "list[Conditions]") -> "Conditions":
        """Conditions of equal batch, one after the other along the batch dimension."""
        return Conditions(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Conditions)})


class SelvaGenerator(nn.Module):

    def __init__(self,
                 cfg: GeneratorConfig,
                 *,
                 latent_seq_len: int = 250,
                 clip_seq_len: int = 64,
                 sync_seq_len: int = 192) -> None:
        super().__init__()
        self.cfg = cfg
        hidden = cfg.hidden_dim
        if hidden % cfg.num_heads or cfg.head_dim % 2:
            raise ValueError(f"hidden_dim {hidden} must split into {cfg.num_heads} even heads")
        if not 0 <= cfg.fused_depth < cfg.depth:
            raise ValueError(f"need 0 <= fused_depth < depth, got {cfg.fused_depth}/{cfg.depth}")
        # v2 swaps SELU for SiLU and inserts the activation after every input Linear too; the
        # index of each sub-module (hence its state-dict key) depends on that.
        act = nn.SiLU if cfg.v2 else nn.SELU
        lin_act = [nn.SiLU()] if cfg.v2 else []

        self.audio_input_proj = nn.Sequential(
            ChannelLastConv1d(cfg.latent_dim, hidden, kernel_size=7, padding=3),
            act(),
            ConvMLP(hidden, hidden * 4, kernel_size=7, padding=3),
        )
        self.clip_input_proj = nn.Sequential(
            Linear(cfg.clip_dim, hidden),
            *lin_act,
            ConvMLP(hidden, hidden * 4, kernel_size=3, padding=1),
        )
        self.sync_input_proj = nn.Sequential(
            ChannelLastConv1d(cfg.sync_dim, hidden, kernel_size=7, padding=3),
            act(),
            ConvMLP(hidden, hidden * 4, kernel_size=3, padding=1),
        )
        self.text_input_proj = nn.Sequential(
            Linear(cfg.text_dim, hidden),
            *lin_act,
            MLP(hidden, hidden * 4),
        )

        self.clip_cond_proj = Linear(hidden, hidden)
        self.text_cond_proj = Linear(hidden, hidden)
        self.global_cond_mlp = MLP(hidden, hidden * 4)
        self.sync_pos_emb = nn.Parameter(torch.zeros((1, 1, SYNC_FRAMES_PER_SEGMENT, cfg.sync_dim)))

        self.final_layer = FinalBlock(hidden, cfg.latent_dim)
        if cfg.v2:
            self.t_embed = TimestepEmbedder(hidden, frequency_embedding_size=hidden, max_period=1)
        else:
            self.t_embed = TimestepEmbedder(hidden, frequency_embedding_size=256, max_period=10000)

        last_joint = cfg.joint_depth - 1
        # The last joint block only feeds the latent stream: its CLIP/text halves are "pre only".
        self.joint_blocks = nn.ModuleList([
            JointBlock(hidden, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, pre_only=(i == last_joint))
            for i in range(cfg.joint_depth)
        ])
        self.fused_blocks = nn.ModuleList([
            MMDitSingleBlock(hidden, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, kernel_size=3,
                             padding=1) for _ in range(cfg.fused_depth)
        ])

        # Frozen statistics and learned "no condition" features, all loaded from the checkpoint.
        self.latent_mean = nn.Parameter(torch.zeros(1, 1, cfg.latent_dim), requires_grad=False)
        self.latent_std = nn.Parameter(torch.ones(1, 1, cfg.latent_dim), requires_grad=False)
        self.empty_string_feat = nn.Parameter(torch.zeros(cfg.text_seq_len, cfg.text_dim),
                                              requires_grad=False)
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, cfg.clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, cfg.sync_dim))

        self.set_seq_lengths(latent_seq_len, clip_seq_len, sync_seq_len)

    # ----------------------------------------------------------------------------------------
    # sequence lengths and derived buffers
    # ----------------------------------------------------------------------------------------

    def set_seq_lengths(self, latent_seq_len: int, clip_seq_len: int, sync_seq_len: int) -> None:
        """Set the clip duration's sequence lengths and recompute the rotary tables."""
        for name, value in (('latent', latent_seq_len), ('clip', clip_seq_len),
                            ('sync', sync_seq_len)):
            if int(value) <= 0:
                raise SelvaError(f"{name} sequence length must be positive, got {value}")
        if sync_seq_len % SYNC_FRAMES_PER_SEGMENT:
            raise SelvaError(f"sync sequence length must be a multiple of "
                             f"{SYNC_FRAMES_PER_SEGMENT}, got {sync_seq_len}")
        self._latent_seq_len = int(latent_seq_len)
        self._clip_seq_len = int(clip_seq_len)
        self._sync_seq_len = int(sync_seq_len)
        self._refresh_rotations()

    def _refresh_rotations(self) -> None:
        # Always float32 (also after .to(half)): angles for hundreds of positions need it. CLIP
        # positions are stretched so that the same instant gets the same angle as the latents.
        device = self.latent_mean.device
        head_dim = self.cfg.head_dim
        latent_rot = compute_rope_rotations(self._latent_seq_len, head_dim, ROPE_THETA,
                                            freq_scaling=1.0, device=device)
        clip_rot = compute_rope_rotations(self._clip_seq_len, head_dim, ROPE_THETA,
                                          freq_scaling=self._latent_seq_len / self._clip_seq_len,
                                          device=device)
        self.register_buffer('latent_rot', latent_rot, persistent=False)
        self.register_buffer('clip_rot', clip_rot, persistent=False)

    def refresh_derived_buffers(self) -> None:
        """Recompute the non-checkpoint buffers on the parameters' device.

        Needed after loading real tensors into a network built on the meta device with
        ``assign=True``: the parameters become real but derived buffers would stay meta.
        """
        freqs_dtype = self.t_embed.freqs.dtype
        self.t_embed.freqs = self.t_embed.make_freqs(self.latent_mean.device).to(freqs_dtype)
        self._refresh_rotations()

    def _apply(self, fn, recurse: bool = True):
        module = super()._apply(fn, recurse)
        # .to(dtype) would round the rotary tables; rebuild them in float32 on the new device.
        # (The reference gets the same float32 tables by calling update_seq_lengths after .to.)
        self._refresh_rotations()
        return module

    @property
    def latent_seq_len(self) -> int:
        return self._latent_seq_len

    @property
    def clip_seq_len(self) -> int:
        return self._clip_seq_len

    @property
    def sync_seq_len(self) -> int:
        return self._sync_seq_len

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.latent_mean.dtype

    # ----------------------------------------------------------------------------------------
    # latent statistics
    # ----------------------------------------------------------------------------------------

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """VAE latent -> the generator's normalised space (not in place, keeps ``x.dtype``)."""
        x = (x - self.latent_mean).to(x.dtype)
        return (x / self.latent_std).to(x.dtype)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Generator output -> VAE latent (not in place, keeps ``x.dtype``)."""
        x = (x * self.latent_std).to(x.dtype)
        return (x + self.latent_mean).to(x.dtype)

    # ----------------------------------------------------------------------------------------
    # conditions
    # ----------------------------------------------------------------------------------------

    def empty_string_sequence(self, bs: int) -> torch.Tensor:
        return self.empty_string_feat.unsqueeze(0).expand(bs, -1, -1)

    def empty_clip_sequence(self, bs: int) -> torch.Tensor:
        return self.empty_clip_feat.unsqueeze(0).expand(bs, self._clip_seq_len, -1)

    def empty_sync_sequence(self, bs: int) -> torch.Tensor:
        return self.empty_sync_feat.unsqueeze(0).expand(bs, self._sync_seq_len, -1)

    def _check_length(self, name: str, x: torch.Tensor, expected: int) -> None:
        if x.dim() != 3 or x.shape[1] != expected:
            raise SelvaError(f"{name} features have shape {tuple(x.shape)}, expected "
                             f"(batch, {expected}, channels) for the current duration; "
                             f"call set_seq_lengths for this clip length")

    def preprocess_conditions(self, clip_f: torch.Tensor, sync_f: torch.Tensor,
                              text_clip_f: torch.Tensor) -> Conditions:
        """Project the three condition sequences once per clip.

        clip_f: (B, clip_seq_len, clip_dim); sync_f: (B, sync_seq_len, sync_dim);
        text_clip_f: (B, text_seq_len, text_dim). Batches may differ (the empty conditions pass
        batch-1 video features next to batch-B negative text).
        """
        self._check_length('CLIP', clip_f, self._clip_seq_len)
        self._check_length('Synchformer', sync_f, self._sync_seq_len)
        self._check_length('CLIP text', text_clip_f, self.cfg.text_seq_len)
        dtype = self.dtype
        stream = compute_dtype(dtype)  # float32 residual streams under float16 weights (layers.py)

        # Each 8-frame Synchformer segment gets the same learned within-segment position code.
        bs = sync_f.shape[0]
        segments = self._sync_seq_len // SYNC_FRAMES_PER_SEGMENT
        sync_f = cast_to(sync_f, dtype).view(bs, segments, SYNC_FRAMES_PER_SEGMENT, -1)
        sync_f = (sync_f + self.sync_pos_emb).flatten(1, 2)

        clip_f = self.clip_input_proj(cast_to(clip_f, dtype)).to(stream)
        sync_f = self.sync_input_proj(sync_f).to(stream)
        text_f = self.text_input_proj(cast_to(text_clip_f, dtype)).to(stream)

        # 24 Hz sync features -> latent rate (nearest-exact, as trained).
        sync_f = F.interpolate(sync_f.transpose(1, 2), size=self._latent_seq_len,
                               mode='nearest-exact').transpose(1, 2)

        clip_f_c = self.clip_cond_proj(clip_f.mean(dim=1)).to(stream)
        text_f_c = self.text_cond_proj(text_f.mean(dim=1)).to(stream)
        return Conditions(clip_f=clip_f, sync_f=sync_f, text_f=text_f, clip_f_c=clip_f_c,
                          text_f_c=text_f_c)

    def empty_conditions(self,
                         bs: int,
                         negative_text_clip_f: Optional[torch.Tensor] = None) -> Conditions:
        """The unconditional branch of classifier-free guidance.

        Learned empty CLIP/sync features always; text is the learned empty string, or the CLIP
        text features of a negative prompt (batch ``bs`` or 1) when given.
        """
        text = self.empty_string_sequence(1) if negative_text_clip_f is None else negative_text_clip_f
        cond = self.preprocess_conditions(self.empty_clip_sequence(1), self.empty_sync_sequence(1),
                                          text)
        if cond.text_f.shape[0] not in (1, bs):
            raise SelvaError(f"negative prompt batch {cond.text_f.shape[0]} does not match "
                             f"batch {bs}")
        return cond.expand(bs)

    # ----------------------------------------------------------------------------------------
    # velocity
    # ----------------------------------------------------------------------------------------

    def predict_flow(self, latent: torch.Tensor, t: torch.Tensor,
                     conditions: Conditions) -> torch.Tensor:
        """Velocity for ``latent`` (B, latent_seq_len, latent_dim) at times ``t`` (B,)."""
        self._check_length('latent', latent, self._latent_seq_len)
        stream = compute_dtype(self.dtype)
        c = conditions

        x = self.audio_input_proj(latent).to(stream)
        global_c = self.global_cond_mlp(c.clip_f_c + c.text_f_c).to(stream)
        global_c = self.t_embed(t).to(stream).unsqueeze(1) + global_c.unsqueeze(1)  # (B, 1, D)
        extended_c = global_c + c.sync_f  # (B, N, D): frame-aligned sync condition

        clip_f, text_f = c.clip_f, c.text_f
        for block in self.joint_blocks:
            x, clip_f, text_f = block(x, clip_f, text_f, global_c, extended_c, self.latent_rot,
                                      self.clip_rot)
        for block in self.fused_blocks:
            x = block(x, extended_c, self.latent_rot)
        return cast_to(self.final_layer(x, global_c), latent.dtype)

    def forward(self, latent: torch.Tensor, clip_f: torch.Tensor, sync_f: torch.Tensor,
                text_clip_f: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.predict_flow(latent, t, self.preprocess_conditions(clip_f, sync_f, text_clip_f))

    def cfg_velocity(self, t: float, x: torch.Tensor, cond: Conditions, uncond: Conditions,
                     cfg_strength: float, *, batched: bool = True,
                     velocity: Optional[Callable[[torch.Tensor, torch.Tensor, Conditions], torch.Tensor]] = None
                     ) -> torch.Tensor:
        """Classifier-free-guided velocity ``s * v(cond) + (1 - s) * v(uncond)``.

        ``t`` is broadcast to the batch in ``x.dtype`` (rounded like the reference, which
        multiplies its float32 time by ones of the latent dtype). Strengths below 1 skip the
        unconditional pass. ``batched`` runs both branches in one pass of batch ``2 B``
        (conditional first): one launch of every kernel instead of two, the same numbers up to
        float rounding (every op is per batch item). ``cond`` / ``uncond`` may be batch 1 (one
        clip, projected once) for any batch of ``x``. ``velocity`` replaces :meth:`predict_flow`
        (e.g. its ``torch.compile`` d form, see selva/accel.py).
        """
        predict = velocity if velocity is not None else self.predict_flow
        b = len(x)
        t_batch = torch.full((b,), t, dtype=torch.float32, device=x.device).to(x.dtype)
        if cfg_strength < 1.0:
            return predict(x, t_batch, cond.expand(b))
        if batched:
            both = Conditions.stack([cond.expand(b), uncond.expand(b)])
            v = predict(torch.cat([x, x]), torch.cat([t_batch, t_batch]), both)
            v_cond, v_uncond = v[:b], v[b:]
        else:
            v_cond = predict(x, t_batch, cond.expand(b))
            v_uncond = predict(x, t_batch, uncond.expand(b))
        return cfg_strength * v_cond + (1 - cfg_strength) * v_uncond


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

def _describe(shapes: Mapping[str, tuple[int, ...]]) -> Optional[str]:
    """A short architecture summary read off a generator state dict's shapes, if it is one."""
    try:
        latent_dim = shapes['latent_mean'][-1]
        hidden = shapes['clip_cond_proj.weight'][0]
    except (KeyError, IndexError):
        return None
    joint = {k.split('.')[1] for k in shapes if k.startswith('joint_blocks.')}
    fused = {k.split('.')[1] for k in shapes if k.startswith('fused_blocks.')}
    rate = {20: '16 kHz', 40: '44.1 kHz'}.get(latent_dim, 'unknown rate')
    return (f"a {rate} generator (latent_dim {latent_dim}), hidden {hidden}, "
            f"{len(joint)} joint + {len(fused)} fused blocks")


def load_generator_weights(model: SelvaGenerator, state_dict: Mapping[str, torch.Tensor], *,
                           source: str) -> None:
    """Strictly load a released generator state dict into ``model``.

    Only ``DERIVED_KEYS`` are dropped. Any other missing/unexpected key or shape difference
    raises ``SelvaError`` naming ``source`` and what the file looks like. A network built on the
    meta device takes the tensors as they are (``assign=True``); a real network copies them.
    """
    state_dict = require_tensors(state_dict, source=source, what="generator")
    sd = {k: v for k, v in state_dict.items() if k not in DERIVED_KEYS}
    file_desc = _describe(shapes_of(sd)) or "not a SelVA generator state dict"
    want = _describe(shapes_of(model.state_dict()))
    # Naming both architectures tells the user which variant the file belongs to.
    hint = None if file_desc == want else (f"It looks like {file_desc}, but the network is {want}: "
                                           "pick the generator file of the chosen variant.")
    model_is_meta = is_on_meta(model)
    load_strict(model, sd, source=source, what="generator", hint=hint)
    if model_is_meta and not is_on_meta(model):
        model.refresh_derived_buffers()
    log.debug("loaded generator weights from %s", source)
