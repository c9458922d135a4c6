"""The Synchformer video backbone (a MotionFormer ViT with divided space-time attention).

SelVA runs only the video half of Synchformer, and only as a feature extractor:

* every 16-frame segment is cut into tubelets of 2 frames x 16 x 16 pixels (8 x 14 x 14 tokens)
  plus one CLS token;
* 12 blocks of *divided* attention: each block first attends over time (the tokens at one
  spatial position across the 8 temporal slots), then over space (the tokens of one temporal
  slot), and the CLS token attends to everything in both;
* the CLS token is dropped, the patch tokens are layer-normed, and one pre-norm transformer
  encoder layer with its own CLS token pools each temporal slot over space, giving 8 vectors
  per segment (the temporal aggregation of Synchformer is the identity).

Attribute names follow the official state dict (``vfeat_extractor.*`` keys). The 2-D
``patch_embed`` is never run (the 3-D tubelet embedding replaces it) but its weights are in every
released file, so the module keeps it to load them strictly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SelvaError
from .layers import cast_to, upcast_half
from .state_dicts import load_strict, preview, require_tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MotionFormerConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    frames_per_segment: int = 16
    temporal_patch: int = 2  # frames per tubelet
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4
    qkv_bias: bool = True
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.frames_per_segment % self.temporal_patch:
            raise ValueError(f"frames_per_segment {self.frames_per_segment} is not a multiple of "
                             f"temporal_patch {self.temporal_patch}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def grid(self) -> int:
        """Patches along one side of a frame."""
        return self.img_size // self.patch_size

    @property
    def patches_per_slot(self) -> int:
        return self.grid * self.grid

    @property
    def temporal_slots(self) -> int:
        """Tubelets along time in one segment (= output vectors per segment)."""
        return self.frames_per_segment // self.temporal_patch


MOTIONFORMER_224 = MotionFormerConfig()


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (fp16 variance overflows on ViT activations).

    The result is returned in the weights' dtype because it feeds the next matmul; under fp16 the
    residual stream itself is kept in fp32 by the callers (see ``upcast_half``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                           self.eps)
        return out.to(self.weight.dtype)


class DividedAttention(nn.Module):
    """One half of a divided space-time block: attention within either time or space groups.

    Input tokens are laid out ``[CLS, slot0 patch0..patchN-1, slot1 ...]``. The CLS query attends
    to every token; a patch query attends to the CLS token plus the patches of its group, where a
    group is one temporal slot (``over="space"``) or one spatial position (``over="time"``).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, over: str, slots: int, patches: int) -> torch.Tensor:
        b, length, dim = x.shape
        h = self.num_heads
        d = dim // h
        # (3, B, H, L, d)
        qkv = self.qkv(x).reshape(b, length, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]

        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # (B, H, 1, d)

        def grouped(t: torch.Tensor) -> torch.Tensor:
            t = t[:, :, 1:].reshape(b, h, slots, patches, d)
            if over == "time":
                t = t.transpose(2, 3)  # group by spatial position
            return t.reshape(b, -1, t.shape[-2], d)  # (B, H*groups, group_len, d)

        q_g, k_g, v_g = grouped(q), grouped(k), grouped(v)
        groups = q_g.shape[1] // h
        # every group also sees the CLS key/value
        cls_k = k[:, :, :1].repeat_interleave(groups, dim=1)
        cls_v = v[:, :, :1].repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q_g, torch.cat([cls_k, k_g], dim=2), torch.cat([cls_v, v_g], dim=2))

        if over == "time":
            out = out.reshape(b, h, patches, slots, d).transpose(2, 3)
        out = out.reshape(b, h, slots * patches, d)
        out = torch.cat([cls_out, out], dim=2)  # (B, H, L, d)
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    """Time attention (norm3), then space attention (norm1), then MLP (norm2): the official order."""

    def __init__(self, cfg: MotionFormerConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = FP32LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = DividedAttention(dim, cfg.num_heads, cfg.qkv_bias)
        self.timeattn = DividedAttention(dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = FP32LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.norm3 = FP32LayerNorm(dim, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor, slots: int, patches: int) -> torch.Tensor:
        # x is the residual stream: fp32 when the weights are fp16 (sums of many blocks grow)
        x = x + self.timeattn(self.norm3(x), "time", slots, patches)
        x = x + self.attn(self.norm1(x), "space", slots, patches)
        return x + self.mlp(self.norm2(x))


class PatchEmbed2d(nn.Module):
    """Per-frame patch embedding. Not run (tubelets replace it); kept so released files load."""

    def __init__(self, cfg: MotionFormerConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)


class PatchEmbed3d(nn.Module):
    """Tubelet embedding: (N, C, T, H, W) -> (N, slots * patches, D), slot-major."""

    def __init__(self, cfg: MotionFormerConfig):
        super().__init__()
        kernel = (cfg.temporal_patch, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class PackedSelfAttention(nn.Module):
    """Multi-head self-attention with torch's packed ``in_proj`` parameter layout (q, k, v rows)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        h = self.num_heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(b, length, 3, h, dim // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, dim)
        return self.out_proj(out)


class SpatialAggregator(nn.Module):
    """Pools the patches of each temporal slot into one vector through a learned CLS token.

    It is a pre-norm transformer encoder layer (GELU feed-forward, LayerNorm eps 1e-6) run on
    ``[CLS, patches]``; the CLS output is the slot's vector.
    """

    def __init__(self, cfg: MotionFormerConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.self_attn = PackedSelfAttention(dim, cfg.num_heads)
        self.linear1 = nn.Linear(dim, int(cfg.mlp_ratio * dim))
        self.linear2 = nn.Linear(int(cfg.mlp_ratio * dim), dim)
        self.norm1 = FP32LayerNorm(dim, eps=cfg.norm_eps)
        self.norm2 = FP32LayerNorm(dim, eps=cfg.norm_eps)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, tokens: torch.Tensor, slots: int) -> torch.Tensor:
        """tokens (N, slots * patches, D) slot-major -> (N, slots, D)."""
        n, _, dim = tokens.shape
        x = tokens.reshape(n * slots, -1, dim)
        x = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        x = upcast_half(x)
        x = x + self.self_attn(self.norm1(x))
        x = x + self.linear2(F.gelu(self.linear1(self.norm2(x))))
        return cast_to(x[:, 0], tokens.dtype).reshape(n, slots, dim)


class MotionFormer(nn.Module):
    """Synchformer's video feature extractor (segment in, ``temporal_slots`` vectors out)."""

    def __init__(self, cfg: MotionFormerConfig = MOTIONFORMER_224):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.patches_per_slot, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, cfg.temporal_slots, dim))
        self.patch_embed = PatchEmbed2d(cfg)
        self.patch_embed_3d = PatchEmbed3d(cfg)
        self.blocks = nn.ModuleList(DividedSpaceTimeBlock(cfg) for _ in range(cfg.depth))
        self.norm = FP32LayerNorm(dim, eps=cfg.norm_eps)
        self.spatial_attn_agg = SpatialAggregator(cfg)
        for p in (self.cls_token, self.pos_embed, self.temp_embed):
            nn.init.trunc_normal_(p, std=0.02)
        self.patch_embed.requires_grad_(False)

    def _position_embedding(self) -> torch.Tensor:
        """(1, 1 + slots * patches, D): CLS position, then spatial + temporal embedding per token."""
        cfg = self.cfg
        spatial = self.pos_embed[:, 1:].repeat(1, cfg.temporal_slots, 1)
        temporal = self.temp_embed.repeat_interleave(cfg.patches_per_slot, dim=1)
        return torch.cat([self.pos_embed[:, :1], spatial + temporal], dim=1)

    def patch_tokens(self, segments: torch.Tensor) -> torch.Tensor:
        """segments (N, C, frames, H, W) -> normed patch tokens (N, slots * patches, D), slot-major."""
        cfg = self.cfg
        expected = (cfg.in_chans, cfg.frames_per_segment, cfg.img_size, cfg.img_size)
        if segments.dim() != 5 or tuple(segments.shape[1:]) != expected:
            raise SelvaError(f"MotionFormer expects segments of shape (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(segments.shape)}")
        x = self.patch_embed_3d(cast_to(segments, self.patch_embed_3d.proj.weight.dtype))
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = upcast_half(torch.cat([cls, x], dim=1)) + self._position_embedding()
        for block in self.blocks:
            x = block(x, cfg.temporal_slots, cfg.patches_per_slot)
        # CLS is dropped before the final norm, as in the official feature extraction path
        return self.norm(x[:, 1:])

    def aggregate(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (N, slots * patches, D) -> one vector per temporal slot (N, slots, D)."""
        return self.spatial_attn_agg(tokens, self.cfg.temporal_slots)

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        """Plain Synchformer video features (no text): (N, C, frames, H, W) -> (N, slots, D)."""
        return self.aggregate(self.patch_tokens(segments))


# ---------------------------------------------------------------------------------------------
# Loading

# The Synchformer file is the whole audio-visual sync model. SelVA uses its video extractor only;
# these are the parts of that training model nobody runs here (the AST audio branch, the two
# projections into the sync transformer, and the sync transformer / offset head).
SYNCHFORMER_DISCARDED_PREFIXES = ("afeat_extractor.", "vproj.", "aproj.", "transformer.")
SYNCHFORMER_VIDEO_PREFIX = "vfeat_extractor."


def load_synchformer_backbone(model: MotionFormer, state_dict: Mapping[str, torch.Tensor], *,
                              source: str) -> None:
    """Load the video extractor out of the released Synchformer state dict.

    Rule: keys under ``SYNCHFORMER_DISCARDED_PREFIXES`` are dropped on purpose; keys under
    ``vfeat_extractor.`` are stripped of it and loaded strictly; any other key means the file is
    not a Synchformer checkpoint and is an error.
    """
    state_dict = require_tensors(state_dict, source=source, what="Synchformer checkpoint")
    video: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        if key.startswith(SYNCHFORMER_VIDEO_PREFIX):
            video[key[len(SYNCHFORMER_VIDEO_PREFIX):]] = tensor
        elif not key.startswith(SYNCHFORMER_DISCARDED_PREFIXES):
            unknown.append(key)
    if unknown:
        raise SelvaError(f"{source} is not a Synchformer state dict: unknown keys {preview(unknown)}")
    dropped = len(state_dict) - len(video)
    log.debug("%s: loading %d video-extractor tensors, dropping %d audio/sync-head tensors",
              source, len(video), dropped)
    load_strict(model, video, source=source, what="Synchformer video extractor (MotionFormer)")


# ---------------------------------------------------------------------------------------------
# The rest of Synchformer: audio branch, projections and the offset transformer (for DeSync)
#
# SelVA itself never runs these; the evaluation does (``selva/evaluation/desync.py``): it asks the
# full audio-visual model which of 21 offsets (-2 .. +2 s) separates a clip's video and audio.


@dataclass(frozen=True)
class AudioExtractorConfig:
    """The AST audio branch: 16 kHz log-mel segments (128 bins x 66 frames) -> 6 vectors each."""

    n_mels: int = 128
    spec_frames: int = 66  # mel frames per 0.64 s segment (padded from 65)
    patch_size: int = 16
    stride: int = 10  # AST's frequency and time stride (overlapping patches)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4
    ast_norm_eps: float = 1e-12  # Hugging Face ASTConfig default
    norm_eps: float = 1e-6  # the frequency aggregator (a torch TransformerEncoderLayer)

    @property
    def freq_patches(self) -> int:
        return (self.n_mels - self.patch_size) // self.stride + 1

    @property
    def time_patches(self) -> int:
        return (self.spec_frames - self.patch_size) // self.stride + 1


AST_SYNCHFORMER = AudioExtractorConfig()


@dataclass(frozen=True)
class SyncTransformerConfig:
    """The offset classifier over ``[OFF, video tokens, MOD, audio tokens]``."""

    embed_dim: int = 768
    depth: int = 3
    num_heads: int = 8
    segments: int = 14  # the classifier sees 14 segments (4.8 s) of each stream
    video_tokens_per_segment: int = 8
    audio_tokens_per_segment: int = 6
    num_offsets: int = 21
    norm_eps: float = 1e-5  # torch LayerNorm default

    @property
    def sequence_length(self) -> int:
        return 2 + self.segments * (self.video_tokens_per_segment + self.audio_tokens_per_segment)


SYNC_TRANSFORMER = SyncTransformerConfig()


def _plain_attention(q_proj: nn.Linear, k_proj: nn.Linear, v_proj: nn.Linear, x: torch.Tensor,
                     heads: int) -> torch.Tensor:
    """Softmax attention with separate q/k/v projections; (B, L, D) -> (B, L, D) before out-proj."""
    b, length, dim = x.shape
    split = lambda t: t.reshape(b, length, heads, dim // heads).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q_proj(x)), split(k_proj(x)), split(v_proj(x)))
    return out.transpose(1, 2).reshape(b, length, dim)


class _ASTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()  # a namespace for the checkpoint's key names, as in _SyncBlock
        for name in ("query", "key", "value"):
            setattr(self.attention, name, nn.Linear(dim, dim))
        self.output = nn.Module()
        self.output.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention
        return self.output.dense(_plain_attention(a.query, a.key, a.value, x, self.heads))


class ASTLayer(nn.Module):
    """A ViT block in Hugging Face's AST naming: pre-norm attention, pre-norm GELU MLP."""

    def __init__(self, cfg: AudioExtractorConfig):
        super().__init__()
        dim, hidden = cfg.embed_dim, cfg.embed_dim * cfg.mlp_ratio
        self.attention = _ASTAttention(dim, cfg.num_heads)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(dim, hidden)
        self.output = nn.Module()
        self.output.dense = nn.Linear(hidden, dim)
        self.layernorm_before = nn.LayerNorm(dim, eps=cfg.ast_norm_eps)
        self.layernorm_after = nn.LayerNorm(dim, eps=cfg.ast_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class ASTEmbeddings(nn.Module):
    def __init__(self, cfg: AudioExtractorConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(1, dim, cfg.patch_size, stride=cfg.stride)
        # Synchformer keeps only the positions of its short segments (2 + 12 x 6 = 74)
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, 2 + cfg.freq_patches * cfg.time_patches, dim))
        for p in (self.cls_token, self.distillation_token, self.position_embeddings):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, spec_tf: torch.Tensor) -> torch.Tensor:
        """(N, time, freq) -> (N, 2 + f * t, D); patches frequency-major as AST lays them out."""
        x = self.patch_embeddings.projection(spec_tf.unsqueeze(1).transpose(2, 3))
        x = x.flatten(2).transpose(1, 2)
        n = x.shape[0]
        x = torch.cat([self.cls_token.expand(n, -1, -1), self.distillation_token.expand(n, -1, -1), x], 1)
        return x + self.position_embeddings


class ASTBackbone(nn.Module):
    def __init__(self, cfg: AudioExtractorConfig):
        super().__init__()
        self.embeddings = ASTEmbeddings(cfg)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(ASTLayer(cfg) for _ in range(cfg.depth))
        self.layernorm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ast_norm_eps)

    def forward(self, spec_tf: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(spec_tf)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class AudioFeatureExtractor(nn.Module):
    """Synchformer's audio branch: AST tokens pooled over frequency, one vector per time patch."""

    def __init__(self, cfg: AudioExtractorConfig = AST_SYNCHFORMER):
        super().__init__()
        self.cfg = cfg
        self.ast = ASTBackbone(cfg)
        # same layer type as the video branch's spatial pooling (pre-norm, GELU, eps 1e-6)
        self.freq_attn_agg = SpatialAggregator(cfg)  # type: ignore[arg-type]

    def forward(self, spec_ft: torch.Tensor) -> torch.Tensor:
        """Log-mel segments (N, n_mels, spec_frames), normalised -> (N, time_patches, D)."""
        cfg = self.cfg
        if spec_ft.dim() != 3 or tuple(spec_ft.shape[1:]) != (cfg.n_mels, cfg.spec_frames):
            raise SelvaError(f"The Synchformer audio branch expects mel segments of shape "
                             f"(N, {cfg.n_mels}, {cfg.spec_frames}), got {tuple(spec_ft.shape)}")
        tokens = self.ast(spec_ft.transpose(1, 2))[:, 2:]  # drop CLS and distillation tokens
        n, _, dim = tokens.shape
        f, t = cfg.freq_patches, cfg.time_patches
        # group by time patch: (N, f, t, D) -> (N, t * f, D), time-major for the pooling layer
        by_time = tokens.reshape(n, f, t, dim).transpose(1, 2).reshape(n, t * f, dim)
        return self.freq_attn_agg(by_time, t)


class _SyncBlock(nn.Module):
    def __init__(self, cfg: SyncTransformerConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.heads = cfg.num_heads
        self.ln1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.ln2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = nn.Module()
        for name in ("key", "query", "value", "proj"):
            setattr(self.attn, name, nn.Linear(dim, dim))
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn
        x = x + a.proj(_plain_attention(a.query, a.key, a.value, self.ln1(x), self.heads))
        return x + self.mlp(self.ln2(x))


class SyncTransformer(nn.Module):
    """Classifies the audio-visual offset from 14 segments of video and audio features."""

    def __init__(self, cfg: SyncTransformerConfig = SYNC_TRANSFORMER):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.OFF_tok = nn.Parameter(torch.randn(1, 1, dim))
        self.MOD_tok = nn.Parameter(torch.randn(1, 1, dim))
        self.vis_in_lnorm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.aud_in_lnorm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.pos_emb_cfg = nn.Module()  # attribute name kept from the official state dict
        self.pos_emb_cfg.pos_emb = nn.Parameter(torch.randn(1, cfg.sequence_length, dim))
        self.blocks = nn.Sequential(*(_SyncBlock(cfg) for _ in range(cfg.depth)))
        self.ln_f = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.off_head = nn.Linear(dim, cfg.num_offsets)

    def forward(self, vis: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        """vis (B, Lv, D), aud (B, La, D) -> offset logits (B, num_offsets)."""
        b = vis.shape[0]
        x = torch.cat([self.OFF_tok.expand(b, -1, -1), self.vis_in_lnorm(vis),
                       self.MOD_tok.expand(b, -1, -1), self.aud_in_lnorm(aud)], dim=1)
        if x.shape[1] != self.pos_emb_cfg.pos_emb.shape[1]:
            raise SelvaError(f"The Synchformer offset transformer takes exactly {self.cfg.segments} "
                             f"segments of video and audio ({self.pos_emb_cfg.pos_emb.shape[1]} tokens), "
                             f"got {x.shape[1]} tokens")
        x = self.blocks(x + self.pos_emb_cfg.pos_emb)
        return self.off_head(self.ln_f(x)[:, 0])


class Synchformer(nn.Module):
    """The whole audio-visual synchronisation model, attribute names as in the released file."""

    def __init__(self, video: MotionFormerConfig = MOTIONFORMER_224,
                 audio: AudioExtractorConfig = AST_SYNCHFORMER,
                 sync: SyncTransformerConfig = SYNC_TRANSFORMER):
        super().__init__()
        self.vfeat_extractor = MotionFormer(video)
        self.afeat_extractor = AudioFeatureExtractor(audio)
        self.vproj = nn.Linear(video.embed_dim, sync.embed_dim)
        self.aproj = nn.Linear(audio.embed_dim, sync.embed_dim)
        self.transformer = SyncTransformer(sync)

    def video_features(self, segments: torch.Tensor) -> torch.Tensor:
        """(B, S, frames, C, H, W) in [-1, 1] -> (B, S, slots, D)."""
        b, s = segments.shape[:2]
        out = self.vfeat_extractor(segments.flatten(0, 1).transpose(1, 2))
        return out.reshape(b, s, *out.shape[1:])

    def audio_features(self, mels: torch.Tensor) -> torch.Tensor:
        """(B, S, n_mels, spec_frames) normalised log-mel -> (B, S, time_patches, D)."""
        b, s = mels.shape[:2]
        out = self.afeat_extractor(mels.flatten(0, 1))
        return out.reshape(b, s, *out.shape[1:])

    def offset_logits(self, vis: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        """Video (B, S, tv, D) and audio (B, S, ta, D) features -> (B, num_offsets) logits."""
        vis = self.vproj(vis).flatten(1, 2)
        aud = self.aproj(aud).flatten(1, 2)
        return self.transformer(vis, aud)


def load_synchformer(model: Synchformer, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load the released Synchformer file into the full model, every key strictly."""
    state_dict = require_tensors(state_dict, source=source, what="Synchformer checkpoint")
    load_strict(model, dict(state_dict), source=source, what="Synchformer (full audio-visual model)")
