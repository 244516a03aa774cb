"""The quantizers: nearest-neighbour (taming's VectorQuantizer2; with ``l2_norm``, LlamaGen's and
ViT-VQGAN's cosine variant), IBQ's index propagation (largest dot product, gradients to every
code) and taming's Gumbel-softmax; LlamaGen's entropy loss for the nearest-neighbour codes. FSQ and
LFQ, which learn no codebook, are in scalar_quantizers.py.

The math lives in small pure functions; the Linen modules only own the parameters.
"""

from __future__ import annotations

from typing import Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class QuantizerOutput:
    """What a quantizer returns.

    Attributes:
        quantized: (B, h, w, embed_dim) codebook rows; in training, straight-through values whose
            gradient flows to the latents (VQ) or to the logits (Gumbel).
        indices: (B, h, w) int32 code indices.
        loss: scalar; VQ: codebook + commitment loss; Gumbel: the weighted KL to the uniform prior.
        logits: Gumbel only: (B, h, w, n_embed) float32 logits of the projection.
    """

    quantized: jax.Array
    indices: jax.Array
    loss: jax.Array
    logits: Optional[jax.Array] = None


def squared_distances(latents: jax.Array, codebook: jax.Array) -> jax.Array:
    """(positions, n_embed) squared L2 distances of every latent vector to every code, in float32,
    as ‖z‖² − 2 z·e + ‖e‖² (one matmul), as taming and LlamaGen compute them."""
    flat = latents.reshape(-1, latents.shape[-1]).astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    return (
        jnp.sum(flat**2, axis=1, keepdims=True)
        - 2.0 * jnp.matmul(flat, codebook.T, precision=jax.lax.Precision.HIGHEST)
        + jnp.sum(codebook**2, axis=1)[None, :]
    )


def nearest_code_indices(latents: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index of the nearest codebook row for every latent vector, computed in float32 from
    [`squared_distances`], so ties and near-ties resolve as taming's do."""
    return jnp.argmin(squared_distances(latents, codebook), axis=1).astype(jnp.int32).reshape(latents.shape[:-1])


def vq_entropy_loss(distances: jax.Array, temperature: float = 0.01) -> jax.Array:
    """LlamaGen's and MaskGIT's entropy loss on (positions, n_embed) distances: the soft
    assignment ``softmax(-d / temperature)``; its mean per-position entropy minus the entropy of
    its average (``log(p + 1e-5)`` there, as LlamaGen has it) — confident positions, every code used."""
    logits = -distances.astype(jnp.float32) / temperature
    probs = jax.nn.softmax(logits, axis=-1)
    per_position = -jnp.mean(jnp.sum(probs * jax.nn.log_softmax(logits, axis=-1), axis=-1))
    average = jnp.mean(probs, axis=0)
    return per_position + jnp.sum(average * jnp.log(average + 1e-5))


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x`` scaled to unit L2 norm along its last axis, in float32; a zero vector stays zero (its
    norm is clamped to ``eps``, as ``torch.nn.functional.normalize`` does)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def vq_loss(latents: jax.Array, quantized: jax.Array, beta: float, legacy: bool = True) -> jax.Array:
    """taming's VectorQuantizer2 loss.

    ``legacy=True`` keeps taming's default (its documented bug): the commitment term
    ``|sg(e) - z|²`` has weight 1 and the codebook term ``|e - sg(z)|²`` weight β. ``legacy=False``
    is the VQ-VAE paper's placement: β on the commitment term.
    """
    latents = latents.astype(jnp.float32)
    quantized = quantized.astype(jnp.float32)
    commitment = jnp.mean((jax.lax.stop_gradient(quantized) - latents) ** 2)
    codebook = jnp.mean((quantized - jax.lax.stop_gradient(latents)) ** 2)
    if legacy:
        return commitment + beta * codebook
    return beta * commitment + codebook


def straight_through(latents: jax.Array, quantized: jax.Array) -> jax.Array:
    """Forward value ``quantized``, gradient of the identity into ``latents``."""
    return latents + jax.lax.stop_gradient(quantized.astype(latents.dtype) - latents)


def gumbel_kl_loss(logits: jax.Array, kl_weight: float) -> jax.Array:
    """taming's KL of the code posterior to the uniform prior, averaged over positions."""
    n_embed = logits.shape[-1]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return kl_weight * jnp.mean(jnp.sum(probs * jnp.log(probs * n_embed + 1e-10), axis=-1))


def gumbel_softmax_one_hot(
    logits: jax.Array, rng: jax.Array, temperature: float, hard: bool = True
) -> Tuple[jax.Array, jax.Array]:
    """Sample a (hard, straight-through) Gumbel-softmax code per position: ``(one_hot, indices)``."""
    noise = jax.random.gumbel(rng, logits.shape, dtype=jnp.float32)
    soft = jax.nn.softmax((logits.astype(jnp.float32) + noise) / temperature, axis=-1)
    indices = jnp.argmax(soft, axis=-1).astype(jnp.int32)
    if not hard:
        return soft, indices
    one_hot = jax.nn.one_hot(indices, logits.shape[-1], dtype=soft.dtype)
    return one_hot - jax.lax.stop_gradient(soft) + soft, indices


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantizer (taming's VectorQuantizer2, no remap); codebook at ``embedding/embedding``.

    With ``l2_norm`` the latents and the codebook rows are scaled to unit length first (LlamaGen,
    ViT-VQGAN): the nearest code is the most similar in cosine, the quantized latent is the
    normalised row, and the loss compares normalised vectors.
    """

    n_embed: int
    embed_dim: int
    beta: float = 0.25
    legacy: bool = True
    l2_norm: bool = False
    entropy_weight: float = 0.0
    entropy_temperature: float = 0.01
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        # taming initialises the codebook uniformly in ±1/n_embed.
        init = lambda key, shape, dtype: jax.random.uniform(  # noqa: E731
            key, shape, dtype, -1.0 / self.n_embed, 1.0 / self.n_embed
        )
        self.embedding = nn.Embed(
            self.n_embed, self.embed_dim, embedding_init=init, dtype=self.dtype, param_dtype=self.param_dtype
        )

    def __call__(self, latents: jax.Array, train: bool = False) -> QuantizerOutput:
        codebook = self.embedding.embedding
        if self.l2_norm:
            latents, codebook = l2_normalize(latents), l2_normalize(codebook)
        indices = nearest_code_indices(latents, codebook)
        quantized = self.get_codebook_entry(indices)
        loss = vq_loss(latents, quantized, self.beta, self.legacy)
        if train and self.entropy_weight:
            loss += self.entropy_weight * vq_entropy_loss(
                squared_distances(latents, codebook), self.entropy_temperature
            )
        if train:
            quantized = straight_through(latents, quantized)
        return QuantizerOutput(quantized.astype(self.dtype), indices, loss)

    def get_codebook_entry(self, indices: jax.Array) -> jax.Array:
        """Codebook rows for an index grid of any shape: (...) → (..., embed_dim); normalised
        rows with ``l2_norm``."""
        if self.l2_norm:
            return jnp.take(l2_normalize(self.embedding.embedding), indices, axis=0).astype(self.dtype)
        return self.embedding(indices)


def ibq_loss(latents: jax.Array, propagated: jax.Array, rows: jax.Array, beta: float) -> jax.Array:
    """IBQ's quantization loss: ``|q - z|² + |sg(e) - z|² + β |e - sg(z)|²``, with ``q`` the
    index-propagated value (forward: the code ``e``; gradient through the soft assignment) and
    ``e`` the chosen code rows."""
    latents, propagated, rows = (x.astype(jnp.float32) for x in (latents, propagated, rows))
    return (
        jnp.mean((propagated - latents) ** 2)
        + jnp.mean((jax.lax.stop_gradient(rows) - latents) ** 2)
        + beta * jnp.mean((rows - jax.lax.stop_gradient(latents)) ** 2)
    )


class IndexPropagationQuantizer(nn.Module):
    """IBQ's ``IndexPropagationQuantize`` (SEED-Voken): the code with the largest dot product
    ⟨z, e⟩ (not the nearest in L2); in training the quantized value is the hard one-hot code
    through the straight-through softmax of those logits, so every code gets a gradient. The
    codebook sits at ``embedding/embedding`` as in [`VectorQuantizer`]."""

    n_embed: int
    embed_dim: int
    beta: float = 0.25
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        # torch.nn.Embedding's default, as IBQ leaves it.
        self.embedding = nn.Embed(
            self.n_embed,
            self.embed_dim,
            embedding_init=nn.initializers.normal(1.0),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def __call__(self, latents: jax.Array, train: bool = False) -> QuantizerOutput:
        codebook = self.embedding.embedding.astype(jnp.float32)
        logits = jnp.einsum("bhwd,nd->bhwn", latents.astype(jnp.float32), codebook, precision=jax.lax.Precision.HIGHEST)
        indices = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        rows = jnp.take(codebook, indices, axis=0)
        if train:
            soft = jax.nn.softmax(logits, axis=-1)
            one_hot = jax.nn.one_hot(indices, self.n_embed, dtype=soft.dtype) - jax.lax.stop_gradient(soft) + soft
            propagated = jnp.einsum("bhwn,nd->bhwd", one_hot, codebook, precision=jax.lax.Precision.HIGHEST)
        else:
            propagated = rows
        loss = ibq_loss(latents, propagated, rows, self.beta)
        # The logits are not returned: (B, h, w, n_embed) is 256 MiB per image at IBQ's 262144 codes.
        return QuantizerOutput(propagated.astype(self.dtype), indices, loss)

    def get_codebook_entry(self, indices: jax.Array) -> jax.Array:
        """Codebook rows for an index grid of any shape: (...) → (..., embed_dim)."""
        return self.embedding(indices)


class GumbelQuantizer(nn.Module):
    """taming's GumbelQuantize: a 1x1 conv ``proj`` to n_embed logits and a codebook ``embed``.

    Evaluation is deterministic (argmax of the logits); taming samples Gumbel noise even in eval,
    which makes its tokens random. Training samples a hard straight-through Gumbel-softmax code
    with the ``gumbel`` RNG stream.
    """

    n_embed: int
    embed_dim: int
    kl_weight: float = 5e-4
    temperature: float = 1.0
    straight_through: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        self.proj = nn.Conv(self.n_embed, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype)
        self.embed = nn.Embed(
            self.n_embed,
            self.embed_dim,
            embedding_init=nn.initializers.normal(1.0),  # torch.nn.Embedding's default
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def __call__(self, latents: jax.Array, train: bool = False, temperature: Optional[float] = None) -> QuantizerOutput:
        logits = self.proj(latents).astype(jnp.float32)
        loss = gumbel_kl_loss(logits, self.kl_weight)
        if not train:
            indices = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            quantized = self.get_codebook_entry(indices)
        else:
            temperature = self.temperature if temperature is None else temperature
            one_hot, indices = gumbel_softmax_one_hot(
                logits, self.make_rng("gumbel"), temperature, hard=self.straight_through
            )
            quantized = jnp.einsum("bhwn,nd->bhwd", one_hot, self.embed.embedding.astype(jnp.float32))
        return QuantizerOutput(quantized.astype(self.dtype), indices, loss, logits)

    def get_codebook_entry(self, indices: jax.Array) -> jax.Array:
        """Codebook rows for an index grid of any shape: (...) → (..., embed_dim)."""
        return self.embed(indices)
