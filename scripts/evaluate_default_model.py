"""Rate-matched evaluation of a model (default: the shipped one) on the splits of
``vqgan_flax.evaluation.sample_data``: ours against a k-means patch codec and JPEG at the same bits per pixel.

    pip install -e ".[eval]" && python scripts/evaluate_default_model.py

The k-means codec has K = n_embed centroids of f x f x 3 pixel patches (f: the model's downsampling
factor), fitted on the training split; JPEG's quality is chosen per image to come closest to the
rate. Each split is scored on 8 fixed random 128 x 128 crops per image and on the whole images
resized and centre-cropped to 256 x 256. ``--json`` writes every number with the commit and the
package versions it came from.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Sequence

from vqgan_flax import DEFAULT_MODEL, FlaxVQGANModel
from vqgan_flax.evaluation import compare as evaluation
from vqgan_flax.evaluation import provenance, sample_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPLITS = ("validation", "test", "unseen")
RECORD = os.path.join(DEFAULT_MODEL, "evaluation.json")  # the shipped model's numbers
READMES = [os.path.join(ROOT, "docs", "default-model.md"), os.path.join(DEFAULT_MODEL, "README.md")]
START, END = "<!-- evaluation:start -->", "<!-- evaluation:end -->"
CROP, CROPS_PER_IMAGE, WHOLE = 128, 8, 256


def evaluate(
    model: FlaxVQGANModel, seed: int = 0, per_image: bool = False, splits: Sequence[str] = SPLITS
) -> Dict[str, object]:
    """Each split's crops and whole images: ours, k-means and JPEG at the model's rate (with
    ``per_image``, also a row per image, to see which photograph a split's mean hides). The record
    holds every split; ``splits`` narrows a check to some of them."""
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ValueError(f"splits {list(splits)}: each must be one of {list(SPLITS)}, at least one")
    factor = model.config.downsampling_factor
    began = time.time()
    centroids = evaluation.fit_patch_kmeans(sample_data.split_images("train"), factor, model.config.n_embed, seed=seed)
    rows = {}
    crops_label, whole_label = f"{CROPS_PER_IMAGE} crops {CROP}²", f"whole at {WHOLE}²"
    for split in splits:
        images = sample_data.split_images(split)
        crops, wholes = evaluation.fixed_crops(images, CROP, CROPS_PER_IMAGE), evaluation.whole_images(images, WHOLE)
        names = sample_data.SPLIT[split] if per_image else ()
        # An image's rows come from the split's own crops, so they average to the split's row.
        crop_sets = {split: range(len(crops))}
        crop_sets.update({name: range(i * CROPS_PER_IMAGE, (i + 1) * CROPS_PER_IMAGE) for i, name in enumerate(names)})
        whole_sets = {split: range(len(wholes)), **{name: [i] for i, name in enumerate(names)}}
        for label, pictures, sets in ((crops_label, crops, crop_sets), (whole_label, wholes, whole_sets)):
            for name, row in evaluation.compare_subsets(pictures, model, centroids, sets).items():
                rows[f"{split}: {label}" if name == split else f"{split} {name}: {label}"] = row
    return {
        "rate_bpp": evaluation.vq_bits_per_pixel(factor, model.config.n_embed),
        "downsampling": factor,
        "n_embed": model.config.n_embed,
        "splits": {split: list(sample_data.SPLIT[split]) for split in ("train", *splits)},
        "rows": rows,
        "seconds": round(time.time() - began, 1),
    }


def table(result: Dict[str, object]) -> List[str]:
    """The result as a Markdown table: PSNR / SSIM per codec, ours minus k-means, and the colour
    planes' PSNR per codec (records made before it was measured show a dash there)."""
    lines = [
        f"Rate: {result['rate_bpp']:.3f} bits per pixel (one of {result['n_embed']} codes per "
        f"{result['downsampling']}×{result['downsampling']} block).",
        "",
        "| images | ours PSNR / SSIM | k-means PSNR / SSIM | JPEG PSNR / SSIM (bpp) | ours − k-means "
        "| colour: chroma PSNR ours / k-means / JPEG |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in result["rows"].items():
        ours, kmeans, jpeg = row["ours"], row["kmeans"], row["jpeg"]
        chroma = " / ".join(f"{c['chroma_psnr']:.1f}" if "chroma_psnr" in c else "–" for c in (ours, kmeans, jpeg))
        lines.append(
            f"| {label} | {ours['psnr']:.2f} dB / {ours['ssim']:.3f} | {kmeans['psnr']:.2f} dB / {kmeans['ssim']:.3f} "
            f"| {jpeg['psnr']:.2f} dB / {jpeg['ssim']:.3f} ({jpeg['bpp']:.3f}) "
            f"| {ours['psnr'] - kmeans['psnr']:+.2f} dB / {ours['ssim'] - kmeans['ssim']:+.3f} | {chroma} dB |"
        )
    return lines


def section(record: Dict[str, object]) -> str:
    """The evaluation section of the docs page and the model card: the table and the command and
    commit it came from."""
    return "\n".join([
        START,
        f"Generated from `{os.path.relpath(RECORD, ROOT)}`, written by `{record['command']}` "
        f"({provenance.describe(record)}). No split is untouched: test and unseen photographs also shaped "
        "the recipe (see \"Which photographs shaped the recipe\").",
        "",
        *table(record),
        END,
    ])  # fmt: skip


def write_readmes(record: Dict[str, object]) -> None:
    """Replace the evaluation section of the docs page and the model card with [`section`] of ``record``."""
    import re

    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    for path in READMES:
        with open(path) as f:
            text = f.read()
        if not pattern.search(text):
            raise SystemExit(f"{path}: no {START} ... {END} markers to replace")
        with open(path, "w") as f:
            f.write(pattern.sub(lambda _: section(record), text))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a from_pretrained folder (default: the shipped model)")
    parser.add_argument("--json", help="also write the numbers, commit and versions here (needs a clean checkout)")
    parser.add_argument("--per-image", action="store_true", help="also a row per image (not with --record)")
    parser.add_argument("--allow-dirty", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--record", action="store_true",
        help=f"write {os.path.relpath(RECORD)} and the evaluation sections of docs/default-model.md and the "
        "model card (the shipped model only)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.record:
        if os.path.realpath(args.model) != os.path.realpath(DEFAULT_MODEL):
            raise SystemExit(f"--record describes the shipped model; --model {args.model} is another one")
        if args.per_image:
            raise SystemExit("--record writes the docs' table; --per-image rows do not belong there")
        args.json = RECORD
    provenance.check_can_record(args.json, args.allow_dirty or not args.record)
    model = FlaxVQGANModel.from_pretrained(args.model)
    result = evaluate(model, per_image=args.per_image)
    print("\n".join(table(result)))
    if args.json:
        shipped = os.path.realpath(args.model) == os.path.realpath(DEFAULT_MODEL)
        record = {
            **provenance.provenance(__file__, argv, [evaluation.__file__, sample_data.__file__]),
            "model": "vqgan_flax.DEFAULT_MODEL" if shipped else args.model,
            **result,
        }
        provenance.write_record(args.json, record)
        if args.record:
            write_readmes(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
