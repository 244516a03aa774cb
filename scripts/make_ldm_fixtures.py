"""The latent-diffusion fixtures (``tests/fixtures/ldm_vq``, ``tests/fixtures/ldm_vq_noattn``),
made by latent-diffusion's own Encoder and Decoder with taming's quantizer.

    python scripts/make_ldm_fixtures.py --latent-diffusion CHECKOUT --taming PATH --out DIR
    python scripts/make_ldm_fixtures.py --latent-diffusion CHECKOUT --taming PATH --check

``CHECKOUT`` is a git checkout of CompVis/latent-diffusion (MIT); ``PATH`` the ``taming`` package
(the legacy stack's taming-transformers-rom1504, as for ``make_taming_fixtures.py``). What runs is
``ldm/modules/diffusionmodules/model.py``'s ``Encoder`` and ``Decoder`` (imported as the package
``ldm`` of the checkout: they import ``ldm.util`` and ``ldm.modules.attention``) and taming's
``VectorQuantizer2`` (``taming/modules/vqvae/quantize.py``), put together as
``ldm/models/autoencoder.py``'s ``VQModel`` puts them (β = 0.25, no remap), without Lightning
and the loss. Needs torch and einops. The checkout's commit and a hash of the files that ran are
written to ``made_by.json``.

Two cases: ``ldm_vq`` attends at one level and in the middle (vq-f8/f16's kind); ``ldm_vq_noattn``
has ``attn_type: none``, which makes every attention block an identity, the middle ones too
(vq-f4-noattn). Each folder holds a Lightning-style ``model.ckpt`` (``state_dict`` with a few
``loss.*`` entries, as LDM's checkpoints have; its ``VQModel`` cannot keep EMA weights: it names
``LitEma`` without importing it), LDM's ``config.yaml`` for it, the inputs and the outputs.
``--check`` remakes both: weights, inputs and indices bit for bit, floats within ``FLOAT_ATOL``.
"""

from __future__ import annotations

import pathlib
import sys
from collections import OrderedDict

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
MODEL = "ldm/modules/diffusionmodules/model.py"
QUANTIZE = "modules/vqvae/quantize.py"  # inside the taming package
FLOAT_ATOL = 1e-5
N_EMBED, EMBED_DIM = 64, 4  # LDM's codes are 3- to 8-dimensional
# LDM's ddconfig fields, small enough to commit; the second case adds attn_type: none.
DDCONFIG = {"double_z": False, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 2, 2], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0}  # fmt: skip
CASES = {"ldm_vq": (0, {}), "ldm_vq_noattn": (3, {"attn_type": "none", "attn_resolutions": []})}
INPUTS = {"pixel_values": (2, 3, 32, 32), "pixel_values_nonsquare": (1, 3, 32, 48)}
MIN_GAP = 1e-3  # smallest accepted gap between the nearest and the second-nearest squared distance


def import_reference(checkout: pathlib.Path, taming: pathlib.Path):
    """latent-diffusion's Encoder and Decoder, and taming's VectorQuantizer2."""
    from vqgan_flax.testing.fixtures import import_checkout_module, import_file

    if not (checkout / MODEL).is_file():
        raise SystemExit(f"--latent-diffusion {checkout}: no {MODEL} there; give a latent-diffusion checkout")
    if not (taming / QUANTIZE).is_file():
        raise SystemExit(f"--taming {taming}: no {QUANTIZE} there; give the taming package folder")
    model = import_checkout_module(checkout, "ldm.modules.diffusionmodules.model")
    quantize = import_file(taming / QUANTIZE, "taming_quantize")  # imports torch, numpy, einops only
    return model.Encoder, model.Decoder, quantize.VectorQuantizer2


def build(modules, ddconfig: dict, seed: int):
    import torch

    from vqgan_flax.testing.taming_reference import randomize_

    encoder, decoder, quantizer = modules
    model = torch.nn.Module()
    model.encoder, model.decoder = encoder(**ddconfig), decoder(**ddconfig)
    model.quantize = quantizer(N_EMBED, EMBED_DIM, beta=0.25, remap=None, sane_index_shape=False)
    model.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], EMBED_DIM, 1)
    model.post_quant_conv = torch.nn.Conv2d(EMBED_DIM, ddconfig["z_channels"], 1)
    return randomize_(model, seed)


def ldm_yaml(ddconfig: dict) -> str:
    """LDM's config.yaml for the case, in the layout of models/first_stage_models/*/config.yaml."""
    import yaml

    loss = {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
            "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 1}}  # fmt: skip
    params = {"embed_dim": EMBED_DIM, "n_embed": N_EMBED, "monitor": "val/rec_loss", "ddconfig": ddconfig,
              "lossconfig": loss}  # fmt: skip
    document = {"model": {"base_learning_rate": 4.5e-06, "target": "ldm.models.autoencoder.VQModel", "params": params}}
    return yaml.safe_dump(document, sort_keys=False)


def run_input(model, pixels: np.ndarray, suffix: str) -> tuple:
    """One input's arrays of ``expected.npz`` and its smallest gap between the nearest and the
    second-nearest squared distance (float64)."""
    import torch

    from vqgan_flax.testing.fixtures import case_outputs

    z = model.quant_conv(model.encoder(torch.from_numpy(pixels)))
    quant, _, (_, _, flat) = model.quantize(z)
    distances = torch.cdist(
        z.permute(0, 2, 3, 1).reshape(-1, EMBED_DIM).double(), model.quantize.embedding.weight.double()
    )
    low = (distances**2).topk(2, dim=1, largest=False).values
    grid = (z.shape[0], z.shape[2], z.shape[3])
    rows = model.quantize.get_codebook_entry(flat.reshape(-1), (*grid, EMBED_DIM))
    decode = lambda q: model.decoder(model.post_quant_conv(q))  # noqa: E731
    arrays = case_outputs(suffix, z, quant, flat.reshape(grid), decode(quant), decode(rows))
    return arrays, float((low[:, 1] - low[:, 0]).min())


def make_case(modules, case: str, out: pathlib.Path) -> dict:
    import torch

    from vqgan_flax.testing.fixtures import uniform_inputs, write_case

    torch.use_deterministic_algorithms(True)
    seed, changes = CASES[case]
    ddconfig = {**DDCONFIG, **changes}
    model = build(modules, ddconfig, seed)
    inputs = dict(zip(INPUTS, uniform_inputs(seed, *INPUTS.values())))
    with torch.no_grad():
        runs = [run_input(model, pixels, name.removeprefix("pixel_values")) for name, pixels in inputs.items()]
    expected = {key: array for arrays, _ in runs for key, array in arrays.items()}
    facts = write_case(out, inputs, expected, [gap for _, gap in runs], MIN_GAP, f"{case}: seed {seed} (distance gaps)")
    (out / "config.yaml").write_text(ldm_yaml(ddconfig))
    state = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    state["loss.discriminator.main.0.weight"] = 0.02 * torch.ones(8, 3, 4, 4)
    state["loss.logvar"] = torch.zeros(())
    torch.save({"epoch": 7, "global_step": 4321, "state_dict": state}, out / "model.ckpt")
    return facts


def compare(made: pathlib.Path, committed: pathlib.Path) -> tuple:
    import torch

    from vqgan_flax.testing.fixtures import compare_case_and_weights

    weights = lambda path: torch.load(path, map_location="cpu", weights_only=True)["state_dict"]  # noqa: E731
    problems, largest = compare_case_and_weights(made, committed, FLOAT_ATOL, "model.ckpt", weights)
    if (made / "config.yaml").read_text() != (committed / "config.yaml").read_text():
        problems.append("config.yaml differs")
    return problems, largest


def main(argv: list | None = None) -> int:
    from vqgan_flax.testing.fixtures import make_or_check_case, one_case_arguments, reference_source

    references = {"latent-diffusion": "a latent-diffusion git checkout", "taming": "the taming package folder"}
    args = one_case_arguments(__doc__.split("\n\n")[0], references, "the cases ldm_vq/, ldm_vq_noattn/", argv)
    checkout, taming = args.latent_diffusion.resolve(), args.taming.resolve()
    modules = import_reference(checkout, taming)
    made_by = reference_source(checkout, [checkout / MODEL])
    made_by["taming"] = reference_source(taming, [taming / QUANTIZE])
    status = 0
    for case in CASES:
        make = lambda folder, case=case: make_case(modules, case, folder)  # noqa: E731
        status |= make_or_check_case(case, made_by, make, compare, args.out, FIXTURES)
    return status


if __name__ == "__main__":
    sys.exit(main())
