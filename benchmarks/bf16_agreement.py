"""How often bfloat16 encoding picks the same code as float32, on natural photographs.

    python benchmarks/bf16_agreement.py [--json agreement.json]

Encodes the bundled photographs (examples/images) with the shipped default model, and with a
randomly initialised f16-1024 model, once in float32 and once in bfloat16; prints the share of
tokens whose index agrees. bf16 rounding only matters where two codes are nearly equidistant,
so the trained model (well separated codes) is the number that describes real use.
"""

from __future__ import annotations

import argparse
import os

import jax.numpy as jnp
import numpy as np

from vqgan_flax import DEFAULT_MODEL, FlaxVQGANModel, VQGANConfig
from vqgan_flax.data.image_io import list_images, load_image
from vqgan_flax.evaluation import provenance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def index_agreement(model_f32: FlaxVQGANModel, model_bf16: FlaxVQGANModel, pixels: np.ndarray) -> float:
    """Share of tokens whose bfloat16 index equals the float32 one."""
    ref = np.asarray(model_f32.encode(pixels).indices)
    low = np.asarray(model_bf16.encode(pixels, params=model_f32.params).indices)
    return float(np.mean(ref == low))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=os.path.join(ROOT, "examples", "images"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--json", help="write the record here (needs a clean checkout)")
    parser.add_argument("--allow-dirty", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    provenance.check_can_record(args.json, args.allow_dirty)
    record = {**provenance.provenance(__file__), "benchmark": "bf16_agreement", "size": args.size}
    pixels = np.stack([load_image(path, args.size) for path in list_images([args.images])])

    rows = []
    trained = FlaxVQGANModel.from_pretrained(DEFAULT_MODEL)
    trained_bf16 = FlaxVQGANModel(trained.config, dtype=jnp.bfloat16, _do_init=False)
    candidates = [(f"default model (trained, f{trained.config.downsampling_factor})", trained, trained_bf16)]
    random_config = VQGANConfig.from_preset("f16-1024")
    candidates.append(
        ("f16-1024 (random weights)", FlaxVQGANModel(random_config, seed=0),
         FlaxVQGANModel(random_config, dtype=jnp.bfloat16, _do_init=False))
    )  # fmt: skip
    for name, model_f32, model_bf16 in candidates:
        share = index_agreement(model_f32, model_bf16, pixels)
        tokens = int(np.prod(model_f32.config.latent_shape(args.size, args.size))) * len(pixels)
        rows.append({"model": name, "images": len(pixels), "tokens": tokens, "agreement": share})
        print(f"{name}: {100 * share:.2f}% of {tokens} tokens agree (bf16 vs float32)")
    if args.json:
        provenance.write_record(args.json, {**record, "rows": rows})


if __name__ == "__main__":
    main()
