"""Rate-matched evaluation of a VQGAN against two trivial codecs.

A VQGAN with downsampling factor f and K codes spends log2(K) bits per f x f pixel block. The
codecs it must beat at that rate:

- **k-means patch codec**: K centroids of f x f x 3 pixel patches (Lloyd's algorithm on patches of
  the training images); an image is coded as the index of the nearest centroid of each block;
- **JPEG** (Pillow), quality chosen so the file's bits per pixel come closest to the rate.

Quality is PSNR and SSIM (``vqgan_flax.evaluation.metrics``) over fixed random crops and whole images.
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from .metrics import chroma_psnr, psnr, ssim


def _patches(image: np.ndarray, patch: int) -> np.ndarray:
    """(N, patch * patch * 3) blocks of an (H, W, 3) image whose sides are multiples of ``patch``."""
    h, w, c = image.shape
    if h % patch or w % patch:
        raise ValueError(f"image of shape {image.shape} is not a whole number of {patch}x{patch} patches")
    blocks = image.reshape(h // patch, patch, w // patch, patch, c).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(-1, patch * patch * c)


@jax.jit
def _nearest(points: jax.Array, centroids: jax.Array) -> jax.Array:
    # |p - c|² = |p|² - 2 p·c + |c|²; |p|² is the same for every centroid.
    scores = points @ centroids.T * -2.0 + jnp.sum(centroids**2, axis=1)
    return jnp.argmin(scores, axis=1)


def _assign(points: np.ndarray, centroids: np.ndarray, chunk: int = 32768) -> np.ndarray:
    cents = jnp.asarray(centroids)
    return np.concatenate(
        [np.asarray(_nearest(jnp.asarray(points[i : i + chunk]), cents)) for i in range(0, len(points), chunk)]
    )


def fit_patch_kmeans(
    images: Sequence[np.ndarray],
    patch: int,
    n_codes: int,
    max_patches: int = 200_000,
    iterations: int = 30,
    seed: int = 0,
    shifted: bool = True,
) -> np.ndarray:
    """K-means centroids (``n_codes``, patch² · 3) of ``patch`` x ``patch`` blocks of uint8 images.

    Blocks are taken from a patch-aligned grid and (``shifted``) from one more grid at a random
    offset per image, at most ``max_patches`` of them; initial centroids are distinct random blocks and a
    centroid left empty is moved onto the block farthest from its centroid.
    """
    rng = np.random.default_rng(seed)
    pools = []
    for image in images:
        h, w = (image.shape[0] // patch) * patch, (image.shape[1] // patch) * patch
        pools.append(_patches(image[:h, :w], patch))
        if not shifted:
            continue
        dy, dx = rng.integers(patch), rng.integers(patch)
        hh, ww = ((image.shape[0] - dy) // patch) * patch, ((image.shape[1] - dx) // patch) * patch
        pools.append(_patches(image[dy : dy + hh, dx : dx + ww], patch))
    points = np.concatenate(pools).astype(np.float32)
    if len(points) > max_patches:
        points = points[rng.choice(len(points), max_patches, replace=False)]
    unique = np.unique(points, axis=0)
    if len(unique) < n_codes:
        raise ValueError(f"only {len(unique)} distinct {patch}x{patch} patches for {n_codes} codes")
    centroids = unique[rng.choice(len(unique), n_codes, replace=False)]
    for _ in range(iterations):
        labels = _assign(points, centroids)
        counts = np.bincount(labels, minlength=n_codes)
        # Per-code sums a column at a time: bincount accumulates in float64, in one pass per
        # column, where np.add.at's unbuffered scatter dominated the whole evaluation.
        sums = np.stack([np.bincount(labels, weights=column, minlength=n_codes) for column in points.T], axis=1)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        if not filled.all():
            errors = np.sum((points - centroids[labels]) ** 2, axis=1)
            centroids[~filled] = points[np.argsort(errors)[::-1][: int((~filled).sum())]]
    return centroids


def patch_codec(image: np.ndarray, centroids: np.ndarray, patch: int) -> np.ndarray:
    """``image`` (sides multiples of ``patch``) coded block by block with the nearest centroid."""
    blocks = _patches(image, patch).astype(np.float32)
    coded = np.clip(np.round(centroids[_assign(blocks, centroids)]), 0, 255).astype(np.uint8)
    h, w, c = image.shape
    return coded.reshape(h // patch, w // patch, patch, patch, c).transpose(0, 2, 1, 3, 4).reshape(h, w, c)


def jpeg_at_rate(image: np.ndarray, bits_per_pixel: float) -> Tuple[np.ndarray, float, int]:
    """``image`` through Pillow's JPEG at the quality (1–95) whose file size is closest to
    ``bits_per_pixel``: (decoded image, its bits per pixel including headers, quality)."""
    from PIL import Image

    pixels = image.shape[0] * image.shape[1]
    best: Optional[Tuple[bytes, float, int]] = None
    for quality in range(1, 96):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality, optimize=True)
        bpp = 8 * buffer.tell() / pixels
        if best is None or abs(bpp - bits_per_pixel) < abs(best[1] - bits_per_pixel):
            best = (buffer.getvalue(), bpp, quality)
        if bpp > bits_per_pixel:
            break  # sizes grow with quality
    assert best is not None  # quality 1 always sets it
    with Image.open(io.BytesIO(best[0])) as decoded:
        return np.asarray(decoded.convert("RGB")), best[1], best[2]


def vq_bits_per_pixel(downsampling: int, n_codes: int) -> float:
    """Bits per pixel of one code of ``n_codes`` per ``downsampling`` x ``downsampling`` block."""
    return math.log2(n_codes) / downsampling**2


def fixed_crops(images: Sequence[np.ndarray], size: int, per_image: int, seed: int = 1234) -> List[np.ndarray]:
    """``per_image`` random ``size`` x ``size`` crops of each image, the same for a given seed."""
    rng = np.random.default_rng(seed)
    crops = []
    for image in images:
        if min(image.shape[:2]) < size:
            raise ValueError(f"image of shape {image.shape} is smaller than a {size}x{size} crop")
        for _ in range(per_image):
            top, left = rng.integers(image.shape[0] - size + 1), rng.integers(image.shape[1] - size + 1)
            crops.append(image[top : top + size, left : left + size])
    return crops


def whole_images(images: Sequence[np.ndarray], size: int = 256) -> List[np.ndarray]:
    """Each image resized (shorter side) and centre-cropped to ``size`` x ``size``, as the CLI does."""
    from PIL import Image

    from ..data.image_io import resize_and_center_crop

    return [np.asarray(resize_and_center_crop(Image.fromarray(image), size, size)) for image in images]


def score(originals: Sequence[np.ndarray], coded: Sequence[np.ndarray]) -> Dict[str, float]:
    """Mean PSNR (dB) and SSIM of ``coded`` against ``originals``, and the PSNR of the colour planes
    alone over the set ([`metrics.chroma_psnr`])."""
    return {
        "psnr": float(np.mean([psnr(a, b) for a, b in zip(originals, coded)])),
        "ssim": float(np.mean([ssim(a, b) for a, b in zip(originals, coded)])),
        "chroma_psnr": chroma_psnr(originals, coded),
    }


def model_codec(model, batch_size: int = 8) -> Callable[[Sequence[np.ndarray]], List[np.ndarray]]:
    """A function coding same-sized uint8 images through ``model`` (encode, quantize, decode), in
    the pixel range its folder's image processor names ([`data.processing.processor_for_model`])."""
    from ..data.processing import processor_for_model

    processor = processor_for_model(model)

    def code(images: Sequence[np.ndarray]) -> List[np.ndarray]:
        out: List[np.ndarray] = []
        for i in range(0, len(images), batch_size):
            pixels = processor.to_pixel_values(np.stack(images[i : i + batch_size]))
            out.extend(processor.postprocess(np.asarray(model(pixels).reconstruction)))
        return out

    return code


def compare(
    images: Sequence[np.ndarray],
    model,
    centroids: np.ndarray,
) -> Dict[str, Dict[str, float]]:
    """PSNR/SSIM of ``model``, the k-means patch codec and JPEG on ``images`` (same size), at the
    model's rate; JPEG's entry also carries its mean bits per pixel."""
    return compare_subsets(images, model, centroids, {"all": range(len(images))})["all"]


def compare_subsets(
    images: Sequence[np.ndarray],
    model,
    centroids: np.ndarray,
    subsets: Mapping[str, Sequence[int]],
) -> Dict[str, Dict[str, Any]]:
    """[`compare`]'s row for each named subset (indices into ``images``), each image coded once."""
    config = model.config
    factor = config.downsampling_factor
    rate = vq_bits_per_pixel(factor, config.n_embed)
    for name, indices in subsets.items():
        if not len(indices) or not all(0 <= i < len(images) for i in indices):
            raise ValueError(f"subset {name!r}: indices must be a non-empty selection of the {len(images)} images")
    ours = model_codec(model)(images)
    kmeans = [patch_codec(image, centroids, factor) for image in images]
    jpegs = [jpeg_at_rate(image, rate) for image in images]
    rows: Dict[str, Dict[str, Any]] = {}
    for name, indices in subsets.items():
        originals = [images[i] for i in indices]
        rows[name] = {
            "rate_bpp": rate,
            "ours": score(originals, [ours[i] for i in indices]),
            "kmeans": score(originals, [kmeans[i] for i in indices]),
            "jpeg": {
                **score(originals, [jpegs[i][0] for i in indices]),
                "bpp": float(np.mean([jpegs[i][1] for i in indices])),
            },
        }
    return rows
