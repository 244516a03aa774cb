"""The LlamaGen fixture (``tests/fixtures/llamagen_vq``), made by LlamaGen's own VQ tokenizer.

    python scripts/make_llamagen_fixtures.py --llamagen CHECKOUT --out DIR   # the case into DIR/llamagen_vq/
    python scripts/make_llamagen_fixtures.py --llamagen CHECKOUT --check     # remake it, compare with tests/fixtures

``CHECKOUT`` is a git checkout of FoundationVision/LlamaGen (MIT); only
``tokenizer/tokenizer_image/vq_model.py`` runs (it needs torch alone), imported from its file.
Its commit and a hash of that file are printed and written to ``made_by.json``.

The model is LlamaGen's ``VQModel`` with LlamaGen's own ``Encoder`` and ``Decoder`` at a small
width (``VQModel`` fixes ``ch=128``, too large to commit, so its encoder and decoder are replaced
by the same classes built with ``ch=32``), codes of 8 dimensions, l2 normalisation on as in every
released LlamaGen tokenizer. Its weights are drawn as the taming fixtures' are
(``vqgan_flax.testing.taming_reference.randomize_``); the EMA weights are a second draw. The
checkpoint is shaped like LlamaGen's ``vq_train.py`` writes one: ``model``, ``ema``,
``optimizer``, ``discriminator``, ``optimizer_disc``, ``steps`` and ``args`` (an
``argparse.Namespace``). The outputs are the EMA model's, as LlamaGen's evaluation
(``reconstruction_vq_ddp.py``) loads ``ema`` first. Inputs: a square and a non-square batch.

``--check`` remakes the case in a scratch folder: weights, inputs and indices must come out bit for
bit, float outputs within ``FLOAT_ATOL``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import types

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
MODEL_FILE = pathlib.Path("tokenizer/tokenizer_image/vq_model.py")
CASE = "llamagen_vq"
FLOAT_ATOL = 1e-5
SEED = 2
# LlamaGen's own names for the architecture (ModelArgs and the Encoder/Decoder arguments).
ARCHITECTURE = {"ch": 32, "ch_mult": [1, 2, 2], "z_channels": 16, "codebook_size": 64, "codebook_embed_dim": 8}
INPUTS = {"pixel_values": (2, 3, 32, 32), "pixel_values_nonsquare": (1, 3, 32, 48)}
# The smallest accepted gap between the best and the second-best squared distance (normalised).
MIN_GAP = 1e-3


def import_vq_model(checkout: pathlib.Path) -> types.ModuleType:
    from vqgan_flax.testing.fixtures import import_file

    path = checkout / MODEL_FILE
    if not path.is_file():
        raise SystemExit(f"--llamagen {checkout}: no {MODEL_FILE} there; give a LlamaGen checkout")
    return import_file(path, "llamagen_vq_model")


def build(vq: types.ModuleType, seed: int):
    """LlamaGen's VQModel at the fixture's width, its weights drawn with ``seed``."""
    from vqgan_flax.testing.taming_reference import randomize_

    a = ARCHITECTURE
    args = vq.ModelArgs(codebook_size=a["codebook_size"], codebook_embed_dim=a["codebook_embed_dim"],
                        encoder_ch_mult=a["ch_mult"], decoder_ch_mult=a["ch_mult"],
                        z_channels=a["z_channels"])  # fmt: skip
    model = vq.VQModel(args)
    model.encoder = vq.Encoder(ch=a["ch"], ch_mult=a["ch_mult"], z_channels=a["z_channels"])
    model.decoder = vq.Decoder(ch=a["ch"], ch_mult=a["ch_mult"], z_channels=a["z_channels"])
    return randomize_(model, seed)


def smallest_gap(model, z) -> float:
    """The smallest best-vs-second squared distance gap over every latent vector (normalised)."""
    import torch
    import torch.nn.functional as F

    flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), dim=-1)
    codes = F.normalize(model.quantize.embedding.weight, dim=-1)
    distances = torch.cdist(flat.double(), codes.double()) ** 2
    two = distances.topk(2, dim=1, largest=False).values
    return float((two[:, 1] - two[:, 0]).min())


def make_case(vq: types.ModuleType, out: pathlib.Path) -> dict:
    import torch

    from vqgan_flax.testing.fixtures import case_outputs, uniform_inputs, write_case

    torch.use_deterministic_algorithms(True)
    trained, ema = build(vq, SEED), build(vq, SEED + 1)
    inputs = dict(zip(INPUTS, uniform_inputs(SEED, *INPUTS.values())))
    expected, gaps = {}, []
    with torch.no_grad():
        for name, pixels in inputs.items():
            suffix = name.removeprefix("pixel_values")
            x = torch.from_numpy(pixels)
            z = ema.quant_conv(ema.encoder(x))
            quant, _, (_, _, flat) = ema.quantize(z)
            grid = (x.shape[0], z.shape[2], z.shape[3])
            gaps.append(smallest_gap(ema, z))
            from_indices = ema.decode_code(flat, (*grid[:1], z.shape[1], *grid[1:]))
            expected.update(case_outputs(suffix, z, quant, flat.reshape(grid), ema.decode(quant), from_indices))
    facts = write_case(out, inputs, expected, gaps, MIN_GAP, f"seed {SEED}")
    torch.save(training_checkpoint(trained, ema), out / "checkpoint.pt")
    return facts


def training_checkpoint(trained, ema) -> dict:
    """Shaped like LlamaGen's vq_train.py checkpoints (its discriminator and optimizers reduced to a
    few tensors: they are dropped on conversion)."""
    import torch

    def owned(model):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    adam = {"state": {0: {"step": torch.tensor(12345.0), "exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(4)}},
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "eps": 1e-08, "weight_decay": 0.05,
                              "params": [0]}]}  # fmt: skip
    namespace = argparse.Namespace(vq_model="VQ-16", codebook_size=ARCHITECTURE["codebook_size"], ema=True)
    return {"model": owned(trained), "optimizer": adam,
            "discriminator": {"main.0.weight": 0.02 * torch.ones(8, 3, 4, 4)}, "optimizer_disc": adam,
            "steps": 12345, "args": namespace, "ema": owned(ema)}  # fmt: skip


def compare(made: pathlib.Path, committed: pathlib.Path) -> tuple:
    """The case's arrays, and its ``model`` and ``ema`` weights bit for bit."""
    import torch

    from vqgan_flax.testing.fixtures import compare_case_and_weights

    def weights(path: pathlib.Path) -> dict:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        return {f"{entry} weight {key}": v for entry in ("model", "ema") for key, v in checkpoint[entry].items()}

    return compare_case_and_weights(made, committed, FLOAT_ATOL, "checkpoint.pt", weights)


def main(argv: list | None = None) -> int:
    from vqgan_flax.testing.fixtures import make_or_check_case, one_case_arguments, reference_source

    references = {"llamagen": "a LlamaGen git checkout"}
    args = one_case_arguments(__doc__.split("\n\n")[0], references, "the case llamagen_vq/", argv)
    vq = import_vq_model(args.llamagen)
    made_by = reference_source(args.llamagen, [args.llamagen / MODEL_FILE])
    make = lambda folder: make_case(vq, folder)  # noqa: E731
    return make_or_check_case(CASE, made_by, make, compare, args.out, FIXTURES)


if __name__ == "__main__":
    sys.exit(main())
