"""The README's picture: test photographs next to the shipped default model's reconstructions.

    python scripts/readme_picture.py            # writes docs/images/reconstruction.jpg

Each row is one photograph of ``examples/images`` (the default model's test split), resized and
centre-cropped to 256 x 256, then its reconstruction (1024 tokens); PSNR is printed per row.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

from vqgan_flax import DEFAULT_MODEL, FlaxVQGANModel, VQGANImageProcessor
from vqgan_flax.evaluation.metrics import psnr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = ("rocket.jpg", "coffee.png", "chelsea.png")
SIDE, GAP = 256, 8


def picture(names=IMAGES) -> Image.Image:
    """One row per photograph: original | reconstruction, with a white gap between them."""
    model = FlaxVQGANModel.from_pretrained(DEFAULT_MODEL)
    size = {"shortest_edge": SIDE}, {"height": SIDE, "width": SIDE}
    processor = VQGANImageProcessor.from_pretrained(DEFAULT_MODEL, size=size[0], crop_size=size[1])
    canvas = Image.new("RGB", (2 * SIDE + GAP, len(names) * SIDE + (len(names) - 1) * GAP), "white")
    for row, name in enumerate(names):
        photo = Image.open(os.path.join(ROOT, "examples", "images", name)).convert("RGB")
        pixels = processor(photo, return_tensors="np")["pixel_values"]
        original = processor.postprocess(pixels)[0]
        reconstruction = processor.postprocess(np.asarray(model(pixels).reconstruction))[0]
        print(f"{name}: PSNR {psnr(original, reconstruction):.2f} dB")
        top = row * (SIDE + GAP)
        canvas.paste(Image.fromarray(original), (0, top))
        canvas.paste(Image.fromarray(reconstruction), (SIDE + GAP, top))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "images", "reconstruction.jpg"))
    args = parser.parse_args()
    picture().save(args.output, quality=92, optimize=True)
    print(f"wrote {os.path.relpath(args.output)}")


if __name__ == "__main__":
    main()
