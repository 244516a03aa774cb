"""Watching a run: a held-out validation set scored every ``val_every`` steps (PSNR, SSIM, code
usage), a PNG grid of its first reconstructions, and the metrics written to ``log.jsonl`` and,
with ``tensorboard``, to TensorBoard event files (tensorboardX).

May import: evaluation, data, hub, models, utils, the training losses.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

import jax.numpy as jnp
import numpy as np
from PIL import Image

from ..data.image_io import list_images, open_rgb
from ..evaluation.metrics import psnr, ssim
from .losses import codebook_usage

SAMPLES = 8  # images in a sample grid


class ValidationSet:
    """Held-out images at ``size`` x ``size``: the shorter side resized to ``size`` (bicubic), the
    centre cropped, so every step scores the same pixels."""

    def __init__(self, images: Sequence[Any], size: int) -> None:
        crops = []
        for item in images:
            image = Image.fromarray(item) if isinstance(item, np.ndarray) else open_rgb(item)
            scale = size / min(image.size)
            image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                                 Image.Resampling.BICUBIC)  # fmt: skip
            left, top = (image.width - size) // 2, (image.height - size) // 2
            crops.append(np.asarray(image.crop((left, top, left + size, top + size)).convert("RGB")))
        if not crops:
            raise ValueError("no validation images")
        self.images = np.stack(crops)  # uint8 (N, size, size, 3)
        self.source: Optional[str] = None

    @classmethod
    def from_folder(cls, folder: str, size: int) -> ValidationSet:
        """Every image of ``folder`` (as the training data is listed)."""
        held_out = cls(list_images(folder), size)
        held_out.source = os.path.abspath(folder)
        return held_out

    def pixels(self) -> np.ndarray:
        """The images as float32 in [-1, 1]."""
        return self.images.astype(np.float32) / 127.5 - 1.0


def to_uint8(pixels: Any) -> np.ndarray:
    """[-1, 1] floats to uint8 RGB, as the decoders' outputs are shown."""
    return np.asarray(np.clip((np.asarray(pixels, np.float32) + 1.0) * 127.5 + 0.5, 0, 255), np.uint8)


def validate(model: Any, params: Any, held_out: ValidationSet, batch_size: int) -> Dict[str, Any]:
    """Scores of ``model`` with ``params`` on ``held_out``: mean PSNR and SSIM over the images,
    the perplexity of their codes and the share of codes none of them uses; ``reconstructions``
    (uint8) for the grid."""
    pixels = held_out.pixels()
    outputs, indices = [], []
    for start in range(0, len(pixels), batch_size):
        out = model(pixels[start : start + batch_size], params=params)
        outputs.append(to_uint8(out.reconstruction))
        indices.append(np.asarray(out.indices).reshape(-1))
    reconstructions = np.concatenate(outputs)
    usage = codebook_usage(jnp.asarray(np.concatenate(indices)), model.config.n_embed)  # the train log's
    return {
        "val_psnr": float(np.mean([psnr(a, b) for a, b in zip(held_out.images, reconstructions)])),
        "val_ssim": float(np.mean([ssim(a, b) for a, b in zip(held_out.images, reconstructions)])),
        "val_perplexity": float(usage["perplexity"]),
        "val_dead_code_share": float(usage["dead_code_share"]),
        "reconstructions": reconstructions,
    }


def sample_grid(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """The first ``SAMPLES`` originals in a row above their reconstructions (uint8 HWC)."""
    top, bottom = (np.concatenate(list(images[:SAMPLES]), axis=1) for images in (originals, reconstructions))
    return np.concatenate([top, bottom], axis=0)


class RunWriter:
    """Appends metrics to ``output_dir/log.jsonl`` and, with ``tensorboard``, writes them (and
    sample grids) to TensorBoard event files in ``output_dir/tensorboard``."""

    def __init__(self, output_dir: str, tensorboard: bool = False) -> None:
        self.output_dir = output_dir
        self.events: Any = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard=True needs tensorboardX: pip install 'vqgan-flax[train]'") from None
            self.events = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def log(self, metrics: Dict[str, float]) -> None:
        """One ``log.jsonl`` line (``metrics`` has the ``step``); each number as a scalar."""
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.events is not None:
            for name, value in metrics.items():
                if name not in ("step", "seconds"):
                    tag = name.replace("val_", "val/", 1) if name.startswith("val_") else f"train/{name}"
                    self.events.add_scalar(tag, value, metrics["step"])

    def samples(self, step: int, grid: np.ndarray) -> str:
        """Save ``grid`` as ``samples/step-NNNNNNN.png`` (and to TensorBoard); returns its path."""
        folder = os.path.join(self.output_dir, "samples")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"step-{step:07d}.png")
        Image.fromarray(grid).save(path)
        if self.events is not None:
            self.events.add_image("val/reconstructions", grid, step, dataformats="HWC")
        return path

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


__all__: List[str] = ["RunWriter", "ValidationSet", "sample_grid", "to_uint8", "validate"]
