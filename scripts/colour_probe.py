"""Does a recipe teach the default model's architecture to code colour? A short-run probe.

    pip install -e ".[eval]" && python scripts/colour_probe.py --json benchmarks/results/colour_probe.json

Each variant trains the default model's architecture (``train_default_model.MODEL``) from the same
seed for ``--steps`` steps on crops of the four colour training photographs with their R, G, B
channels permuted at random (so a crop's colour cannot be guessed from its content and must be
coded), and scores 64 held-out crops drawn the same way every ``--every`` steps:

- ``psnr`` / ``chroma_psnr``: the reconstruction's PSNR and its Cb/Cr planes' PSNR (pooled);
  ``grey_chroma_psnr`` in the header is what an answer with no colour at all scores;
- ``colour_r2``: how much of each 8 x 8 block's mean Cb/Cr a least-squares linear map from the
  latents explains (0: the codes carry no colour);
- ``latent_dims``: the participation ratio of the latents' covariance spectrum, (Σλ)² / Σλ², about
  how many of the ``embed_dim`` latent dimensions are in use.

The variants: the previous default model's recipe (``previous``: lr 1e-3, no colour anchor), the
same without any quantization or codebook loss (``continuous``: the decoder reads the encoder's
output), a lower learning rate (``lr2e-4``), and the colour anchor
(``TrainingConfig.colour_anchor_weight``) at both rates (``anchor-lr2e-4`` is the shipped recipe's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import train_default_model as recipe

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.evaluation import metrics, provenance, sample_data
from vqgan_flax.train import losses
from vqgan_flax.train import trainer as training

# The training crops: the default recipe's augmentations plus random channel permutations and tints.
CROPS = dict(min_scale=0.4, colour_jitter=0.1, tint=0.15, channel_shuffle=True)
# Each variant names every setting it is about, so that a change of the training script's defaults
# (the shipped recipe) changes no variant: "previous" is the recipe of the lr 1e-3 model before the
# anchor, whatever the defaults are now.
PREVIOUS = {"learning_rate": 1e-3, "colour_anchor_weight": 0.0}
VARIANTS = {
    "previous": PREVIOUS,
    "continuous": {**PREVIOUS, "quantize_after": 10**9, "codebook_weight": 0.0},
    "lr2e-4": {**PREVIOUS, "learning_rate": 2e-4},
    "anchor": {**PREVIOUS, "colour_anchor_weight": 1.0},
    "anchor-lr2e-4": {"learning_rate": 2e-4, "colour_anchor_weight": 1.0},
}


def scores(model: FlaxVQGANModel, params, held_out: np.ndarray) -> dict:
    """The held-out crops' PSNR, chroma PSNR, linear colour R² of the latents and their dimensions."""
    encoded = model.module.apply({"params": params}, held_out, method="encode")
    latents = np.asarray(encoded.latents, np.float64)
    decoded = model.module.apply({"params": params}, encoded.quant_states, method="decode")
    reconstruction = np.clip(np.asarray(decoded), -1, 1)
    error = (reconstruction - held_out) / 2  # on [0, 1]
    _, rows, cols, dims = latents.shape
    # Cb, Cr on the pixels' [-1, 1] scale: R² does not depend on the targets' common scale or offset.
    blocks = np.asarray(losses.block_colour(held_out, rows, cols), np.float64)[..., 1:].reshape(-1, 2)
    design = np.concatenate([latents.reshape(-1, dims), np.ones((len(blocks), 1))], axis=1)
    fit, *_ = np.linalg.lstsq(design, blocks, rcond=None)
    residual = blocks - design @ fit
    spectrum = np.linalg.eigvalsh(np.cov(latents.reshape(-1, dims).T))
    return {
        "psnr": float(-10 * np.log10(np.mean(error**2))),
        "chroma_psnr": metrics.chroma_psnr(list(held_out), list(reconstruction), data_range=2.0),
        "colour_r2": float(1 - residual.var(0).sum() / blocks.var(0).sum()),
        "latent_dims": float(spectrum.sum() ** 2 / np.sum(spectrum**2)),
    }


def probe(name: str, overrides: dict, steps: int, every: int, data, held_out) -> list:
    """Train one variant and score it at step 0 and every ``every`` steps."""
    config = recipe.training_config(steps, log_every=every, **overrides)
    trainer = training.VQGANTrainer(FlaxVQGANModel(VQGANConfig(**recipe.MODEL), seed=0), config)
    state = trainer.init_state()
    rows, began = [{"step": 0, **scores(trainer.model, state.params, held_out)}], time.time()
    for step in range(steps):
        state, _ = trainer.train_step(state, trainer.shard(data.batch(step, config.batch_size)))
        if (step + 1) % every == 0 or step + 1 == steps:
            rows.append({"step": step + 1, **scores(trainer.model, state.params, held_out)})
            print(json.dumps({"variant": name, "seconds": round(time.time() - began), **rows[-1]}), flush=True)
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--json", help="write the scores with the commit and versions here (needs a clean checkout)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        raise SystemExit(f"--steps and --every must be positive; got {args.steps} and {args.every}")
    provenance.check_can_record(args.json, False)
    photographs = [sample_data.load_image(name) for name in recipe.COLOUR]
    data = training.ImageCrops(photographs, 64, seed=0, **CROPS)
    held = training.ImageCrops(photographs, 64, seed=99, min_scale=CROPS["min_scale"], channel_shuffle=True)
    held_out = np.concatenate([held.batch(step, 8) for step in range(8)])
    # The answer with no colour at all: each crop's luminance on all three channels.
    grey = np.repeat(held_out @ np.array([[0.299], [0.587], [0.114]], np.float32), 3, axis=-1)
    result = {
        "images": list(recipe.COLOUR),
        "held_out_crops": len(held_out),
        "grey_chroma_psnr": metrics.chroma_psnr(list(held_out), list(grey), data_range=2.0),
        "variants": {name: VARIANTS[name] for name in args.variants},
        "scores": {name: probe(name, VARIANTS[name], args.steps, args.every, data, held_out) for name in args.variants},
    }
    if args.json:
        extra = [recipe.__file__, losses.__file__, training.__file__]
        provenance.write_record(args.json, {**provenance.provenance(__file__, argv, extra), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
