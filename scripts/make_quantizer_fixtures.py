"""The FSQ / LFQ fixture (``tests/fixtures/fsq_lfq``), made by vector-quantize-pytorch's own ``FSQ``
and ``LFQ`` (the PyPI package, MIT).

    python scripts/make_quantizer_fixtures.py --out DIR    # the case into DIR/fsq_lfq/
    python scripts/make_quantizer_fixtures.py --check      # remake it, compare with tests/fixtures

What runs is the installed package (its version and a hash of its two files go to
``made_by.json``; the legacy stack pins the version). Inputs: latents (NHWC, two shapes, one of
them non-square) scaled to spread over the levels. Outputs per quantizer setting: the
quantized latents and indices in evaluation, the codes rebuilt from the indices
(``indices_to_codes``), and for LFQ in training its auxiliary loss (entropy and commitment
terms) and that loss's gradient with respect to the latents. ``--check`` remakes it: inputs and
indices bit for bit, floats within ``FLOAT_ATOL``.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SOURCES = ("finite_scalar_quantization.py", "lookup_free_quantization.py")
CASE = "fsq_lfq"
FLOAT_ATOL = 1e-6
SEED = 0
SHAPES = {"": (2, 4, 4), "_nonsquare": (1, 3, 5)}  # (batch, h, w); the channels are the setting's
FSQ_LEVELS = {"fsq_a": [8, 5, 5, 5], "fsq_b": [7, 6, 4, 3, 3]}
# LFQ settings: bits, entropy weight, commitment weight, diversity gamma, code scale.
LFQ = {"lfq_a": (6, 0.1, 0.25, 1.0, 1.0), "lfq_b": (4, 0.5, 0.0, 0.5, 0.5)}


def make_case(out: pathlib.Path) -> dict:
    import torch
    from vector_quantize_pytorch import FSQ
    from vector_quantize_pytorch import LFQ as TorchLFQ

    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(SEED)
    inputs, expected = {}, {}
    channels = {**{k: len(v) for k, v in FSQ_LEVELS.items()}, **{k: v[0] for k, v in LFQ.items()}}
    for name, dim in channels.items():
        for suffix, (b, h, w) in SHAPES.items():
            inputs[f"{name}_latents{suffix}"] = (1.5 * rng.normal(size=(b, h, w, dim))).astype(np.float32)
    for name, levels in FSQ_LEVELS.items():
        fsq = FSQ(levels).eval()
        for suffix in SHAPES:
            z = torch.from_numpy(inputs[f"{name}_latents{suffix}"]).permute(0, 3, 1, 2)
            quantized, indices = fsq(z)
            expected[f"{name}_quantized{suffix}"] = quantized.permute(0, 2, 3, 1).numpy()
            expected[f"{name}_indices{suffix}"] = indices.numpy().astype(np.int64)
            expected[f"{name}_codes{suffix}"] = fsq.indices_to_codes(indices).permute(0, 2, 3, 1).numpy()
    for name, (bits, entropy, commitment, gamma, scale) in LFQ.items():
        lfq = TorchLFQ(dim=bits, codebook_size=2**bits, entropy_loss_weight=entropy, commitment_loss_weight=commitment,
                       diversity_gamma=gamma, codebook_scale=scale)  # fmt: skip
        for suffix in SHAPES:
            z = torch.from_numpy(inputs[f"{name}_latents{suffix}"]).permute(0, 3, 1, 2)
            with torch.no_grad():
                quantized, indices, _ = lfq.eval()(z)
            expected[f"{name}_quantized{suffix}"] = quantized.permute(0, 2, 3, 1).numpy()
            expected[f"{name}_indices{suffix}"] = indices.numpy().astype(np.int64)
            expected[f"{name}_codes{suffix}"] = lfq.indices_to_codes(indices).permute(0, 2, 3, 1).detach().numpy()
            trained = z.clone().requires_grad_(True)
            _, _, aux = lfq.train()(trained)
            aux.backward()
            expected[f"{name}_aux_loss{suffix}"] = np.float32(aux.item())
            expected[f"{name}_aux_loss_grad{suffix}"] = trained.grad.permute(0, 2, 3, 1).numpy()
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "inputs.npz", **inputs)
    np.savez(out / "expected.npz", **expected)
    return {"arrays": len(expected)}


def compare(made: pathlib.Path, committed: pathlib.Path) -> tuple:
    from vqgan_flax.testing.fixtures import compare_case_arrays

    return compare_case_arrays(made, committed, FLOAT_ATOL)


def main(argv: list | None = None) -> int:
    import vector_quantize_pytorch

    from vqgan_flax.testing.fixtures import make_or_check_case, one_case_arguments, reference_source

    args = one_case_arguments(__doc__.split("\n\n")[0], {}, "the case fsq_lfq/", argv)
    package = pathlib.Path(vector_quantize_pytorch.__file__).parent
    from importlib.metadata import version

    made_by = {**reference_source(package, [package / s for s in SOURCES]),
               "vector-quantize-pytorch": version("vector-quantize-pytorch")}  # fmt: skip
    return make_or_check_case(CASE, made_by, make_case, compare, args.out, FIXTURES)


if __name__ == "__main__":
    sys.exit(main())
