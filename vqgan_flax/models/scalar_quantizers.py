"""The quantizers without a learned codebook: FSQ (Mentzer et al., "Finite Scalar Quantization")
rounds each latent channel to a few fixed levels, LFQ (MAGVIT-v2's lookup-free quantization)
keeps each channel's sign. Their codes are implicit — every combination of levels or signs is
one — so the index is the mixed-radix (FSQ) or binary (LFQ) number the channels spell, an
integer like any codebook index, and decode_code rebuilds the code from it.

Both follow vector-quantize-pytorch's ``FSQ`` and ``LFQ`` (channel order, rounding, index
digits, the entropy loss), so its models' tokens mean the same here; the latent projection it
may add is our ``quant_conv`` / ``post_quant_conv``.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .quantizers import QuantizerOutput, straight_through

FSQ_EPS = 1e-3  # the bound's margin, so that tanh's image spans the outer levels fully


def fsq_quantize(latents: jax.Array, levels: Sequence[int]) -> jax.Array:
    """FSQ's code of every latent vector (…, len(levels)), in [-1, 1]: channel ``i`` squashed by a
    shifted tanh into ``levels[i]`` bins, rounded (half to even), scaled by ``levels[i] // 2``;
    gradients pass straight through the rounding."""
    z = latents.astype(jnp.float32)
    level = jnp.asarray(levels, jnp.float32)
    half_l = (level - 1) * (1 + FSQ_EPS) / 2
    offset = jnp.where(jnp.asarray(levels) % 2 == 0, 0.5, 0.0)
    bounded = jnp.tanh(z + jnp.arctanh(offset / half_l)) * half_l - offset
    rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
    return rounded / jnp.asarray([lv // 2 for lv in levels], jnp.float32)


def _fsq_basis(levels: Sequence[int]) -> np.ndarray:
    return np.cumprod([1, *levels[:-1]]).astype(np.int64)


def fsq_codes_to_indices(codes: jax.Array, levels: Sequence[int]) -> jax.Array:
    """The index of each FSQ code: its level digits (channel 0 the least significant) as one
    mixed-radix number, int32."""
    half = jnp.asarray([lv // 2 for lv in levels], jnp.float32)
    digits = jnp.round(codes.astype(jnp.float32) * half + half).astype(jnp.int32)
    return jnp.sum(digits * jnp.asarray(_fsq_basis(levels), jnp.int32), axis=-1).astype(jnp.int32)


def fsq_indices_to_codes(indices: jax.Array, levels: Sequence[int]) -> jax.Array:
    """The FSQ code (…, len(levels)) of each index; the inverse of [`fsq_codes_to_indices`]."""
    basis = jnp.asarray(_fsq_basis(levels), jnp.int32)
    digits = (indices[..., None].astype(jnp.int32) // basis) % jnp.asarray(levels, jnp.int32)
    half = jnp.asarray([lv // 2 for lv in levels], jnp.float32)
    return (digits.astype(jnp.float32) - half) / half


class FiniteScalarQuantizer(nn.Module):
    """FSQ: no parameters, no loss; ``embed_dim == len(levels)`` codes of ``prod(levels)``."""

    levels: Tuple[int, ...]
    dtype: jnp.dtype = jnp.float32

    def __call__(self, latents: jax.Array, train: bool = False) -> QuantizerOutput:
        codes = fsq_quantize(latents, self.levels)
        indices = fsq_codes_to_indices(codes, self.levels)
        return QuantizerOutput(codes.astype(self.dtype), indices, jnp.zeros((), jnp.float32))

    def get_codebook_entry(self, indices: jax.Array) -> jax.Array:
        """Codes for an index grid of any shape: (...) → (..., len(levels))."""
        return fsq_indices_to_codes(indices, self.levels).astype(self.dtype)


def lfq_bit_weights(bits: int) -> np.ndarray:
    """The value of each channel's bit in an LFQ index: channel 0 the most significant."""
    return (2 ** np.arange(bits - 1, -1, -1)).astype(np.int64)


def lfq_indices_to_codes(indices: jax.Array, bits: int, scale: float = 1.0) -> jax.Array:
    """The LFQ code (…, bits) of each index: ``+scale`` where its bit is set, ``-scale`` elsewhere."""
    weights = jnp.asarray(lfq_bit_weights(bits), jnp.int32)
    set_bits = (indices[..., None].astype(jnp.int32) & weights) != 0
    return jnp.where(set_bits, scale, -scale).astype(jnp.float32)


def entropy(probs: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Entropy along the last axis, ``-Σ p log max(p, eps)`` (vector-quantize-pytorch's clamp)."""
    return -jnp.sum(probs * jnp.log(jnp.maximum(probs, eps)), axis=-1)


def lfq_entropy_loss(latents: jax.Array, codes: jax.Array, temperature: float, diversity_gamma: float) -> jax.Array:
    """LFQ's entropy term: the mean entropy of each position's soft assignment to every code
    (softmax of ``2 z·c / temperature``) minus ``diversity_gamma`` times the entropy of the
    assignment averaged over all positions — confident positions, all codes used. Holds a
    (positions × 2**bits) matrix: the cost of a large codebook."""
    flat = latents.reshape(-1, latents.shape[-1]).astype(jnp.float32)
    logits = 2.0 * jnp.matmul(flat, codes.T, precision=jax.lax.Precision.HIGHEST) / temperature
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.mean(entropy(probs)) - diversity_gamma * entropy(jnp.mean(probs, axis=0))


class LookupFreeQuantizer(nn.Module):
    """LFQ: each channel's sign, ``±scale``; ``embed_dim`` bits give ``2**embed_dim`` codes. In
    training the code passes straight through to the latents and the loss is
    ``entropy_weight × lfq_entropy_loss + commitment_weight × |z - sg(q)|²``; evaluation returns
    a zero loss, as vector-quantize-pytorch's does, and never builds the per-code matrix."""

    bits: int
    entropy_weight: float = 0.1
    commitment_weight: float = 0.0
    diversity_gamma: float = 1.0
    temperature: float = 0.01
    scale: float = 1.0
    dtype: jnp.dtype = jnp.float32

    def __call__(self, latents: jax.Array, train: bool = False) -> QuantizerOutput:
        z = latents.astype(jnp.float32)
        quantized = jnp.where(z > 0, self.scale, -self.scale).astype(jnp.float32)
        indices = jnp.sum((z > 0) * jnp.asarray(lfq_bit_weights(self.bits), jnp.int32), axis=-1).astype(jnp.int32)
        loss = jnp.zeros((), jnp.float32)
        if train:
            if self.entropy_weight:
                codes = lfq_indices_to_codes(jnp.arange(2**self.bits), self.bits, self.scale)
                loss += self.entropy_weight * lfq_entropy_loss(z, codes, self.temperature, self.diversity_gamma)
            if self.commitment_weight:
                loss += self.commitment_weight * jnp.mean((z - jax.lax.stop_gradient(quantized)) ** 2)
            quantized = straight_through(z, quantized)
        return QuantizerOutput(quantized.astype(self.dtype), indices, loss)

    def get_codebook_entry(self, indices: jax.Array) -> jax.Array:
        """Codes for an index grid of any shape: (...) → (..., bits)."""
        return lfq_indices_to_codes(indices, self.bits, self.scale).astype(self.dtype)


__all__ = (
    "FiniteScalarQuantizer",
    "LookupFreeQuantizer",
    "entropy",
    "fsq_codes_to_indices",
    "fsq_indices_to_codes",
    "fsq_quantize",
    "lfq_bit_weights",
    "lfq_entropy_loss",
    "lfq_indices_to_codes",
)
