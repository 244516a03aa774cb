"""The diffusers fixtures (``tests/fixtures/diffusers_vq``, ``tests/fixtures/diffusers_vq_noattn``),
made by diffusers' own ``VQModel`` (the PyPI package, Apache-2.0).

    python scripts/make_diffusers_fixtures.py --out DIR    # both cases into DIR/<case>/
    python scripts/make_diffusers_fixtures.py --check      # remake them, compare with tests/fixtures

What runs is the installed ``diffusers.VQModel`` (its version and a hash of ``vq_model.py`` and
``vae.py`` go to ``made_by.json``); it needs torch. ``diffusers_vq`` attends at one level
(``AttnDownEncoderBlock2D`` / ``AttnUpDecoderBlock2D``) and in the middle; ``diffusers_vq_noattn``
is aMUSEd's kind: no attention anywhere (``mid_block_add_attention=False``) and a multiplier that
is not a power of two (aMUSEd's widths are 128 × [1, 2, 2, 4, 6]). Both have
``lookup_from_codebook=True``, so ``decoded_from_indices`` is diffusers' own token path
(``decode(indices, force_not_quantize=True, shape=...)``, as aMUSEd's pipeline decodes).
Each folder holds the model as ``save_pretrained`` writes it (``vqvae/config.json``,
``vqvae/diffusion_pytorch_model.safetensors``), the inputs and the outputs. ``--check`` remakes
both: weights, inputs and indices bit for bit, floats within ``FLOAT_ATOL``.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SOURCES = ("models/autoencoders/vq_model.py", "models/autoencoders/vae.py")  # inside the diffusers package
FLOAT_ATOL = 1e-5
COMMON = {"layers_per_block": 2, "latent_channels": 8, "num_vq_embeddings": 64, "vq_embed_dim": 4,
          "norm_num_groups": 32, "lookup_from_codebook": True}  # fmt: skip
CASES = {
    "diffusers_vq": (0, {"block_out_channels": [32, 64, 64], "mid_block_add_attention": True,
                         "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D"],
                         "up_block_types": ["UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D"]}),
    "diffusers_vq_noattn": (2, {"block_out_channels": [32, 64, 96], "mid_block_add_attention": False,
                                "down_block_types": ["DownEncoderBlock2D"] * 3,
                                "up_block_types": ["UpDecoderBlock2D"] * 3}),
}  # fmt: skip
INPUTS = {"pixel_values": (2, 3, 32, 32), "pixel_values_nonsquare": (1, 3, 32, 48)}
MIN_GAP = 1e-3  # smallest accepted gap between the nearest and the second-nearest squared distance


def run_input(model, pixels: np.ndarray, suffix: str) -> tuple:
    """One input's arrays of ``expected.npz`` through diffusers' own methods, and the smallest
    nearest-vs-second squared-distance gap (float64)."""
    import torch

    from vqgan_flax.testing.fixtures import case_outputs

    z = model.encode(torch.from_numpy(pixels)).latents
    quant, _, (_, _, flat) = model.quantize(z)
    codes = model.quantize.embedding.weight.double()
    distances = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double(), codes) ** 2
    low = distances.topk(2, dim=1, largest=False).values
    grid = (z.shape[0], z.shape[2], z.shape[3])
    indices = flat.reshape(grid)
    from_indices = model.decode(indices, force_not_quantize=True, shape=(*grid, z.shape[1])).sample
    arrays = case_outputs(suffix, z, quant, indices, model.decode(z).sample, from_indices)
    return arrays, float((low[:, 1] - low[:, 0]).min())


def make_case(case: str, out: pathlib.Path) -> dict:
    import torch
    from diffusers import VQModel

    from vqgan_flax.testing.fixtures import uniform_inputs, write_case
    from vqgan_flax.testing.taming_reference import randomize_

    torch.use_deterministic_algorithms(True)
    seed, layout = CASES[case]
    model = randomize_(VQModel(**COMMON, **layout), seed)
    inputs = dict(zip(INPUTS, uniform_inputs(seed, *INPUTS.values())))
    with torch.no_grad():
        runs = [run_input(model, pixels, name.removeprefix("pixel_values")) for name, pixels in inputs.items()]
    expected = {key: array for arrays, _ in runs for key, array in arrays.items()}
    facts = write_case(out, inputs, expected, [gap for _, gap in runs], MIN_GAP, f"{case}: seed {seed}")
    model.save_pretrained(out / "vqvae", safe_serialization=True)
    return facts


def compare(made: pathlib.Path, committed: pathlib.Path) -> tuple:
    from safetensors.numpy import load_file

    from vqgan_flax.testing.fixtures import compare_case_and_weights

    weights = "vqvae/diffusion_pytorch_model.safetensors"
    problems, largest = compare_case_and_weights(made, committed, FLOAT_ATOL, weights, load_file)
    configs = [json.loads((folder / "vqvae" / "config.json").read_text()) for folder in (made, committed)]
    for config in configs:
        config.pop("_diffusers_version", None)  # made_by.json names the version that ran
    if configs[0] != configs[1]:
        problems.append("vqvae/config.json says something else")
    return problems, largest


def main(argv: list | None = None) -> int:
    import diffusers

    from vqgan_flax.testing.fixtures import make_or_check_case, one_case_arguments, reference_source

    args = one_case_arguments(__doc__.split("\n\n")[0], {}, "the cases diffusers_vq/, diffusers_vq_noattn/", argv)
    package = pathlib.Path(diffusers.__file__).parent
    made_by = {**reference_source(package, [package / s for s in SOURCES]), "diffusers": diffusers.__version__}
    status = 0
    for case in CASES:
        make = lambda folder, case=case: make_case(case, folder)  # noqa: E731
        status |= make_or_check_case(case, made_by, make, compare, args.out, FIXTURES)
    return status


if __name__ == "__main__":
    sys.exit(main())
