"""The shipped default model loads offline and reconstructs held-out photographs well.

The crops come from examples/images (coffee, chelsea, rocket, brick), which were kept out of the
model's training (scripts/train_default_model.py); thresholds are the measured values minus a
small margin, so a broken model, decoder or loader fails them.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image

import vqgan_flax
from vqgan_flax import FlaxVQGANModel
from vqgan_flax.cli import main
from vqgan_flax.image_io import to_uint8
from vqgan_flax.metrics import psnr, ssim

IMAGES = pathlib.Path(__file__).parent.parent / "examples" / "images"
HELD_OUT = ["coffee.png", "chelsea.png", "rocket.jpg", "brick.png"]  # as in the training script
MIN_PSNR, MIN_SSIM = 23.0, 0.66  # measured 23.75 dB and 0.696 (default_model/README.md)


def _held_out_crops(size=64, per_image=4, seed=1234):
    rng = np.random.default_rng(seed)
    crops = []
    for name in HELD_OUT:
        image = np.asarray(Image.open(IMAGES / name).convert("RGB"))
        for _ in range(per_image):
            top, left = rng.integers(image.shape[0] - size + 1), rng.integers(image.shape[1] - size + 1)
            crops.append(image[top : top + size, left : left + size])
    return np.stack(crops)


def test_default_model_is_a_small_local_folder():
    folder = pathlib.Path(vqgan_flax.DEFAULT_MODEL)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert sum(f.stat().st_size for f in folder.iterdir()) < 20 * 2**20


def test_default_model_reconstructs_held_out_crops():
    model = FlaxVQGANModel.from_pretrained(vqgan_flax.DEFAULT_MODEL)
    crops = _held_out_crops()
    out = np.asarray(model(crops.astype(np.float32) / 127.5 - 1.0).reconstruction)
    recon = to_uint8(out)
    mean_psnr = np.mean([psnr(a, b) for a, b in zip(crops, recon)])
    mean_ssim = np.mean([ssim(a, b) for a, b in zip(crops, recon)])
    assert mean_psnr > MIN_PSNR, mean_psnr
    assert mean_ssim > MIN_SSIM, mean_ssim


def test_cli_uses_the_default_model(capsys):
    assert main(["info"]) == 0
    assert os.path.basename(vqgan_flax.DEFAULT_MODEL) in capsys.readouterr().out
