"""Checks on what callers hand the model, before it computes garbage from it.

Skipped for traced values (inside a caller's ``jit``/``pmap`` nothing concrete is known); on
concrete inputs they cost one pass over the array: on the host for host arrays, on the device for
arrays on a GPU/TPU (only one number per image comes back).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Models take pixels in [-1, 1] (taming, LWM) or [0, 1] (DALL·E-mini's fine-tuned VQGAN); beyond
# this magnitude the input is almost surely 0..255 values passed as floats.
PIXEL_LIMIT = 8.0


def _concrete(array: Any) -> bool:
    return not isinstance(array, jax.core.Tracer)


def _on_accelerator(array: Any) -> bool:
    return isinstance(array, jax.Array) and any(device.platform != "cpu" for device in array.devices())


@jax.jit
def per_image_abs_max(pixel_values: jax.Array) -> jax.Array:
    """max |x| of each image, NaN for an image holding a NaN or inf, computed where the array lives.

    Why on the device: on a GPU, pulling a batch off the device to scan it with numpy took longer
    than the encoder's own kernels (``benchmarks/input_checks.py`` measures the check)."""
    flat = pixel_values.reshape(pixel_values.shape[0], -1).astype(jnp.float32)
    return jnp.where(jnp.isfinite(flat).all(axis=1), jnp.abs(flat).max(axis=1), jnp.nan)


def check_pixels(pixel_values: Any, in_channels: int) -> None:
    """(B, H, W, C) float pixels: non-empty, ``in_channels`` channels, finite, roughly in range."""
    if not _concrete(pixel_values):
        return
    # an array's own dtype (np.result_type of a jax array is a deprecated implicit conversion)
    dtype = np.dtype(pixel_values.dtype) if hasattr(pixel_values, "dtype") else np.result_type(pixel_values)
    shape = np.shape(pixel_values)
    if len(shape) != 4:
        raise ValueError(f"pixel_values must be (B, H, W, C); got shape {tuple(shape)}")
    if shape[0] == 0:
        raise ValueError(f"pixel_values is an empty batch (shape {tuple(shape)})")
    if shape[-1] != in_channels:
        raise ValueError(
            f"pixel_values has {shape[-1]} channels (shape {tuple(shape)}), the model takes {in_channels} "
            "(NHWC; VQGANImageProcessor converts grayscale/RGBA images to RGB)"
        )
    if not np.issubdtype(dtype, np.floating) and dtype != jax.numpy.bfloat16:
        raise ValueError(
            f"pixel_values has dtype {dtype}; the model takes floats in [-1, 1] (scale uint8 images with "
            "x / 127.5 - 1, or use VQGANImageProcessor)"
        )
    if _on_accelerator(pixel_values):
        per_image = np.asarray(per_image_abs_max(pixel_values))
    else:  # host memory already: numpy reads it in place, and no program is compiled per shape
        array = np.asarray(pixel_values, dtype=np.float32)
        per_image = np.abs(array).reshape(shape[0], -1).max(axis=1)  # NaN propagates into the max
    bad = np.flatnonzero(~np.isfinite(per_image))
    if bad.size:
        raise ValueError(f"pixel_values[{bad[0]}] holds non-finite values (NaN/inf)")
    far = np.flatnonzero(per_image > PIXEL_LIMIT)
    if far.size:
        raise ValueError(
            f"pixel_values[{far[0]}] reaches {per_image[far[0]]:g}; the model takes [-1, 1] (0..255 values? "
            "scale with x / 127.5 - 1, or use VQGANImageProcessor)"
        )


def check_indices(indices: Any, n_embed: int) -> None:
    """Integer codebook indices, each in ``[0, n_embed)``; names the first offender."""
    if not _concrete(indices):
        return
    array = np.asarray(indices)
    if array.size == 0:
        raise ValueError(f"indices is empty (shape {array.shape})")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"indices have dtype {array.dtype}; codebook indices are integers")
    outside = (array < 0) | (array >= n_embed)
    if outside.any():
        position = tuple(int(i) for i in np.argwhere(outside)[0])
        raise ValueError(f"indices{list(position)} = {int(array[position])} is outside the codebook [0, {n_embed})")
