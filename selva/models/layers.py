"""Building blocks shared by the SelVA networks (MM-DiT generator, text-conditioned Synchformer).

Every module keeps the attribute names of the released checkpoints, so their state dicts load
unchanged with ``strict=True``.

Precision policy (float16 only; float32 and bfloat16 run exactly the reference arithmetic):

* float16 tops out at 65504. The residual streams of the transformers (they grow with depth),
  LayerNorm/RMSNorm statistics and the adaLN ``x * (1 + scale) + shift`` products are computed
  in float32; the generator carries its streams in float32 when its weights are float16.
* The gated-MLP product ``silu(w1 x) * w3 x`` squares the activation scale and is the first
  value to overflow. It is formed in float32 and scaled down by an exact power of two before
  ``w2`` runs in float16; the result is scaled back in float32 (MLP/ConvMLP then return float32).
* Other matrix products stay in the weights' dtype (that is where half precision pays off). Our
  ``Linear`` / ``ChannelLastConv1d`` cast their input to the weight dtype, saturating at the
  float16 range so that a large-but-finite float32 value cannot turn into ``inf``.
* Attention logits need no special care: q and k are RMS-normalised per head before the product,
  so ``|q.k| / sqrt(d)`` is bounded by the norm weights, and SDPA subtracts the row max anyway.
* Rotary position embedding is always applied in float32 (as the reference does).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

FP16_MAX = float(torch.finfo(torch.float16).max)


# --------------------------------------------------------------------------------------------
# dtype helpers
# --------------------------------------------------------------------------------------------

def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype elementwise/normalisation math runs in for tensors of ``dtype``."""
    return torch.float32 if dtype == torch.float16 else dtype


def upcast_half(x: torch.Tensor) -> torch.Tensor:
    """float16 -> float32; any other dtype unchanged (so fp32/bf16 keep reference arithmetic)."""
    return x.float() if x.dtype == torch.float16 else x


def cast_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast for a matmul input; saturate instead of overflowing when narrowing to float16."""
    if x.dtype == dtype:
        return x
    if dtype == torch.float16:
        # Clamp in float32: bf16 cannot even represent the float16 maximum exactly.
        x = x.float().clamp(-FP16_MAX, FP16_MAX)
    return x.to(dtype)


def _needs_fp32(norm: nn.Module, x: torch.Tensor) -> bool:
    weight = getattr(norm, 'weight', None)
    return x.dtype == torch.float16 or (weight is not None and weight.dtype != x.dtype)


def layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """Apply ``norm``; float16 input (or a float32 stream over float16 weights) runs in float32."""
    if not _needs_fp32(norm, x):
        return norm(x)
    weight = None if norm.weight is None else norm.weight.float()
    bias = None if norm.bias is None else norm.bias.float()
    return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps)


def rms_norm(norm: nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """Apply ``norm``; float16 input is normalised in float32 (and stays float32)."""
    if not _needs_fp32(norm, x):
        return norm(x)
    weight = None if norm.weight is None else norm.weight.float()
    return F.rms_norm(x.float(), norm.normalized_shape, weight, norm.eps)


# --------------------------------------------------------------------------------------------
# Linear layers and feed-forward networks
# --------------------------------------------------------------------------------------------

class Linear(nn.Linear):
    """``nn.Linear`` that accepts input of any float dtype (cast to the weight dtype)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(cast_to(x, self.weight.dtype))


class ChannelLastConv1d(nn.Conv1d):
    """1-D convolution over the sequence axis of a ``(batch, length, channels)`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = cast_to(x, self.weight.dtype).permute(0, 2, 1)
        return super().forward(x).permute(0, 2, 1)


def gated_hidden_dim(hidden_dim: int, multiple_of: int = 256) -> int:
    """Width of the gated MLP: two thirds of ``hidden_dim``, rounded up to ``multiple_of``."""
    hidden = int(2 * hidden_dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


# Largest magnitude the float16 copy of the gate product may have: leaves w2's sum over ~2k
# hidden channels plenty of headroom below 65504.
_FP16_GATE_BOUND = 2.0**8


def _swiglu(w1: nn.Module, w2: nn.Module, w3: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``w2(silu(w1 x) * w3 x)``.

    Under float16 weights the product of two activations is what overflows first. It is formed in
    float32 and divided by a power of two (exact) so that its float16 copy stays small; w2's
    output is multiplied back in float32 and returned as float32. The scale is a tensor, so
    there is no host synchronisation.
    """
    x = cast_to(x, w1.weight.dtype)
    a, b = w1(x), w3(x)
    if w2.weight.dtype != torch.float16:
        return w2(F.silu(a) * b)
    hidden = F.silu(a.float()) * b.float()
    peak = hidden.abs().amax().clamp(min=1.0)
    scale = torch.exp2(torch.ceil(torch.log2(peak / _FP16_GATE_BOUND)).clamp(min=0.0))
    return w2((hidden / scale).to(torch.float16)).float() * scale


class MLP(nn.Module):
    """SwiGLU feed-forward ``w2(silu(w1 x) * w3 x)`` without biases."""

    def __init__(self, dim: int, hidden_dim: int, multiple_of: int = 256) -> None:
        super().__init__()
        hidden = gated_hidden_dim(hidden_dim, multiple_of)
        self.w1 = Linear(dim, hidden, bias=False)
        self.w2 = Linear(hidden, dim, bias=False)
        self.w3 = Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _swiglu(self.w1, self.w2, self.w3, x)


class ConvMLP(nn.Module):
    """SwiGLU feed-forward whose three projections are sequence convolutions."""

    def __init__(self,
                 dim: int,
                 hidden_dim: int,
                 multiple_of: int = 256,
                 kernel_size: int = 3,
                 padding: int = 1) -> None:
        super().__init__()
        hidden = gated_hidden_dim(hidden_dim, multiple_of)

        def conv(cin: int, cout: int) -> ChannelLastConv1d:
            return ChannelLastConv1d(cin, cout, kernel_size=kernel_size, padding=padding,
                                     bias=False)

        self.w1 = conv(dim, hidden)
        self.w2 = conv(hidden, dim)
        self.w3 = conv(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _swiglu(self.w1, self.w2, self.w3, x)


def feed_forward(dim: int, mlp_ratio: float, kernel_size: int, padding: int) -> nn.Module:
    """The block FFN: a plain MLP for kernel size 1, a ConvMLP otherwise."""
    if kernel_size == 1:
        return MLP(dim, int(dim * mlp_ratio))
    return ConvMLP(dim, int(dim * mlp_ratio), kernel_size=kernel_size, padding=padding)


def output_projection(dim: int, kernel_size: int, padding: int) -> nn.Module:
    """The projection after attention: Linear for kernel size 1, a sequence conv otherwise."""
    if kernel_size == 1:
        return Linear(dim, dim)
    return ChannelLastConv1d(dim, dim, kernel_size=kernel_size, padding=padding)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift``."""
    return x * (1 + scale) + shift


# --------------------------------------------------------------------------------------------
# Rotary position embedding
# --------------------------------------------------------------------------------------------

def compute_rope_rotations(length: int,
                           dim: int,
                           theta: float = 10000,
                           *,
                           freq_scaling: float = 1.0,
                           device: Optional[torch.device | str] = None) -> torch.Tensor:
    """Rotation matrices for positions ``0..length-1``: float32, shape ``(1, length, dim/2, 2, 2)``.

    ``freq_scaling`` stretches a shorter sequence (e.g. 8 fps CLIP frames) onto the time axis of
    a longer one (the audio latents), so that equal times get equal angles.
    """
    if dim % 2:
        raise ValueError(f"rotary dimension must be even, got {dim}")
    pos = torch.arange(length, dtype=torch.float32, device=device)
    inv_freq = 1.0 / (theta**(torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    inv_freq *= freq_scaling
    angles = torch.einsum('n,f->nf', pos, inv_freq)
    cos, sin = torch.cos(angles), torch.sin(angles)
    # Row-major 2x2 [[cos, -sin], [sin, cos]] per (position, frequency).
    rot = torch.stack([cos, -sin, sin, cos], dim=-1)
    return rot.view(1, length, dim // 2, 2, 2)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``x`` (``(..., length, dim)``) in float32.

    Returns float32 for float16 input (the caller's attention casts back), else ``x.dtype``.
    """
    pairs = x.float().view(*x.shape[:-1], -1, 1, 2)
    out = rot[..., 0] * pairs[..., 0] + rot[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape).to(compute_dtype(x.dtype))


# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------

def attention(q: torch.Tensor,
              k: torch.Tensor,
              v: torch.Tensor,
              attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scaled dot-product attention over ``(batch, heads, length, head_dim)`` tensors.

    Returns ``(batch, length, heads * head_dim)`` in ``v``'s dtype.
    """
    q = q.to(v.dtype).contiguous()
    k = k.to(v.dtype).contiguous()
    v = v.contiguous()
    if attn_mask is not None:
        attn_mask = attn_mask.contiguous()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    b, h, n, d = out.shape
    return out.permute(0, 2, 1, 3).reshape(b, n, h * d).contiguous()


def _split_heads(x: torch.Tensor, nheads: int, parts: int) -> tuple[torch.Tensor, ...]:
    """``(b, n, heads*head_dim*parts)`` -> ``parts`` tensors ``(b, heads, n, head_dim)``.

    The checkpoints interleave the parts innermost (channel = (head, dim, part)).
    """
    b, n, c = x.shape
    x = x.view(b, n, nheads, c // (nheads * parts), parts).permute(0, 2, 1, 3, 4)
    return x.unbind(dim=-1)


class SelfAttention(nn.Module):
    """Fused qkv projection with per-head RMS-normalised queries and keys."""

    def __init__(self, dim: int, nheads: int) -> None:
        super().__init__()
        self.nheads = nheads
        self.qkv = Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.RMSNorm(dim // nheads)
        self.k_norm = nn.RMSNorm(dim // nheads)

    def pre_attention(
            self, x: torch.Tensor,
            rot: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = _split_heads(self.qkv(x), self.nheads, 3)
        q = rms_norm(self.q_norm, q)
        k = rms_norm(self.k_norm, k)
        if rot is not None:
            q = apply_rope(q, rot)
            k = apply_rope(k, rot)
        return q, k, v


class CrossAttention(nn.Module):
    """Queries from ``x``, keys/values from a context sequence."""

    def __init__(self, dim: int, nheads: int) -> None:
        super().__init__()
        self.nheads = nheads
        self.q_proj = Linear(dim, dim, bias=True)
        self.kv_proj = Linear(dim, dim * 2, bias=True)
        self.q_norm = nn.RMSNorm(dim // nheads)
        self.k_norm = nn.RMSNorm(dim // nheads)

    def pre_attention(self, x: torch.Tensor,
                      context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        (q,) = _split_heads(self.q_proj(x), self.nheads, 1)
        k, v = _split_heads(self.kv_proj(context), self.nheads, 2)
        return rms_norm(self.q_norm, q), rms_norm(self.k_norm, k), v


class MMCrossAttentionBlock(nn.Module):
    """Cross-attention block of the text-conditioned Synchformer.

    ``x + LN1(linear1(attn(x, context)))``, then ``+ ffn(LN2(.))``. Note the reference normalises
    the attention *output*, not the block input.
    """

    def __init__(self, dim: int, nhead: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=True)
        self.attn = CrossAttention(dim, nhead)
        self.linear1 = Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=True)
        self.ffn = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor) -> torch.Tensor:
        """``context_mask`` (B, context length) is True where a context token may be attended."""
        in_dtype = x.dtype
        stream = upcast_half(x)
        q, k, v = self.attn.pre_attention(x, context)
        mask = context_mask[:, None, None, :].expand(-1, 1, q.shape[-2], -1)
        attn_out = layer_norm(self.norm1, upcast_half(self.linear1(attention(q, k, v, mask))))
        stream = stream + attn_out
        stream = stream + upcast_half(self.ffn(layer_norm(self.norm2, stream)))
        return cast_to(stream, in_dtype)


# --------------------------------------------------------------------------------------------
# MM-DiT blocks (generator)
# --------------------------------------------------------------------------------------------

class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the flow time followed by a two-layer MLP."""

    def __init__(self, dim: int, frequency_embedding_size: int, max_period: float) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"timestep embedding width must be even, got {dim}")
        self.mlp = nn.Sequential(
            Linear(frequency_embedding_size, dim),
            nn.SiLU(),
            Linear(dim, dim),
        )
        self.frequency_embedding_size = frequency_embedding_size
        self.max_period = max_period
        # Derived, not stored in checkpoints; like the reference it follows .to(dtype).
        self.register_buffer('freqs', self.make_freqs(), persistent=False)

    def make_freqs(self, device: Optional[torch.device] = None) -> torch.Tensor:
        size = self.frequency_embedding_size
        base = 1.0 / (10000**(torch.arange(0, size, 2, dtype=torch.float32, device=device) / size))
        return (10000 / self.max_period) * base

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # The sinusoid is evaluated in float32 whatever the model dtype (v2 uses arguments up to
        # 1e4, far beyond half-precision resolution), then cast like the reference does.
        args = t[:, None].float() * self.freqs[None]
        t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)
        return self.mlp(t_freq)


class MMDitSingleBlock(nn.Module):
    """adaLN-modulated transformer block; ``pre_only`` blocks stop after producing q, k, v."""

    def __init__(self,
                 dim: int,
                 nhead: int,
                 mlp_ratio: float = 4.0,
                 pre_only: bool = False,
                 kernel_size: int = 7,
                 padding: int = 3) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = SelfAttention(dim, nhead)
        self.pre_only = pre_only
        if pre_only:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(dim, 2 * dim, bias=True))
        else:
            self.linear1 = output_projection(dim, kernel_size, padding)
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
            self.ffn = feed_forward(dim, mlp_ratio, kernel_size, padding)
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(dim, 6 * dim, bias=True))

    def _modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtype = self.adaLN_modulation[1].weight.dtype
        mod = upcast_half(self.adaLN_modulation(cast_to(c, dtype)))
        return mod.chunk(2 if self.pre_only else 6, dim=-1)

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor, rot: Optional[torch.Tensor]):
        """q, k, v of the modulated input, and the modulation terms ``post_attention`` needs."""
        mod = self._modulation(c)
        shift_msa, scale_msa = mod[0], mod[1]
        rest = (None, None, None, None) if self.pre_only else mod[2:]
        h = modulate(layer_norm(self.norm1, x), shift_msa, scale_msa)
        return self.attn.pre_attention(h, rot), rest

    def post_attention(self, x: torch.Tensor, attn_out: torch.Tensor,
                       mod: tuple[Optional[torch.Tensor], ...]) -> torch.Tensor:
        if self.pre_only:
            return x
        gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        x = x + upcast_half(self.linear1(attn_out)) * gate_msa
        h = modulate(layer_norm(self.norm2, x), shift_mlp, scale_mlp)
        return x + upcast_half(self.ffn(h)) * gate_mlp

    def forward(self, x: torch.Tensor, c: torch.Tensor,
                rot: Optional[torch.Tensor]) -> torch.Tensor:
        qkv, mod = self.pre_attention(x, c, rot)
        return self.post_attention(x, attention(*qkv), mod)


class JointBlock(nn.Module):
    """One MM-DiT layer: latent, CLIP and text streams attend jointly over their concatenation."""

    def __init__(self, dim: int, nhead: int, mlp_ratio: float = 4.0,
                 pre_only: bool = False) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.latent_block = MMDitSingleBlock(dim, nhead, mlp_ratio, pre_only=False,
                                             kernel_size=3, padding=1)
        self.clip_block = MMDitSingleBlock(dim, nhead, mlp_ratio, pre_only=pre_only,
                                           kernel_size=3, padding=1)
        self.text_block = MMDitSingleBlock(dim, nhead, mlp_ratio, pre_only=pre_only,
                                           kernel_size=1)

    def forward(self, latent: torch.Tensor, clip_f: torch.Tensor, text_f: torch.Tensor,
                global_c: torch.Tensor, extended_c: torch.Tensor, latent_rot: torch.Tensor,
                clip_rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_qkv, x_mod = self.latent_block.pre_attention(latent, extended_c, latent_rot)
        c_qkv, c_mod = self.clip_block.pre_attention(clip_f, global_c, clip_rot)
        t_qkv, t_mod = self.text_block.pre_attention(text_f, global_c, None)

        # Streams may differ in dtype only under the float16 policy; align before concatenating.
        dtype = x_qkv[2].dtype
        joint = [torch.cat([x_qkv[i].to(dtype), c_qkv[i].to(dtype), t_qkv[i].to(dtype)], dim=2)
                 for i in range(3)]
        out = attention(*joint)
        n_lat, n_clip = latent.shape[1], clip_f.shape[1]

        latent = self.latent_block.post_attention(latent, out[:, :n_lat], x_mod)
        if not self.pre_only:
            clip_f = self.clip_block.post_attention(clip_f, out[:, n_lat:n_lat + n_clip], c_mod)
            text_f = self.text_block.post_attention(text_f, out[:, n_lat + n_clip:], t_mod)
        return latent, clip_f, text_f


class FinalBlock(nn.Module):
    """adaLN-modulated LayerNorm then a kernel-7 conv to the latent channels."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(dim, 2 * dim, bias=True))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.conv = ChannelLastConv1d(dim, out_dim, kernel_size=7, padding=3)

    def forward(self, latent: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        dtype = self.adaLN_modulation[1].weight.dtype
        shift, scale = upcast_half(self.adaLN_modulation(cast_to(c, dtype))).chunk(2, dim=-1)
        return self.conv(modulate(layer_norm(self.norm, latent), shift, scale))
