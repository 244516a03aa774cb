"""Every member of the family through the command line (issue 34): encode gives the model's own
tokens, decode, reconstruct in bfloat16 and info run, with the CPU kernels on as the suite runs
them; the models are the converted reference fixtures (IBQ, latent-diffusion, diffusers) and
fresh FSQ / LFQ models (LlamaGen's is in test_families.py)."""

from __future__ import annotations

import pytest
from utils import FIXTURES, assert_cli_runs

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.cli.convert import main as convert_main

CONVERTED = {
    "ibq": (["ibq/last.ckpt", "--from", "ibq"], "quantizer:           ibq, codebook 64 x 8"),
    "ldm": (["ldm_vq_noattn/model.ckpt", "--from", "ldm"], "quantizer:           vq, codebook 64 x 4"),
    "diffusers": (["diffusers_vq/vqvae", "--from", "diffusers"], "quantizer:           vq, codebook 64 x 4"),
}
FRESH = {
    "fsq": ({"quantizer": "fsq", "fsq_levels": [5, 4, 3]}, "quantizer:           fsq, codebook 60 x 3"),
    "lfq": ({"quantizer": "lfq", "embed_dim": 6}, "quantizer:           lfq, codebook 64 x 6"),
}


@pytest.mark.parametrize("family", sorted(CONVERTED) + sorted(FRESH))
def test_the_command_line_runs_every_family(family, tmp_path, capsys):
    if family in CONVERTED:
        argv, line = CONVERTED[family]
        out = tmp_path / "converted"
        assert convert_main([str(FIXTURES / argv[0]), *argv[1:], "--resolution", "32", "--output", str(out)]) == 0
        model = FlaxVQGANModel.from_pretrained(out)
    else:
        fields, line = FRESH[family]
        model = FlaxVQGANModel(
            VQGANConfig.from_preset("tiny", **{"embed_dim": None, "n_embed": None, **fields}), seed=0
        )
    capsys.readouterr()
    assert_cli_runs(model, tmp_path, capsys, line)
