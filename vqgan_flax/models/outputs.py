"""Typed outputs of the VQGAN model and the index-shape helper shared by its decode paths."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import flax
import jax


@flax.struct.dataclass
class VQGANEncoderOutput:
    """Output of ``encode``; unpacks as ``quant_states, indices`` like vqgan-jax's tuple.

    Attributes:
        quant_states: (B, h, w, embed_dim) quantized latents (straight-through when training).
        indices: (B, h*w) int32 code indices, row-major over (h, w) as vqgan-jax returns them.
        latents: (B, h, w, embed_dim) ``quant_conv(encoder(x))``, the latent before quantization.
        loss: scalar quantizer loss (VQ codebook + commitment loss, or the Gumbel KL term); None
            where the quantizer computed none.
        logits: Gumbel only: (B, h, w, n_embed) float32 code logits.

    The token grid travels with the tokens: ``latent_shape`` is ``(h, w)`` and ``grid_indices``
    the indices as (B, h, w), which ``decode_code`` takes without further arguments.
    """

    quant_states: jax.Array
    indices: jax.Array
    latents: jax.Array
    loss: Optional[jax.Array]
    logits: Optional[jax.Array] = None

    @property
    def latent_shape(self) -> Tuple[int, int]:
        return (int(self.quant_states.shape[1]), int(self.quant_states.shape[2]))

    @property
    def grid_indices(self) -> jax.Array:
        return self.indices.reshape(self.indices.shape[0], *self.latent_shape)

    def __iter__(self):
        return iter((self.quant_states, self.indices))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, item: int) -> jax.Array:
        return (self.quant_states, self.indices)[item]


@flax.struct.dataclass
class VQGANOutput:
    """Output of the full model; unpacks as ``reconstruction, indices`` like vqgan-jax's tuple.

    Attributes:
        reconstruction: (B, H, W, out_ch) decoded pixels (not clipped, as taming).
        indices: (B, h*w) int32 code indices.
        quant_states, latents, loss, logits: as in [`VQGANEncoderOutput`] (so are ``latent_shape``
            and ``grid_indices``).
    """

    reconstruction: jax.Array
    indices: jax.Array
    quant_states: jax.Array
    latents: jax.Array
    loss: Optional[jax.Array]
    logits: Optional[jax.Array] = None

    latent_shape = VQGANEncoderOutput.latent_shape
    grid_indices = VQGANEncoderOutput.grid_indices

    def __iter__(self):
        return iter((self.reconstruction, self.indices))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, item: int) -> jax.Array:
        return (self.reconstruction, self.indices)[item]


def indices_to_grid(indices: jax.Array, latent_shape: Optional[Sequence[int]] = None) -> jax.Array:
    """Bring code indices to a (B, h, w) grid.

    Accepts (B, h, w); (B, N) with ``latent_shape=(h, w)``; or (B, N) with square N (vqgan-jax's
    convention; ``FlaxVQGANModel.decode_code`` warns where that square is a guess).
    """
    if indices.ndim == 3:
        if latent_shape is not None and tuple(indices.shape[1:]) != tuple(latent_shape):
            raise ValueError(f"indices of shape {tuple(indices.shape)} do not match latent_shape={tuple(latent_shape)}")
        return indices
    if indices.ndim != 2:
        raise ValueError(f"indices must be (B, N) or (B, h, w); got shape {tuple(indices.shape)}")
    batch, tokens = indices.shape
    if latent_shape is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(
                f"{tokens} tokens per image is not a square number; pass latent_shape=(h, w) to decode_code"
            )
        latent_shape = (side, side)
    height, width = latent_shape
    if height * width != tokens:
        raise ValueError(f"latent_shape={tuple(latent_shape)} holds {height * width} tokens, indices have {tokens}")
    return indices.reshape(batch, height, width)
