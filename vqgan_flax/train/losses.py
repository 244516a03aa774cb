"""taming's VQGAN training losses: pixel + optional perceptual reconstruction, codebook terms from
the quantizer, a PatchGAN discriminator with hinge loss, and the adaptive discriminator weight."""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ..evaluation.metrics import CBCR_FROM_RGB, _gaussian_filter, _ssim_map


class NLayerDiscriminator(nn.Module):
    """taming's PatchGAN discriminator (pix2pix): 4x4 convs, LeakyReLU(0.2), one logit per patch.

    taming normalises with BatchNorm2d. Here the normalisation is GroupNorm (32 groups, or fewer
    when a layer has fewer channels): like BatchNorm it re-centres and re-scales every layer, but it
    has no running statistics, so the discriminator is a pure function of its params, a
    data-parallel step over any number of devices equals the single-device step, and there is
    no batch-stats state to checkpoint or to synchronise.
    """

    ndf: int = 64
    n_layers: int = 3
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        conv_init = nn.initializers.normal(0.02)  # taming's weights_init
        pad = ((1, 1), (1, 1))
        x = nn.Conv(self.ndf, (4, 4), (2, 2), pad, kernel_init=conv_init, dtype=self.dtype)(images)
        x = nn.leaky_relu(x, 0.2)
        channels = self.ndf
        for n in range(1, self.n_layers + 1):
            channels = self.ndf * min(2**n, 8)
            stride = 2 if n < self.n_layers else 1
            # No bias before a normalisation layer, as taming.
            x = nn.Conv(
                channels, (4, 4), (stride, stride), pad, use_bias=False, kernel_init=conv_init, dtype=self.dtype
            )(x)
            x = nn.GroupNorm(
                num_groups=min(32, channels),
                scale_init=lambda key, shape, dtype: 1.0 + 0.02 * jax.random.normal(key, shape, dtype),
                dtype=jnp.float32,
            )(x.astype(jnp.float32)).astype(self.dtype)
            x = nn.leaky_relu(x, 0.2)
        return nn.Conv(1, (4, 4), (1, 1), pad, kernel_init=conv_init, dtype=self.dtype)(x).astype(jnp.float32)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """taming's hinge loss for the discriminator."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def vanilla_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """taming's non-saturating ("vanilla") loss for the discriminator."""
    return 0.5 * (jnp.mean(jax.nn.softplus(-logits_real)) + jnp.mean(jax.nn.softplus(logits_fake)))


def generator_adversarial_loss(logits_fake: jax.Array, kind: str = "hinge") -> jax.Array:
    """The generator's GAN term: ``"hinge"`` is taming's ``-mean(D(x̂))``; ``"non_saturating"``
    is ``mean(softplus(-D(x̂)))`` (LlamaGen's and StyleGAN's), whose gradient does not vanish
    where the discriminator is sure the image is fake."""
    if kind == "non_saturating":
        return jnp.mean(jax.nn.softplus(-logits_fake))
    return -jnp.mean(logits_fake)


def r1_penalty(discriminator_fn: Any, real: jax.Array) -> jax.Array:
    """The R1 regulariser (Mescheder et al. 2018): the batch mean of ``‖∇ₓ D(x)‖²`` on real
    images, ``discriminator_fn`` mapping images to logits."""
    grads = jax.grad(lambda x: jnp.sum(discriminator_fn(x)))(real)
    return jnp.mean(jnp.sum(grads.reshape(grads.shape[0], -1).astype(jnp.float32) ** 2, axis=1))


def adopt_weight(weight: ArrayLike, step: jax.Array, threshold: ArrayLike) -> jax.Array:
    """``weight`` from step ``threshold`` on (taming's ``disc_start``), 0 before."""
    return jnp.where(step >= threshold, weight, 0.0)


def reconstruction_loss(
    inputs: jax.Array,
    reconstructions: jax.Array,
    kind: str = "l1",
    perceptual: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None,
    perceptual_weight: ArrayLike = 1.0,
    chroma_weight: ArrayLike = 0.0,
    ssim_weight: ArrayLike = 0.0,
) -> jax.Array:
    """taming's ``nll_loss``: mean of |x - x̂| (or (x - x̂)²) plus the weighted perceptual distance.

    ``chroma_weight`` > 0 (not in taming) adds that multiple of the same distance on the two chroma
    planes (BT.601 Cb and Cr) of the RGB difference: on RGB alone a colour error costs little beside
    a luminance error of the same size, and a small model spends its code bits on luminance first.
    ``ssim_weight`` > 0 (not in taming) adds that multiple of each image's 1 - SSIM
    ([`structural_similarity`]): a pixel distance is lowest for a blurred guess at fine texture,
    which SSIM's contrast and structure terms score low.

    A weight that is a Python number 0 leaves its term out of the program; an array weight (a traced
    one, as the trainer passes) keeps the term in whatever its value, so one compiled step serves
    every value.
    """
    diff = inputs.astype(jnp.float32) - reconstructions.astype(jnp.float32)
    if kind == "l1":
        distance = jnp.abs
    elif kind == "l2":
        distance = jnp.square
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}; expected 'l1' or 'l2'")
    per_pixel = distance(diff)
    if _included(chroma_weight):
        chroma = distance(diff @ jnp.asarray(CBCR_FROM_RGB.T, jnp.float32))
        # Broadcast over the 3 RGB entries: the mean below adds chroma_weight x the chroma planes' mean.
        per_pixel = per_pixel + chroma_weight * jnp.mean(chroma, axis=-1, keepdims=True)
    if perceptual is not None and _included(perceptual_weight):
        # LPIPS gives one distance per image, broadcast over its pixels as in taming.
        per_pixel = per_pixel + perceptual_weight * perceptual(inputs, reconstructions).reshape(-1, 1, 1, 1)
    if _included(ssim_weight):
        dissimilarity = 1.0 - structural_similarity(inputs, reconstructions)
        per_pixel = per_pixel + ssim_weight * dissimilarity.reshape(-1, 1, 1, 1)
    return jnp.mean(per_pixel)


def _included(weight: Any) -> bool:
    """Whether a weighted term is computed: always for an array, else when the number is not 0."""
    return not isinstance(weight, (int, float)) or weight != 0


def structural_similarity(inputs: jax.Array, reconstructions: jax.Array) -> jax.Array:
    """Per-image mean SSIM (B,) of two (B, H, W, C) batches in [-1, 1], differentiable: the score
    ``metrics.ssim`` gives (Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03, valid region, mean over
    channels), computed in float32."""
    if inputs.shape != reconstructions.shape or inputs.ndim != 4:
        raise ValueError(
            f"expected two (B, H, W, C) batches of one shape; got {inputs.shape} and {reconstructions.shape}"
        )
    if min(inputs.shape[1:3]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels; got {inputs.shape[1:3]}")
    # To [0, 1], the range the constants are defined on (data range 2 on [-1, 1]).
    x = (inputs.astype(jnp.float32) + 1.0) / 2.0
    y = (reconstructions.astype(jnp.float32) + 1.0) / 2.0
    return jnp.mean(_ssim_map(x, y, jax.vmap(_gaussian_filter)), axis=(1, 2, 3))


# BT.601 luma and the two chroma rows: on [-1, 1] pixels each of Y, Cb, Cr spans [-1, 1].
YCBCR_FROM_RGB = np.concatenate([[[0.299, 0.587, 0.114]], CBCR_FROM_RGB]).astype(np.float32)


def colour_anchor_loss(pixels: jax.Array, latents: jax.Array) -> jax.Array:
    """Mean squared distance between the first three latent channels and the mean Y, Cb and Cr of
    the pixel block each latent position covers (not in taming).

    A small model trained from scratch learns the blocks' luminance first and then drops colour
    from its latents for good: the decoder never uses the colour it is not given, so no gradient
    asks the encoder for it. Anchoring three channels to the block colour hands the decoder a
    colour it learns to use; the other channels stay free.
    """
    if latents.shape[-1] < 3:
        raise ValueError(f"colour anchor: latents {tuple(latents.shape)} need ≥ 3 channels")
    target = block_colour(pixels, *latents.shape[1:3])
    return jnp.mean((latents[..., :3].astype(jnp.float32) - target) ** 2)


def block_colour(pixels: jax.Array, rows: int, cols: int) -> jax.Array:
    """The mean Y, Cb and Cr (float32, ``pixels``' scale) of each block of a ``rows`` x ``cols`` grid
    over NHWC RGB ``pixels``: (B, rows, cols, 3)."""
    batch, height, width, _ = pixels.shape
    if height % rows or width % cols:
        raise ValueError(f"colour anchor: a {rows} x {cols} grid does not divide the pixels {tuple(pixels.shape)}")
    blocks = pixels.astype(jnp.float32).reshape(batch, rows, height // rows, cols, width // cols, -1).mean((2, 4))
    return blocks @ jnp.asarray(YCBCR_FROM_RGB.T)


def adaptive_weight(nll_grad: Any, g_grad: Any, disc_weight: ArrayLike = 1.0, max_weight: float = 1e4) -> jax.Array:
    """taming's adaptive GAN weight: ‖∇nll‖ / (‖∇g‖ + 1e-4) at the decoder's last layer, clipped
    to [0, 1e4] and scaled by ``disc_weight``; no gradient flows through it."""
    weight = jnp.linalg.norm(nll_grad) / (jnp.linalg.norm(g_grad) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight) * disc_weight)


def codebook_usage(indices: jax.Array, n_embed: int) -> dict:
    """Perplexity of the code histogram and the share of codes not used in ``indices``."""
    counts = jnp.bincount(indices.reshape(-1), length=n_embed)
    probs = counts / jnp.maximum(counts.sum(), 1)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
    return {"perplexity": jnp.exp(entropy), "dead_code_share": jnp.mean(counts == 0)}
