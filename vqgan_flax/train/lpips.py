"""LPIPS (VGG16) perceptual distance, as taming's ``LPIPS``, for training with supplied weights.

No weights can be downloaded here: convert taming's/``lpips``' PyTorch state dict (keys
``net.slice1.0.weight`` ... and ``lin0.model.1.weight`` ...; e.g. taming's ``vgg.pth`` merged with
torchvision's VGG16) with [`lpips_params_from_state_dict`] and pass the result to the trainer.
"""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# torchvision vgg16.features: indices of the 3x3 convs, and the slice that ends after each tap.
_VGG_CONVS: Tuple[Tuple[int, int], ...] = (
    (0, 64), (2, 64),
    (5, 128), (7, 128),
    (10, 256), (12, 256), (14, 256),
    (17, 512), (19, 512), (21, 512),
    (24, 512), (26, 512), (28, 512),
)  # fmt: skip
_TAPS = (2, 7, 14, 21, 28)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (after these convs)
_POOL_BEFORE = (5, 10, 17, 24)
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


class LPIPS(nn.Module):
    """Images (B, H, W, 3) in [-1, 1], twice → LPIPS distance per image (B,)."""

    @nn.compact
    def __call__(self, images: jax.Array, others: jax.Array) -> jax.Array:
        both = jnp.concatenate([images, others]).astype(jnp.float32)
        x = (both - _SHIFT) / _SCALE
        taps = []
        for index, channels in _VGG_CONVS:
            if index in _POOL_BEFORE:
                x = nn.max_pool(x, (2, 2), (2, 2))
            x = nn.relu(nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), name=f"conv_{index}")(x))
            if index in _TAPS:
                taps.append(x)
        distance = jnp.zeros((images.shape[0],), jnp.float32)
        for k, features in enumerate(taps):
            # Unit-normalise each position's channel vector, as lpips' normalize_tensor.
            features = features / (jnp.sqrt(jnp.sum(features**2, axis=-1, keepdims=True)) + 1e-10)
            first, second = jnp.split(features, 2)
            weighted = nn.Conv(1, (1, 1), use_bias=False, name=f"lin_{k}")((first - second) ** 2)
            distance = distance + jnp.mean(weighted, axis=(1, 2, 3))
        return distance


def lpips_params_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> Dict:
    """LPIPS params from a PyTorch LPIPS state dict (taming's/lpips' key names, OIHW convs)."""
    params: Dict = {}
    slices = {index: f"net.slice{1 + sum(index > t for t in _TAPS)}.{index}" for index, _ in _VGG_CONVS}
    for index, channels in _VGG_CONVS:
        prefix = slices[index]
        for key in (f"{prefix}.weight", f"{prefix}.bias"):
            if key not in state_dict:
                raise KeyError(f"LPIPS state dict lacks {key}")
        weight = np.asarray(state_dict[f"{prefix}.weight"], np.float32)
        if weight.shape[0] != channels:
            raise ValueError(f"{prefix}.weight has shape {weight.shape}, expected {channels} output channels")
        params[f"conv_{index}"] = {
            "kernel": weight.transpose(2, 3, 1, 0),
            "bias": np.asarray(state_dict[f"{prefix}.bias"], np.float32),
        }
    for k in range(len(_TAPS)):
        key = f"lin{k}.model.1.weight"
        if key not in state_dict:
            raise KeyError(f"LPIPS state dict lacks {key}")
        params[f"lin_{k}"] = {"kernel": np.asarray(state_dict[key], np.float32).transpose(2, 3, 1, 0)}
    return params
