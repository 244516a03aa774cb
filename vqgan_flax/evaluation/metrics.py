"""Image-quality metrics for reconstructions: PSNR, SSIM (Wang et al. 2004) and the PSNR of the colour
(chroma) planes alone, in numpy."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np


def _as_float(image: np.ndarray, data_range: float) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image; got shape {image.shape}")
    return image / data_range


def psnr(reference: np.ndarray, image: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (infinite for identical images)."""
    if np.shape(reference) != np.shape(image):
        raise ValueError(f"shapes differ: {np.shape(reference)} vs {np.shape(image)}")
    mse = np.mean((_as_float(reference, data_range) - _as_float(image, data_range)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


# BT.601 (JPEG's) Cb and Cr rows: an RGB triple's colour apart from its luminance.
CBCR_FROM_RGB = np.array([[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def chroma_mse(reference: np.ndarray, image: np.ndarray, data_range: float = 255.0) -> float:
    """Mean squared error of the Cb and Cr planes of two (H, W, 3) RGB images (scaled to [0, 1]):
    how far the colour moved, whatever happened to the luminance."""
    if np.shape(reference) != np.shape(image) or np.ndim(image) != 3 or np.shape(image)[-1] != 3:
        raise ValueError(
            f"expected two (H, W, 3) RGB images of one shape; got {np.shape(reference)} and {np.shape(image)}"
        )
    difference = (_as_float(reference, data_range) - _as_float(image, data_range)) @ CBCR_FROM_RGB.T
    return float(np.mean(difference**2))


def chroma_psnr(references: Sequence[np.ndarray], images: Sequence[np.ndarray], data_range: float = 255.0) -> float:
    """PSNR in dB of the colour (Cb, Cr) planes over a set of RGB images, from their pooled squared
    error: a grey photograph coded exactly grey has no chroma error, and a per-image mean would be
    infinite; an all-grey output of a colour photograph scores low."""
    if len(references) != len(images) or not len(images):
        raise ValueError(
            f"expected two equally long, non-empty lists of images; got {len(references)} and {len(images)}"
        )
    mse = np.mean([chroma_mse(a, b, data_range) for a, b in zip(references, images)])
    # Grey in, grey out leaves only the rounding of the Cb/Cr rows (~1e-34): that is no error.
    return float("inf") if mse < 1e-20 else float(10 * np.log10(1.0 / mse))


def _gaussian_filter(image: Any, sigma: float = 1.5, radius: int = 5) -> Any:
    """Separable Gaussian blur over H and W (the first two axes) with a truncated 11-tap window
    ('valid' borders); numpy or JAX arrays."""
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    rows = sum(taps[k] * image[k : image.shape[0] - 2 * radius + k] for k in range(2 * radius + 1))
    return sum(taps[k] * rows[:, k : rows.shape[1] - 2 * radius + k] for k in range(2 * radius + 1))


def ssim(reference: np.ndarray, image: np.ndarray, data_range: float = 255.0) -> float:
    """Mean structural similarity with the usual Gaussian window (σ = 1.5, 11 taps), K1 = 0.01,
    K2 = 0.03, averaged over channels; as skimage's ``structural_similarity(...,
    gaussian_weights=True, use_sample_covariance=False)`` on the valid region."""
    if np.shape(reference) != np.shape(image):
        raise ValueError(f"shapes differ: {np.shape(reference)} vs {np.shape(image)}")
    x, y = _as_float(reference, data_range), _as_float(image, data_range)
    if min(x.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels; got {x.shape[:2]}")
    return float(_ssim_map(x, y, _gaussian_filter).mean())


def _ssim_map(x: Any, y: Any, blur: Callable[[Any], Any]) -> Any:
    """SSIM at every window position of two images scaled to [0, 1], ``blur`` the Gaussian window.
    Arithmetic only, so numpy and JAX arrays both work (``losses.structural_similarity`` is this,
    differentiable)."""
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
