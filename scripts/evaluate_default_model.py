"""Rate-matched evaluation of a model (default: the shipped one) on the splits of
``vqgan_flax.sample_data``: ours against a k-means patch codec and JPEG at the same bits per pixel.

    pip install -e ".[eval]" && python scripts/evaluate_default_model.py

The k-means codec has K = n_embed centroids of f x f x 3 pixel patches (f: the model's downsampling
factor), fitted on the training split; JPEG's quality is chosen per image to come closest to the
rate. Each split is scored on 8 fixed random 128 x 128 crops per image and on the whole images
resized and centre-cropped to 256 x 256. ``--json`` writes every number with the commit and the
package versions it came from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np

from vqgan_flax import DEFAULT_MODEL, FlaxVQGANModel, evaluation, sample_data

SPLITS = ("validation", "test", "unseen")
CROP, CROPS_PER_IMAGE, WHOLE = 128, 8, 256


def git_commit() -> Dict[str, object]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("jax", "flax", "transformers", "numpy", "pillow", "scikit-image"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def evaluate(model: FlaxVQGANModel, seed: int = 0) -> Dict[str, object]:
    """Every split's crops and whole images: ours, k-means and JPEG at the model's rate."""
    factor = 2 ** (len(model.config.ch_mult) - 1)
    began = time.time()
    centroids = evaluation.fit_patch_kmeans(sample_data.split_images("train"), factor, model.config.n_embed, seed=seed)
    rows = {}
    for split in SPLITS:
        images = sample_data.split_images(split)
        sets = {
            f"{CROPS_PER_IMAGE} crops {CROP}²": evaluation.fixed_crops(images, CROP, CROPS_PER_IMAGE),
            f"whole at {WHOLE}²": evaluation.whole_images(images, WHOLE),
        }
        for label, pictures in sets.items():
            rows[f"{split}: {label}"] = evaluation.compare(pictures, model, centroids)
    return {
        "rate_bpp": evaluation.vq_bits_per_pixel(factor, model.config.n_embed),
        "downsampling": factor,
        "n_embed": model.config.n_embed,
        "splits": {split: list(sample_data.SPLIT[split]) for split in ("train", *SPLITS)},
        "rows": rows,
        "seconds": round(time.time() - began, 1),
    }


def table(result: Dict[str, object]) -> List[str]:
    """The result as a Markdown table: PSNR / SSIM per codec, ours minus k-means."""
    lines = [
        f"Rate: {result['rate_bpp']:.3f} bits per pixel (one of {result['n_embed']} codes per "
        f"{result['downsampling']}×{result['downsampling']} block).",
        "",
        "| images | ours PSNR / SSIM | k-means PSNR / SSIM | JPEG PSNR / SSIM (bpp) | ours − k-means |",
        "|---|---|---|---|---|",
    ]
    for label, row in result["rows"].items():
        ours, kmeans, jpeg = row["ours"], row["kmeans"], row["jpeg"]
        lines.append(
            f"| {label} | {ours['psnr']:.2f} dB / {ours['ssim']:.3f} | {kmeans['psnr']:.2f} dB / {kmeans['ssim']:.3f} "
            f"| {jpeg['psnr']:.2f} dB / {jpeg['ssim']:.3f} ({jpeg['bpp']:.3f}) "
            f"| {ours['psnr'] - kmeans['psnr']:+.2f} dB / {ours['ssim'] - kmeans['ssim']:+.3f} |"
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a from_pretrained folder (default: the shipped model)")
    parser.add_argument("--json", help="also write the numbers, commit and versions here")
    args = parser.parse_args(argv)
    model = FlaxVQGANModel.from_pretrained(args.model)
    result = evaluate(model)
    print("\n".join(table(result)))
    if args.json:
        record = {
            "command": " ".join(["python", *[os.path.relpath(sys.argv[0]), *sys.argv[1:]]]),
            "model": os.path.relpath(args.model) if not os.path.isabs(args.model) else args.model,
            **git_commit(),
            "versions": versions(),
            **result,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
