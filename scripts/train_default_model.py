"""Train the shipped default model (vqgan_flax/default_model) on scikit-image's bundled photographs.

    pip install scikit-image && python scripts/train_default_model.py --output build/default_model

Training images and held-out images are disjoint; every one is CC0 or public domain (see
vqgan_flax/default_model/README.md). Resumable: rerunning continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np
from PIL import Image

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.image_io import to_rgb, to_uint8
from vqgan_flax.metrics import psnr, ssim
from vqgan_flax.training import ImageCrops, TrainingConfig, VQGANTrainer

TRAIN = [
    "astronaut.png", "camera.png", "hubble_deep_field.jpg", "retina.jpg", "grass.png", "gravel.png",
    "coins.png", "horse.png", "text.png", "cell.png", "clock_motion.png", "ihc.png",
]  # fmt: skip
HELD_OUT = ["coffee.png", "chelsea.png", "rocket.jpg", "brick.png"]
# Phase 2 samples these colour photographs three times as often: phase 1 (7 of 12 images are
# grayscale) left reconstructions at about half the original saturation.
COLOUR = ["astronaut.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "horse.png"]
MODEL = dict(
    ch=64, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[], mid_block_attention=False,
    z_channels=32, embed_dim=8, n_embed=1024, resolution=256,  # no attention: only the default image size
)  # fmt: skip


def skimage_data_dir() -> str:
    import skimage

    return os.path.join(os.path.dirname(skimage.__file__), "data")


def load_rgb(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(to_rgb(image))  # transparency composited on white


def held_out_crops(size: int = 64, per_image: int = 4, seed: int = 1234) -> np.ndarray:
    """Fixed random crops of the held-out images (uint8)."""
    rng = np.random.default_rng(seed)
    crops = []
    for name in HELD_OUT:
        image = load_rgb(os.path.join(skimage_data_dir(), name))
        for _ in range(per_image):
            top, left = rng.integers(image.shape[0] - size + 1), rng.integers(image.shape[1] - size + 1)
            crops.append(image[top : top + size, left : left + size])
    return np.stack(crops)


def evaluate(model: FlaxVQGANModel, crops: np.ndarray) -> dict:
    pixels = crops.astype(np.float32) / 127.5 - 1.0
    out = np.asarray(model(pixels).reconstruction)
    recon = to_uint8(out)
    return {
        "psnr": float(np.mean([psnr(a, b) for a, b in zip(crops, recon)])),
        "ssim": float(np.mean([ssim(a, b) for a, b in zip(crops, recon)])),
        "crops": len(crops),
        "crop_size": int(crops.shape[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", default="build/default_model")
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--disc-start", type=int, default=1300)
    parser.add_argument("--finetune-steps", type=int, default=600)
    args = parser.parse_args()
    config = TrainingConfig(
        steps=args.steps, batch_size=16, crop_size=32, learning_rate=2e-4, disc_start=args.disc_start,
        disc_weight=0.1, disc_ndf=32, disc_num_layers=2, log_every=25, save_every=100, seed=0,
        codebook_restart_every=50,
    )  # fmt: skip
    images = [load_rgb(os.path.join(skimage_data_dir(), name)) for name in TRAIN]
    model = FlaxVQGANModel(VQGANConfig(**MODEL), seed=0)
    trainer = VQGANTrainer(model, config)
    began = time.time()
    trainer.fit(
        ImageCrops(images, config.crop_size, seed=0),
        output_dir=args.output,
        progress=False,
        on_log=lambda m: print(json.dumps({k: round(v, 4) for k, v in m.items()}), flush=True),
    )
    phase1 = FlaxVQGANModel.from_pretrained(os.path.join(args.output, "model"))
    report = {"phase1_held_out": evaluate(phase1, held_out_crops())}

    # Phase 2: fine-tune phase 1's model (a fresh discriminator joins half-way), colour-weighted.
    finetune = dataclasses.replace(
        config, steps=args.finetune_steps, learning_rate=1e-4, disc_start=args.finetune_steps // 2, seed=1
    )
    weighted = images + [load_rgb(os.path.join(skimage_data_dir(), n)) for n in COLOUR for _ in range(2)]
    VQGANTrainer(phase1, finetune).fit(
        ImageCrops(weighted, config.crop_size, seed=1), output_dir=os.path.join(args.output, "finetune"),
        progress=False, on_log=lambda m: print(json.dumps({k: round(v, 4) for k, v in m.items()}), flush=True),
    )  # fmt: skip
    trained = FlaxVQGANModel.from_pretrained(os.path.join(args.output, "finetune", "model"))
    report.update(held_out=evaluate(trained, held_out_crops()), train_seconds_this_run=time.time() - began)
    print(json.dumps(report, indent=2))
    with open(os.path.join(args.output, "report.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
