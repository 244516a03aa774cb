"""VQGAN in Flax: taming-transformers' Encoder, Decoder and quantizers, NHWC inside.

Parameter names follow vqgan-jax (and so taming's state-dict names), so DALL·E-mini's Flax
checkpoints load unchanged and taming checkpoints convert by renaming and transposing only.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from transformers.modeling_flax_utils import FlaxPreTrainedModel

from .configuration_vqgan import VQGANConfig
from .modeling_outputs import VQGANEncoderOutput, VQGANOutput, indices_to_grid
from .quantizers import GumbelQuantizer, QuantizerOutput, VectorQuantizer

__all__ = [
    "AttnBlock",
    "Decoder",
    "Downsample",
    "DownsamplingBlock",
    "Encoder",
    "FlaxVQGANModel",
    "FlaxVQGANModule",
    "FlaxVQGANPreTrainedModel",
    "GumbelQuantizer",
    "MidBlock",
    "ResnetBlock",
    "Upsample",
    "UpsamplingBlock",
    "VQGANEncoderOutput",
    "VQGANOutput",
    "VQModel",
    "VectorQuantizer",
]


def _group_norm(param_dtype: jnp.dtype) -> nn.GroupNorm:
    """taming's ``Normalize``: GroupNorm(32 groups, eps=1e-6).

    It always computes in float32 (bf16 statistics over thousands of pixels visibly shift the
    output) with torch's two-pass variance; ``_normalize`` casts back to the compute dtype.
    """
    return nn.GroupNorm(
        num_groups=32, epsilon=1e-6, dtype=jnp.float32, param_dtype=param_dtype, use_fast_variance=False
    )


def _normalize(norm: nn.GroupNorm, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Apply a float32 GroupNorm and return the compute dtype."""
    return norm(x.astype(jnp.float32)).astype(dtype)


def _conv(features: int, kernel: int, dtype: jnp.dtype, param_dtype: jnp.dtype, **kwargs: Any) -> nn.Conv:
    # taming's 3x3 convs pad 1 on every side ("SAME" equals that for odd kernels at stride 1).
    pad = (kernel - 1) // 2
    kwargs.setdefault("padding", ((pad, pad), (pad, pad)))
    return nn.Conv(features, (kernel, kernel), dtype=dtype, param_dtype=param_dtype, **kwargs)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling, then a 3x3 conv when ``with_conv``."""

    in_channels: int
    with_conv: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        if self.with_conv:
            self.conv = _conv(self.in_channels, 3, self.dtype, self.param_dtype)

    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        # Repeating each pixel is exactly torch's interpolate(mode="nearest", scale_factor=2).
        hidden_states = jnp.repeat(jnp.repeat(hidden_states, 2, axis=1), 2, axis=2)
        if self.with_conv:
            hidden_states = self.conv(hidden_states)
        return hidden_states


class Downsample(nn.Module):
    """×2 downsampling: a stride-2 3x3 conv after a (0, 1) pad, or 2x2 average pooling."""

    in_channels: int
    with_conv: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        if self.with_conv:
            self.conv = _conv(self.in_channels, 3, self.dtype, self.param_dtype, strides=(2, 2), padding="VALID")

    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        if self.with_conv:
            # taming pads only bottom/right by one, then a VALID stride-2 conv; "SAME" would pad
            # differently and shift every output pixel.
            hidden_states = jnp.pad(hidden_states, ((0, 0), (0, 1), (0, 1), (0, 0)))
            return self.conv(hidden_states)
        return nn.avg_pool(hidden_states, (2, 2), strides=(2, 2), padding="VALID")


class ResnetBlock(nn.Module):
    """GroupNorm → swish → conv, twice, plus a (1x1 ``nin_shortcut`` when channels change) skip."""

    in_channels: int
    out_channels: Optional[int] = None
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        out_channels = self.out_channels or self.in_channels
        self.norm1 = _group_norm(self.param_dtype)
        self.conv1 = _conv(out_channels, 3, self.dtype, self.param_dtype)
        self.norm2 = _group_norm(self.param_dtype)
        self.dropout_layer = nn.Dropout(self.dropout)
        self.conv2 = _conv(out_channels, 3, self.dtype, self.param_dtype)
        if out_channels != self.in_channels:
            self.nin_shortcut = _conv(out_channels, 1, self.dtype, self.param_dtype)

    def __call__(self, hidden_states: jax.Array, deterministic: bool = True) -> jax.Array:
        residual = hidden_states
        hidden_states = nn.swish(_normalize(self.norm1, hidden_states, self.dtype))
        hidden_states = self.conv1(hidden_states)
        hidden_states = nn.swish(_normalize(self.norm2, hidden_states, self.dtype))
        hidden_states = self.dropout_layer(hidden_states, deterministic=deterministic)
        hidden_states = self.conv2(hidden_states)
        if (self.out_channels or self.in_channels) != self.in_channels:
            residual = self.nin_shortcut(residual)
        return residual + hidden_states


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all h*w positions, with a residual connection."""

    in_channels: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        self.norm = _group_norm(self.param_dtype)
        self.q = _conv(self.in_channels, 1, self.dtype, self.param_dtype)
        self.k = _conv(self.in_channels, 1, self.dtype, self.param_dtype)
        self.v = _conv(self.in_channels, 1, self.dtype, self.param_dtype)
        self.proj_out = _conv(self.in_channels, 1, self.dtype, self.param_dtype)

    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        batch, height, width, channels = hidden_states.shape
        normed = _normalize(self.norm, hidden_states, self.dtype)
        query, key, value = (
            layer(normed).reshape(batch, height * width, channels) for layer in (self.q, self.k, self.v)
        )
        # Scaled by C^-0.5 as taming does (one head of width C); softmax over the key positions.
        scores = jnp.einsum("bic,bjc->bij", query, key) * (channels**-0.5)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
        attended = jnp.einsum("bij,bjc->bic", weights, value).reshape(batch, height, width, channels)
        return hidden_states + self.proj_out(attended)


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
            blocks.append(ResnetBlock(block_in, block_out, cfg.dropout, self.dtype, self.param_dtype))
            block_in = block_out
            if cfg.attention_at_level(self.block_idx):
                attns.append(AttnBlock(block_in, self.dtype, self.param_dtype))
        self.block = blocks
        self.attn = attns
        if self.block_idx != cfg.num_resolutions - 1:
            self.downsample = Downsample(block_in, cfg.resamp_with_conv, self.dtype, self.param_dtype)

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
            blocks.append(ResnetBlock(block_in, block_out, cfg.dropout, self.dtype, self.param_dtype))
            block_in = block_out
            if cfg.attention_at_level(self.block_idx):
                attns.append(AttnBlock(block_in, self.dtype, self.param_dtype))
        self.block = blocks
        self.attn = attns
        if self.block_idx != 0:
            self.upsample = Upsample(block_in, cfg.resamp_with_conv, self.dtype, self.param_dtype)

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

    def setup(self) -> None:
        self.block_1 = ResnetBlock(self.channels, self.channels, self.dropout, self.dtype, self.param_dtype)
        if self.use_attention:
            self.attn_1 = AttnBlock(self.channels, self.dtype, self.param_dtype)
        self.block_2 = ResnetBlock(self.channels, self.channels, self.dropout, self.dtype, self.param_dtype)

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
        self.conv_in = _conv(cfg.ch, 3, self.dtype, self.param_dtype)
        self.down = [DownsamplingBlock(cfg, i, self.dtype, self.param_dtype) for i in range(cfg.num_resolutions)]
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.mid = MidBlock(block_in, cfg.dropout, cfg.mid_block_attention, self.dtype, self.param_dtype)
        self.norm_out = _group_norm(self.param_dtype)
        out_channels = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        # The latents decide the codes: the last conv (cheap, at token resolution) stays float32
        # in every dtype, which raised bf16's index agreement with float32 from 93% to 95%.
        self.conv_out = _conv(out_channels, 3, jnp.float32, self.param_dtype)

    def __call__(self, pixel_values: jax.Array, deterministic: bool = True) -> jax.Array:
        hidden_states = self.conv_in(pixel_values.astype(self.dtype))
        for level in self.down:
            hidden_states = level(hidden_states, deterministic=deterministic)
        hidden_states = self.mid(hidden_states, deterministic=deterministic)
        hidden_states = nn.swish(_normalize(self.norm_out, hidden_states, jnp.float32))
        return self.conv_out(hidden_states)


class Decoder(nn.Module):
    """Latents (B, h, w, z_channels) → pixels (B, h*f, w*f, out_ch)."""

    config: VQGANConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = _conv(block_in, 3, self.dtype, self.param_dtype)
        self.mid = MidBlock(block_in, cfg.dropout, cfg.mid_block_attention, self.dtype, self.param_dtype)
        # up_0 is the highest resolution, as taming's decoder.up[0]; they run in reverse order.
        self.up = [UpsamplingBlock(cfg, i, self.dtype, self.param_dtype) for i in range(cfg.num_resolutions)]
        self.norm_out = _group_norm(self.param_dtype)
        self.conv_out = _conv(cfg.out_ch, 3, self.dtype, self.param_dtype)

    def __call__(self, hidden_states: jax.Array, deterministic: bool = True) -> jax.Array:
        hidden_states = self.conv_in(hidden_states.astype(self.dtype))
        hidden_states = self.mid(hidden_states, deterministic=deterministic)
        for level in reversed(self.up):
            hidden_states = level(hidden_states, deterministic=deterministic)
        if self.config.give_pre_end:
            if self.is_initializing():
                # taming still owns norm_out/conv_out; create them so state dicts map one to one.
                self.conv_out(nn.swish(_normalize(self.norm_out, hidden_states, self.dtype)))
            return hidden_states
        hidden_states = nn.swish(_normalize(self.norm_out, hidden_states, self.dtype))
        return self.conv_out(hidden_states)


class FlaxVQGANModule(nn.Module):
    """The whole VQGAN: encoder → quant_conv → quantizer, and post_quant_conv → decoder."""

    config: VQGANConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        self.encoder = Encoder(cfg, self.dtype, self.param_dtype)
        self.decoder = Decoder(cfg, self.dtype, self.param_dtype)
        self.quant_conv = _conv(cfg.embed_dim, 1, jnp.float32, self.param_dtype)  # float32: see Encoder.conv_out
        self.post_quant_conv = _conv(cfg.z_channels, 1, self.dtype, self.param_dtype)
        if cfg.quantizer == "gumbel":
            self.quantize = GumbelQuantizer(
                cfg.n_embed,
                cfg.embed_dim,
                cfg.kl_weight,
                cfg.temperature,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
        else:
            self.quantize = VectorQuantizer(
                cfg.n_embed, cfg.embed_dim, cfg.beta, cfg.legacy_loss, self.dtype, self.param_dtype
            )

    def _quantize(self, latents: jax.Array, train: bool, temperature: Optional[float]) -> QuantizerOutput:
        if self.config.quantizer == "gumbel":
            return self.quantize(latents, train=train, temperature=temperature)
        return self.quantize(latents, train=train)

    def encode(
        self, pixel_values: jax.Array, train: bool = False, temperature: Optional[float] = None
    ) -> VQGANEncoderOutput:
        """Pixels (B, H, W, C) in [-1, 1] → quantized latents and flattened indices."""
        factor = self.config.downsampling_factor
        if pixel_values.ndim != 4 or pixel_values.shape[1] % factor or pixel_values.shape[2] % factor:
            raise ValueError(
                f"pixel_values must be (B, H, W, C) with H and W divisible by {factor}; got {tuple(pixel_values.shape)}"
            )
        latents = self.quant_conv(self.encoder(pixel_values, deterministic=not train))
        out = self._quantize(latents, train, temperature)
        indices = out.indices.reshape(out.indices.shape[0], -1)
        return VQGANEncoderOutput(out.quantized, indices, latents, out.loss, out.logits)

    def decode(self, quant_states: jax.Array, train: bool = False) -> jax.Array:
        """Quantized latents (B, h, w, embed_dim) → pixels (B, h*f, w*f, out_ch)."""
        return self.decoder(self.post_quant_conv(quant_states.astype(self.dtype)), deterministic=not train)

    def decode_code(self, indices: jax.Array, latent_shape: Optional[Sequence[int]] = None) -> jax.Array:
        """Code indices ((B, N) or (B, h, w)) → pixels; see [`indices_to_grid`] for the shapes."""
        return self.decode(self.quantize.get_codebook_entry(indices_to_grid(indices, latent_shape)))

    def __call__(
        self, pixel_values: jax.Array, train: bool = False, temperature: Optional[float] = None
    ) -> VQGANOutput:
        encoded = self.encode(pixel_values, train=train, temperature=temperature)
        reconstruction = self.decode(encoded.quant_states, train=train)
        return VQGANOutput(
            reconstruction, encoded.indices, encoded.quant_states, encoded.latents, encoded.loss, encoded.logits
        )


def torch_style_init(shapes: Any, rng: jax.Array, config: VQGANConfig) -> dict:
    """Parameters for the tree of ``shapes``, distributed as PyTorch initialises taming's modules:
    conv weights and biases U(±1/sqrt(fan_in)), GroupNorm scale 1 and bias 0, the VQ codebook
    U(±1/n_embed), the Gumbel codebook N(0, 1).

    Drawn one parameter at a time by a numpy generator seeded from ``rng``: no RNG program to
    compile per parameter, and no whole-model temporary buffer (f16-1024: 5 s and 2.7 GB peak RSS
    with one device-wide draw; this way about 1 s and under 1 GB).
    """
    flat = flatten_dict(flax.core.unfreeze(shapes))
    generator = np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel().tolist())
    params = {}
    for path, struct in flat.items():
        module, leaf = path[:-1], path[-1]
        if leaf == "embedding" and module[-1] == "embed":
            value = generator.standard_normal(struct.shape, np.float32)  # torch.nn.Embedding's default
        elif leaf == "embedding":
            value = generator.uniform(-1.0, 1.0, struct.shape) / config.n_embed
        elif leaf == "scale":
            value = np.ones(struct.shape, np.float32)
        elif leaf == "bias" and (*module, "kernel") not in flat:
            value = np.zeros(struct.shape, np.float32)  # GroupNorm bias
        else:
            bound = 1.0 / math.sqrt(math.prod(flat[(*module, "kernel")].shape[:-1]))
            value = generator.uniform(-bound, bound, struct.shape)
        params[path] = jnp.asarray(value, dtype=struct.dtype)
    return unflatten_dict(params)


class FlaxVQGANPreTrainedModel(FlaxPreTrainedModel):
    """Weight loading/saving and the ``params=...`` calling convention of transformers' Flax models.

    The public methods are compiled with ``jax.jit`` on first use (per input shape and option),
    so eager calls are fast; they also work inside a caller's own ``jit``/``pmap``.
    """

    config_class = VQGANConfig
    base_model_prefix = "vqgan"
    main_input_name = "pixel_values"
    module_class: nn.Module = None

    def __init__(
        self,
        config: VQGANConfig,
        input_shape: Optional[Tuple[int, int, int, int]] = None,
        seed: int = 0,
        dtype: jnp.dtype = jnp.float32,
        _do_init: bool = True,
        **kwargs: Any,
    ) -> None:
        if input_shape is None:
            # The parameter shapes do not depend on the image size: initialise on the smallest
            # image that survives all downsamplings, which is much faster than `resolution`.
            side = config.downsampling_factor
            input_shape = (1, side, side, config.in_channels)
        self._compiled: dict = {}
        module = self.module_class(config=config, dtype=dtype, **kwargs)
        super().__init__(config, module, input_shape=input_shape, seed=seed, dtype=dtype, _do_init=_do_init)

    def init_weights(self, rng: jax.Array, input_shape: Tuple[int, ...], params: Optional[dict] = None) -> dict:
        """Random parameters drawn like a freshly built PyTorch taming model; entries of ``params``
        (e.g. loaded ones) take precedence.

        Compiling ``module.init`` costs seconds even for tiny models (one RNG program per
        parameter); here the shapes come from tracing and all values from a single uniform draw.
        """
        shapes = jax.eval_shape(
            self.module.init, {"params": rng, "dropout": rng, "gumbel": rng}, jnp.zeros(input_shape, jnp.float32)
        )["params"]
        if isinstance(rng, jax.core.Tracer):
            # Under transformers' jax.eval_shape (``_do_init=False``) only the shapes matter.
            random_params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        else:
            random_params = torch_style_init(shapes, rng, self.config)
        if params is None:
            return random_params
        merged = flatten_dict(flax.core.unfreeze(random_params))
        merged.update(flatten_dict(flax.core.unfreeze(params)))
        return unflatten_dict(merged)

    @classmethod
    def load_flax_weights(cls, resolved_archive_file: str) -> dict:
        """Read a msgpack/safetensors file; squeeze the (1, 1, 1, C) GroupNorm parameters that
        older vqgan-jax checkpoints store, with one warning."""
        state = super().load_flax_weights(resolved_archive_file)
        flat = flatten_dict(state)
        squeezed = 0
        for key, value in flat.items():
            if key[-1] in ("scale", "bias") and value.ndim == 4 and value.shape[:3] == (1, 1, 1):
                flat[key] = value.reshape(value.shape[-1])
                squeezed += 1
        if squeezed:
            warnings.warn(
                f"{resolved_archive_file}: reshaped {squeezed} GroupNorm scale/bias arrays from (1, 1, 1, C) "
                "to (C,) (older Flax layout)",
                stacklevel=4,  # the caller of from_pretrained
            )
        return unflatten_dict(flat)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any):
        """transformers' ``from_pretrained`` with two differences: a checkpoint lacking parameters
        is an error (a VQGAN with random layers silently produces garbage), and no random
        initialisation is computed only to be overwritten."""
        do_init = kwargs.pop("_do_init", True)
        model, params = super().from_pretrained(pretrained_model_name_or_path, *model_args, _do_init=False, **kwargs)
        missing = model.required_params - set(flatten_dict(flax.core.unfreeze(params)))
        if missing:
            names = sorted("/".join(k) for k in missing)
            raise ValueError(
                f"{pretrained_model_name_or_path}: checkpoint lacks {len(names)} of the model's "
                f"{len(model.required_params)} parameters, e.g. {names[:5]}"
            )
        if not do_init:
            return model, params
        model._is_initialized = True
        model.params = jax.tree.map(jnp.asarray, params)  # onto the default device
        return model

    @staticmethod
    def default_micro_batch_size(array: Any) -> Optional[int]:
        """What ``micro_batch_size=None`` picks: 1 for a concrete array on one CPU device, else no
        micro-batching (inside a caller's ``jit``/``pmap`` the sharding is not known here).

        Why: on CPU a batch of 8 256x256 images ran 18% slower per image than single images
        (8x the activations no longer fit the caches); looping over images inside the compiled
        program removes that. GPUs want the whole batch at once.
        """
        if isinstance(array, jax.core.Tracer):
            return None
        devices = array.devices() if isinstance(array, jax.Array) else {jax.devices()[0]}
        return 1 if len(devices) == 1 and next(iter(devices)).platform == "cpu" else None

    def _run(
        self,
        method: str,
        array: jax.Array,
        params: Optional[dict],
        rngs: Optional[dict] = None,
        traced: Optional[dict] = None,
        micro_batch_size: Optional[int] = None,
        **static: Any,
    ) -> Any:
        """Apply ``module.<method>`` under a jit cached per method and static options; ``traced``
        keyword arguments are arrays (changing them does not recompile). Inference runs in chunks
        of ``micro_batch_size`` images (see [`default_micro_batch_size`]), one compiled loop."""
        if micro_batch_size is None:
            micro_batch_size = self.default_micro_batch_size(array)
        if static.get("train") or (micro_batch_size or 0) >= np.shape(array)[0]:
            micro_batch_size = None  # training draws per-example noise from one rng: never chunked
        elif micro_batch_size is not None:
            micro_batch_size = math.gcd(int(micro_batch_size), np.shape(array)[0])  # equal chunks
        key = (method, micro_batch_size, tuple(sorted(static.items())))
        if key not in self._compiled:

            def apply(variables, rngs, array, traced):
                def call(chunk):
                    return self.module.apply(variables, chunk, rngs=rngs, method=method, **traced, **static)

                if micro_batch_size is None:
                    return call(array)
                chunks = array.reshape(-1, micro_batch_size, *array.shape[1:])
                out = jax.lax.map(call, chunks)
                # Per-chunk scalars (the losses) are means over equal chunks: their mean is the batch's.
                return jax.tree.map(lambda x: x.mean(0) if x.ndim == 1 else x.reshape(-1, *x.shape[2:]), out)

            self._compiled[key] = jax.jit(apply)
        params = self.params if params is None else params
        if isinstance(array, jax.Array) and not isinstance(array, jax.core.Tracer) and len(array.devices()) > 1:
            # e.g. the output of a pmap/sharded call: gather it instead of failing on device mismatch.
            array = np.asarray(array)
        return self._compiled[key]({"params": params}, rngs or {}, jnp.asarray(array), traced or {})

    @staticmethod
    def _rngs(dropout_rng: Optional[jax.Array], gumbel_rng: Optional[jax.Array] = None) -> dict:
        rngs = {"dropout": dropout_rng, "gumbel": gumbel_rng}
        return {name: rng for name, rng in rngs.items() if rng is not None}

    def _temperature(self, temperature: Optional[float]) -> jax.Array:
        # Passed as an array, not a static option, so annealing it does not recompile.
        return jnp.asarray(self.config.temperature if temperature is None else temperature, jnp.float32)

    def encode(
        self,
        pixel_values: jax.Array,
        params: Optional[dict] = None,
        train: bool = False,
        dropout_rng: Optional[jax.Array] = None,
        gumbel_rng: Optional[jax.Array] = None,
        temperature: Optional[float] = None,
        micro_batch_size: Optional[int] = None,
    ) -> VQGANEncoderOutput:
        """Pixels (B, H, W, C) in [-1, 1] → ``(quant_states, indices)`` (a [`VQGANEncoderOutput`]).

        ``micro_batch_size``: images per step of the compiled loop (default: see
        [`default_micro_batch_size`]); results are the same either way."""
        rngs = self._rngs(dropout_rng, gumbel_rng)
        traced = {"temperature": self._temperature(temperature)}
        return self._run("encode", pixel_values, params, rngs, traced, micro_batch_size, train=train)

    def decode(
        self,
        quant_states: jax.Array,
        params: Optional[dict] = None,
        train: bool = False,
        dropout_rng: Optional[jax.Array] = None,
        micro_batch_size: Optional[int] = None,
    ) -> jax.Array:
        """Quantized latents (B, h, w, embed_dim) → pixels (B, H, W, out_ch)."""
        return self._run("decode", quant_states, params, self._rngs(dropout_rng), None, micro_batch_size, train=train)

    def decode_code(
        self,
        indices: jax.Array,
        params: Optional[dict] = None,
        latent_shape: Optional[Sequence[int]] = None,
        micro_batch_size: Optional[int] = None,
    ) -> jax.Array:
        """Indices (B, N) with square N, (B, N) with ``latent_shape=(h, w)``, or (B, h, w) → pixels."""
        latent_shape = None if latent_shape is None else tuple(int(n) for n in latent_shape)
        return self._run("decode_code", indices, params, None, None, micro_batch_size, latent_shape=latent_shape)

    def __call__(
        self,
        pixel_values: jax.Array,
        params: Optional[dict] = None,
        train: bool = False,
        dropout_rng: Optional[jax.Array] = None,
        gumbel_rng: Optional[jax.Array] = None,
        temperature: Optional[float] = None,
        micro_batch_size: Optional[int] = None,
    ) -> VQGANOutput:
        """Encode and decode: ``reconstruction, indices = model(pixel_values)``."""
        rngs = self._rngs(dropout_rng, gumbel_rng)
        traced = {"temperature": self._temperature(temperature)}
        return self._run("__call__", pixel_values, params, rngs, traced, micro_batch_size, train=train)


class FlaxVQGANModel(FlaxVQGANPreTrainedModel):
    """A VQGAN image tokenizer with transformers' Flax API (``from_pretrained``, ``save_pretrained``)."""

    module_class = FlaxVQGANModule


# vqgan-jax's name, so DALL·E-mini code runs with one import changed.
VQModel = FlaxVQGANModel
