"""taming-transformers' Encoder and Decoder and their building blocks, in Flax, NHWC inside.

One class per taming block, with taming's names (``down_0/block_1/norm1`` ...), so state dicts map
one to one; ``FlaxVQGANModule`` in ``module.py`` puts them together with the quantizer.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from ..kernels.cpu import conv2d, group_norm, upsample_conv
from .configuration import VQGANConfig

__all__ = [
    "FLOAT32_CONVS",
    "AttnBlock",
    "Conv",
    "Decoder",
    "Downsample",
    "DownsamplingBlock",
    "Encoder",
    "GroupNorm",
    "MidBlock",
    "ResnetBlock",
    "Upsample",
    "UpsampleConv",
    "UpsamplingBlock",
    "conv_compute_dtype",
]


class GroupNorm(nn.Module):
    """taming's ``Normalize``: GroupNorm(32 groups unless told, eps=1e-6), parameters ``scale`` and ``bias``
    as flax's ``nn.GroupNorm`` names them.

    Statistics are always float32 (bf16 statistics over thousands of pixels visibly shift the
    output) with torch's two-pass variance; swish, when asked, runs in float32 before the cast to
    ``out_dtype``. On CPU one fused kernel (``kernels.cpu.group_norm``).
    """

    num_groups: int = 32
    epsilon: float = 1e-6
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, out_dtype: Optional[jnp.dtype] = None, swish: bool = False) -> jax.Array:
        """Normalise NHWC ``x``; the result is ``out_dtype`` (float32 when not given)."""
        out_dtype = jnp.float32 if out_dtype is None else out_dtype
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        return group_norm(x, scale, bias, self.num_groups, self.epsilon, out_dtype, swish)


def _dtypes(module: nn.Module) -> Dict[str, Any]:
    """A block's compute and parameter dtypes, as the keywords its sub-blocks take."""
    return {"dtype": module.dtype, "param_dtype": module.param_dtype}


def _group_norm(groups: int = 32, *, param_dtype: jnp.dtype) -> GroupNorm:
    return GroupNorm(num_groups=groups, param_dtype=param_dtype)


class Conv(nn.Module):
    """A 2-D convolution with ``nn.Conv``'s parameters (``kernel`` HWIO, ``bias``) and padding;
    on CPU one oneDNN call with the bias fused (``kernels.cpu.conv2d``)."""

    features: int
    kernel_size: int = 3
    strides: tuple = (1, 1)
    padding: Any = "SAME"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, residual: Optional[jax.Array] = None) -> jax.Array:
        """Convolve; ``residual`` (the output's shape) is added in the same pass when given."""
        shape = (self.kernel_size, self.kernel_size, hidden_states.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        hidden_states, kernel, bias = promote_dtype(hidden_states, kernel, bias, dtype=self.dtype)
        if residual is not None:
            residual = residual.astype(hidden_states.dtype)
        return conv2d(hidden_states, kernel, bias, self.strides, self.padding, residual)


def _conv(features: int, kernel: int, *, dtype: jnp.dtype, param_dtype: jnp.dtype, **kwargs: Any) -> Conv:
    # taming's 3x3 convs pad 1 on every side ("SAME" equals that for odd kernels at stride 1).
    pad = (kernel - 1) // 2
    kwargs.setdefault("padding", ((pad, pad), (pad, pad)))
    return Conv(features, kernel, dtype=dtype, param_dtype=param_dtype, **kwargs)


class UpsampleConv(nn.Module):
    """Nearest-neighbour ×2 upsampling, then a 3x3 conv (padding 1) with ``nn.Conv``'s parameters
    (``kernel``, ``bias``); on CPU fused into one transposed conv (``kernels.cpu.upsample_conv``)."""

    features: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        shape = (3, 3, hidden_states.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        hidden_states, kernel, bias = promote_dtype(hidden_states, kernel, bias, dtype=self.dtype)
        return upsample_conv(hidden_states, kernel) + bias


# The model's precision, decided here once: every convolution computes in the model's dtype except
# these, which stay float32 in every dtype. The latents decide the codes, and the last encoder conv
# and quant_conv are cheap (token resolution); float32 there keeps a bf16 model's codes closer to
# the float32 model's (benchmarks/bf16_agreement.py measures how close). GroupNorm statistics,
# softmax and the codebook distances are float32 everywhere (GroupNorm, AttnBlock, the
# quantizers); a GroupNorm's output takes the dtype of the conv it feeds.
FLOAT32_CONVS = frozenset({("encoder", "conv_out"), ("quant_conv",)})


def conv_compute_dtype(path: Tuple[str, ...], dtype: Any) -> jnp.dtype:
    """The dtype the convolution at parameter path ``path`` (``("encoder", "conv_in")``) computes in,
    in a model of compute dtype ``dtype``: what the blocks build and the bf16 weight cache casts to."""
    return jnp.dtype(jnp.float32 if tuple(path) in FLOAT32_CONVS else dtype)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling, then a 3x3 conv when ``with_conv``."""

    in_channels: int
    with_conv: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        if self.with_conv:
            self.conv = UpsampleConv(self.in_channels, **_dtypes(self))

    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        if self.with_conv:
            return self.conv(hidden_states)
        # Repeating each pixel is exactly torch's interpolate(mode="nearest", scale_factor=2).
        return jnp.repeat(jnp.repeat(hidden_states, 2, axis=1), 2, axis=2)


class Downsample(nn.Module):
    """×2 downsampling: a stride-2 3x3 conv after a (0, 1) pad, or 2x2 average pooling."""

    in_channels: int
    with_conv: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        if self.with_conv:
            # taming pads only bottom/right by one, then a VALID stride-2 conv ("SAME" would pad
            # differently and shift every output pixel); the conv pads so, without a padded copy.
            pad = ((0, 1), (0, 1))
            self.conv = _conv(self.in_channels, 3, **_dtypes(self), strides=(2, 2), padding=pad)

    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        if self.with_conv:
            return self.conv(hidden_states)
        return nn.avg_pool(hidden_states, (2, 2), strides=(2, 2), padding="VALID")


class ResnetBlock(nn.Module):
    """GroupNorm → swish → conv, twice, plus a (1x1 ``nin_shortcut`` when channels change) skip."""

    in_channels: int
    out_channels: Optional[int] = None
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    norm_groups: int = 32  # taming: 32; VQGANConfig.norm_num_groups

    def setup(self) -> None:
        out_channels = self.out_channels or self.in_channels
        self.norm1 = _group_norm(self.norm_groups, param_dtype=self.param_dtype)
        self.conv1 = _conv(out_channels, 3, **_dtypes(self))
        self.norm2 = _group_norm(self.norm_groups, param_dtype=self.param_dtype)
        self.dropout_layer = nn.Dropout(self.dropout)
        self.conv2 = _conv(out_channels, 3, **_dtypes(self))
        if out_channels != self.in_channels:
            self.nin_shortcut = _conv(out_channels, 1, **_dtypes(self))

    def __call__(self, hidden_states: jax.Array, deterministic: bool = True) -> jax.Array:
        residual = hidden_states
        hidden_states = self.norm1(hidden_states, out_dtype=self.dtype, swish=True)
        hidden_states = self.conv1(hidden_states)
        hidden_states = self.norm2(hidden_states, out_dtype=self.dtype, swish=True)
        hidden_states = self.dropout_layer(hidden_states, deterministic=deterministic)
        if (self.out_channels or self.in_channels) != self.in_channels:
            residual = self.nin_shortcut(residual)
        return self.conv2(hidden_states, residual=residual)  # conv2(h) + residual in one pass on CPU


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all h*w positions, with a residual connection."""

    in_channels: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    norm_groups: int = 32  # taming: 32; VQGANConfig.norm_num_groups

    def setup(self) -> None:
        self.norm = _group_norm(self.norm_groups, param_dtype=self.param_dtype)
        self.q = _conv(self.in_channels, 1, **_dtypes(self))
        self.k = _conv(self.in_channels, 1, **_dtypes(self))
        self.v = _conv(self.in_channels, 1, **_dtypes(self))
        self.proj_out = _conv(self.in_channels, 1, **_dtypes(self))

    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        batch, height, width, channels = hidden_states.shape
        normed = self.norm(hidden_states, out_dtype=self.dtype)
        query, key, value = (
            layer(normed).reshape(batch, height * width, channels) for layer in (self.q, self.k, self.v)
        )
        # Scaled by C^-0.5 as taming does (one head of width C); softmax over the key positions.
        scores = jnp.einsum("bic,bjc->bij", query, key) * (channels**-0.5)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
        attended = jnp.einsum("bij,bjc->bic", weights, value).reshape(batch, height, width, channels)
        return self.proj_out(attended, residual=hidden_states)


class DownsamplingBlock(nn.Module):
    """One encoder level: ``num_res_blocks`` ResnetBlocks (each followed by attention where
    taming has it) and a Downsample unless it is the last level."""

    config: VQGANConfig
    block_idx: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        in_ch_mult = (1, *tuple(cfg.ch_mult))
        block_in = cfg.ch * in_ch_mult[self.block_idx]
        block_out = cfg.ch * cfg.ch_mult[self.block_idx]
        blocks, attns = [], []
        for _ in range(cfg.num_res_blocks):
            blocks.append(
                ResnetBlock(block_in, block_out, cfg.dropout, **_dtypes(self), norm_groups=cfg.norm_num_groups)
            )
            block_in = block_out
            if cfg.attention_at_level(self.block_idx):
                attns.append(AttnBlock(block_in, **_dtypes(self), norm_groups=cfg.norm_num_groups))
        self.block = blocks
        self.attn = attns
        if self.block_idx != cfg.num_resolutions - 1:
            self.downsample = Downsample(block_in, cfg.resamp_with_conv, **_dtypes(self))

    def __call__(self, hidden_states: jax.Array, deterministic: bool = True) -> jax.Array:
        for i, block in enumerate(self.block):
            hidden_states = block(hidden_states, deterministic=deterministic)
            if self.attn:
                hidden_states = self.attn[i](hidden_states)
        if self.block_idx != self.config.num_resolutions - 1:
            hidden_states = self.downsample(hidden_states)
        return hidden_states


class UpsamplingBlock(nn.Module):
    """One decoder level: ``num_res_blocks + 1`` ResnetBlocks (with attention where taming has
    it) and an Upsample unless it is level 0 (the highest resolution)."""

    config: VQGANConfig
    block_idx: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        # The level below (block_idx + 1) feeds this one; the lowest level is fed by the mid block.
        block_in = cfg.ch * cfg.ch_mult[min(self.block_idx + 1, cfg.num_resolutions - 1)]
        block_out = cfg.ch * cfg.ch_mult[self.block_idx]
        blocks, attns = [], []
        for _ in range(cfg.num_res_blocks + 1):
            blocks.append(
                ResnetBlock(block_in, block_out, cfg.dropout, **_dtypes(self), norm_groups=cfg.norm_num_groups)
            )
            block_in = block_out
            if cfg.attention_at_level(self.block_idx):
                attns.append(AttnBlock(block_in, **_dtypes(self), norm_groups=cfg.norm_num_groups))
        self.block = blocks
        self.attn = attns
        if self.block_idx != 0:
            self.upsample = Upsample(block_in, cfg.resamp_with_conv, **_dtypes(self))

    def __call__(self, hidden_states: jax.Array, deterministic: bool = True) -> jax.Array:
        for i, block in enumerate(self.block):
            hidden_states = block(hidden_states, deterministic=deterministic)
            if self.attn:
                hidden_states = self.attn[i](hidden_states)
        if self.block_idx != 0:
            hidden_states = self.upsample(hidden_states)
        return hidden_states


class MidBlock(nn.Module):
    """ResnetBlock → AttnBlock (unless ``use_attention`` is False) → ResnetBlock."""

    channels: int
    dropout: float = 0.0
    use_attention: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    norm_groups: int = 32  # taming: 32; VQGANConfig.norm_num_groups

    def setup(self) -> None:
        self.block_1 = ResnetBlock(
            self.channels, self.channels, self.dropout, **_dtypes(self), norm_groups=self.norm_groups
        )
        if self.use_attention:
            self.attn_1 = AttnBlock(self.channels, **_dtypes(self), norm_groups=self.norm_groups)
        self.block_2 = ResnetBlock(
            self.channels, self.channels, self.dropout, **_dtypes(self), norm_groups=self.norm_groups
        )

    def __call__(self, hidden_states: jax.Array, deterministic: bool = True) -> jax.Array:
        hidden_states = self.block_1(hidden_states, deterministic=deterministic)
        if self.use_attention:
            hidden_states = self.attn_1(hidden_states)
        return self.block_2(hidden_states, deterministic=deterministic)


class Encoder(nn.Module):
    """Pixels (B, H, W, in_channels) → latents (B, H/f, W/f, z_channels [×2 if double_z])."""

    config: VQGANConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        self.conv_in = _conv(cfg.ch, 3, **_dtypes(self))
        self.down = [DownsamplingBlock(cfg, i, **_dtypes(self)) for i in range(cfg.num_resolutions)]
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.mid = MidBlock(
            block_in,
            cfg.dropout,
            cfg.mid_block_attention,
            **_dtypes(self),
            norm_groups=cfg.norm_num_groups,
        )
        self.norm_out = _group_norm(cfg.norm_num_groups, param_dtype=self.param_dtype)
        out_channels = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        out_dtype = conv_compute_dtype(("encoder", "conv_out"), self.dtype)  # float32: FLOAT32_CONVS
        self.conv_out = _conv(out_channels, 3, dtype=out_dtype, param_dtype=self.param_dtype)

    def __call__(self, pixel_values: jax.Array, deterministic: bool = True) -> jax.Array:
        hidden_states = self.conv_in(pixel_values.astype(self.dtype))
        for level in self.down:
            hidden_states = level(hidden_states, deterministic=deterministic)
        hidden_states = self.mid(hidden_states, deterministic=deterministic)
        hidden_states = self.norm_out(hidden_states, out_dtype=self.conv_out.dtype, swish=True)
        return self.conv_out(hidden_states)


class Decoder(nn.Module):
    """Latents (B, h, w, z_channels) → pixels (B, h*f, w*f, out_ch)."""

    config: VQGANConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = _conv(block_in, 3, **_dtypes(self))
        self.mid = MidBlock(
            block_in,
            cfg.dropout,
            cfg.mid_block_attention,
            **_dtypes(self),
            norm_groups=cfg.norm_num_groups,
        )
        # up_0 is the highest resolution, as taming's decoder.up[0]; they run in reverse order.
        self.up = [UpsamplingBlock(cfg, i, **_dtypes(self)) for i in range(cfg.num_resolutions)]
        self.norm_out = _group_norm(cfg.norm_num_groups, param_dtype=self.param_dtype)
        self.conv_out = _conv(cfg.out_ch, 3, **_dtypes(self))

    def __call__(self, hidden_states: jax.Array, deterministic: bool = True) -> jax.Array:
        hidden_states = self.conv_in(hidden_states.astype(self.dtype))
        hidden_states = self.mid(hidden_states, deterministic=deterministic)
        for level in reversed(self.up):
            hidden_states = level(hidden_states, deterministic=deterministic)
        if self.config.give_pre_end:
            if self.is_initializing():
                # taming still owns norm_out/conv_out; create them so state dicts map one to one.
                self.conv_out(self.norm_out(hidden_states, out_dtype=self.dtype, swish=True))
            return hidden_states
        hidden_states = self.norm_out(hidden_states, out_dtype=self.dtype, swish=True)
        return self.conv_out(hidden_states)
