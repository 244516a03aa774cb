"""The IBQ fixture (``tests/fixtures/ibq``), made by SEED-Voken's own IBQ modules.

    python scripts/make_ibq_fixtures.py --seed-voken CHECKOUT --out DIR   # the case into DIR/ibq/
    python scripts/make_ibq_fixtures.py --seed-voken CHECKOUT --check     # remake it, compare with tests/fixtures

``CHECKOUT`` is a git checkout of TencentARC/SEED-Voken (Apache-2.0). What runs is IBQ's own
``Encoder`` and ``Decoder`` (``src/IBQ/modules/diffusionmodules/model.py``), its
``IndexPropagationQuantize`` (``src/IBQ/modules/vqvae/quantize.py``) and its ``LitEma``
(``src/IBQ/modules/ema.py``), put together as ``src/IBQ/models/ibqgan.py``'s ``IBQ`` puts them
(encoder → quant_conv → quantize; post_quant_conv → decoder), without Lightning and the loss,
whose modules the outputs do not use. Needs torch and einops. The checkout's commit and a hash of
the three files are written to ``made_by.json``.

The trained weights and the EMA weights are two draws (``randomize_``, as for the taming
fixtures); the checkpoint is a Lightning-style ``state_dict`` holding both (LitEma's shadows as
``model_ema.<name without dots>``), a few ``loss.*`` tensors and the optimizer states. The outputs
are the EMA model's, as IBQ's evaluation runs in ``ema_scope``. IBQ's ``decode_code`` calls a
method its quantizer lacks (``embed_code``), so ``decoded_from_indices`` is decode of
``quantize.get_codebook_entry``. ``--check`` remakes the case: weights, inputs and indices bit
for bit, float outputs within ``FLOAT_ATOL``.
"""

from __future__ import annotations

import pathlib
import sys
from collections import OrderedDict

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SOURCES = ("src/IBQ/modules/diffusionmodules/model.py", "src/IBQ/modules/vqvae/quantize.py", "src/IBQ/modules/ema.py")
CASE = "ibq"
FLOAT_ATOL = 1e-5
SEED = 0
# IBQ's ddconfig (taming's fields) and quantizer sizes, small enough to commit.
DDCONFIG = {"double_z": False, "z_channels": 16, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 2, 2], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0}  # fmt: skip
N_EMBED, EMBED_DIM = 64, 8
INPUTS = {"pixel_values": (2, 3, 32, 32), "pixel_values_nonsquare": (1, 3, 32, 48)}
MIN_GAP = 1e-3  # smallest accepted best-vs-second logit gap


def import_ibq(checkout: pathlib.Path):
    """IBQ's Encoder, Decoder, IndexPropagationQuantize and LitEma from the checkout."""
    for source in SOURCES:
        if not (checkout / source).is_file():
            raise SystemExit(f"--seed-voken {checkout}: no {source} there; give a SEED-Voken checkout")
    from vqgan_flax.testing.fixtures import import_file

    # Each file imports torch, numpy or einops only: loaded from the file, no package of the checkout.
    model, quantize, ema = (import_file(checkout / source, f"ibq_{pathlib.Path(source).stem}") for source in SOURCES)
    Encoder, Decoder = model.Encoder, model.Decoder
    IndexPropagationQuantize, LitEma = quantize.IndexPropagationQuantize, ema.LitEma
    return Encoder, Decoder, IndexPropagationQuantize, LitEma


def build(modules, seed: int):
    import torch

    from vqgan_flax.testing.taming_reference import randomize_

    encoder, decoder, quantizer, _ = modules
    model = torch.nn.Module()
    model.encoder, model.decoder = encoder(**DDCONFIG), decoder(**DDCONFIG)
    model.quantize = quantizer(N_EMBED, EMBED_DIM, beta=0.25, use_entropy_loss=False)
    model.quant_conv = torch.nn.Conv2d(DDCONFIG["z_channels"], EMBED_DIM, 1)
    model.post_quant_conv = torch.nn.Conv2d(EMBED_DIM, DDCONFIG["z_channels"], 1)
    return randomize_(model, seed)


def make_case(modules, out: pathlib.Path) -> dict:
    import torch

    from vqgan_flax.testing.fixtures import case_outputs, uniform_inputs, write_case

    torch.use_deterministic_algorithms(True)
    trained, ema = build(modules, SEED), build(modules, SEED + 1)
    trained.model_ema = modules[3](ema)  # LitEma: shadows of the EMA draw, under IBQ's names
    inputs = dict(zip(INPUTS, uniform_inputs(SEED, *INPUTS.values())))
    expected, gaps = {}, []
    with torch.no_grad():
        for name, pixels in inputs.items():
            suffix = name.removeprefix("pixel_values")
            z = ema.quant_conv(ema.encoder(torch.from_numpy(pixels)))
            quant, _, (_, _, flat) = ema.quantize(z)
            logits = torch.einsum("bdhw,nd->bhwn", z, ema.quantize.embedding.weight).reshape(-1, N_EMBED)
            top = logits.double().topk(2, dim=1).values
            gaps.append(float((top[:, 0] - top[:, 1]).min()))
            grid = (z.shape[0], z.shape[2], z.shape[3])
            rows = ema.quantize.get_codebook_entry(flat.reshape(-1), (*grid, EMBED_DIM))
            decode = lambda q: ema.decoder(ema.post_quant_conv(q))  # noqa: E731
            expected.update(case_outputs(suffix, z, quant, flat.reshape(grid), decode(quant), decode(rows)))
    facts = write_case(out, inputs, expected, gaps, MIN_GAP, f"seed {SEED} (logit gaps)")
    torch.save(lightning_checkpoint(trained), out / "last.ckpt")
    return facts


def lightning_checkpoint(model) -> dict:
    """Shaped like IBQ's Lightning checkpoints: the model's weights, LitEma's buffers and loss
    entries under ``state_dict``; optimizer states beside."""
    import torch

    state = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    state["loss.discriminator.main.0.weight"] = 0.02 * torch.ones(8, 3, 4, 4)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.ones(1, 64, 1, 1)
    adam = {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.5, 0.9), "params": [0]}]}
    return {"epoch": 3, "global_step": 12345, "pytorch-lightning_version": "2.4.0", "state_dict": state,
            "optimizer_states": [adam, adam], "lr_schedulers": []}  # fmt: skip


def compare(made: pathlib.Path, committed: pathlib.Path) -> tuple:
    import torch

    from vqgan_flax.testing.fixtures import compare_case_and_weights

    weights = lambda path: torch.load(path, map_location="cpu", weights_only=False)["state_dict"]  # noqa: E731
    return compare_case_and_weights(made, committed, FLOAT_ATOL, "last.ckpt", weights)


def main(argv: list | None = None) -> int:
    from vqgan_flax.testing.fixtures import make_or_check_case, one_case_arguments, reference_source

    references = {"seed-voken": "a SEED-Voken git checkout"}
    args = one_case_arguments(__doc__.split("\n\n")[0], references, "the case ibq/", argv)
    modules = import_ibq(args.seed_voken)
    made_by = reference_source(args.seed_voken, [args.seed_voken / s for s in SOURCES])
    make = lambda folder: make_case(modules, folder)  # noqa: E731
    return make_or_check_case(CASE, made_by, make, compare, args.out, FIXTURES)


if __name__ == "__main__":
    sys.exit(main())
