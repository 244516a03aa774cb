"""The whole VQGAN as one Flax module, taming's VQModel (encoder → quant_conv → quantizer, and
post_quant_conv → decoder; NHWC inside), and taming's PyTorch initialisation of its parameters.

Parameter names follow vqgan-jax (and so taming's state-dict names), so DALL·E-mini's Flax
checkpoints load unchanged and taming checkpoints convert by renaming and transposing only.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from .blocks import Decoder, Encoder, _conv, conv_compute_dtype
from .configuration import VQGANConfig
from .outputs import VQGANEncoderOutput, VQGANOutput, indices_to_grid
from .quantizers import GumbelQuantizer, IndexPropagationQuantizer, QuantizerOutput, VectorQuantizer
from .scalar_quantizers import FiniteScalarQuantizer, LookupFreeQuantizer

__all__ = ["FlaxVQGANModule", "torch_style_init"]


class FlaxVQGANModule(nn.Module):
    """The whole VQGAN: encoder → quant_conv → quantizer, and post_quant_conv → decoder."""

    config: VQGANConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        self.encoder = Encoder(cfg, dtype=self.dtype, param_dtype=self.param_dtype)
        self.decoder = Decoder(cfg, dtype=self.dtype, param_dtype=self.param_dtype)
        quant_dtype = conv_compute_dtype(("quant_conv",), self.dtype)  # float32: blocks.FLOAT32_CONVS
        self.quant_conv = _conv(cfg.embed_dim, 1, dtype=quant_dtype, param_dtype=self.param_dtype)
        self.post_quant_conv = _conv(cfg.z_channels, 1, dtype=self.dtype, param_dtype=self.param_dtype)
        self.quantize: Union[
            GumbelQuantizer, IndexPropagationQuantizer, VectorQuantizer, FiniteScalarQuantizer, LookupFreeQuantizer
        ]
        if cfg.quantizer == "fsq":
            self.quantize = FiniteScalarQuantizer(tuple(cfg.fsq_levels), dtype=self.dtype)
        elif cfg.quantizer == "lfq":
            self.quantize = LookupFreeQuantizer(
                cfg.embed_dim,
                entropy_weight=cfg.entropy_loss_weight,
                commitment_weight=cfg.beta,
                diversity_gamma=cfg.diversity_gamma,
                temperature=cfg.entropy_temperature,
                scale=cfg.lfq_scale,
                dtype=self.dtype,
            )
        elif cfg.quantizer == "ibq":
            self.quantize = IndexPropagationQuantizer(
                cfg.n_embed, cfg.embed_dim, cfg.beta, dtype=self.dtype, param_dtype=self.param_dtype
            )
        elif cfg.quantizer == "gumbel":
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
                cfg.n_embed,
                cfg.embed_dim,
                cfg.beta,
                cfg.legacy_loss,
                l2_norm=cfg.quantizer == "vq_l2",
                entropy_weight=cfg.entropy_loss_weight,
                entropy_temperature=cfg.entropy_temperature,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )

    def _quantize(self, latents: jax.Array, train: bool, temperature: Optional[float]) -> QuantizerOutput:
        if isinstance(self.quantize, GumbelQuantizer):
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
    U(±1/n_embed), the Gumbel and IBQ codebooks N(0, 1).

    Drawn one parameter at a time by a numpy generator seeded from ``rng``: no RNG program to
    compile per parameter, and no whole-model temporary buffer (one device-wide draw for a large
    model took more than twice the time and about three times the peak memory).
    """
    flat = flatten_dict(flax.core.unfreeze(shapes))
    generator = np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel().tolist())
    params = {}
    for path, struct in flat.items():
        module, leaf = path[:-1], path[-1]
        if leaf == "embedding" and (module[-1] == "embed" or config.quantizer == "ibq"):
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
