"""Every member of the family through the command line, LWM's ``VQGAN`` wrapper and the
many-device helpers (issue 34): encode gives the model's own tokens, decode, reconstruct in
bfloat16 and info run, with the CPU kernels on as the suite runs them; on 8 devices the sharded
and pmap paths give the single-device tokens. The models are the converted reference fixtures
(IBQ, latent-diffusion, diffusers) and fresh FSQ / LFQ models (LlamaGen's CLI run is in
test_families.py). The paths themselves run on both stacks elsewhere; the repeats per family run
on the current stack only (one_stack: CI time), the conversions' parity on both."""

from __future__ import annotations

import numpy as np
import pytest
from utils import FIXTURES, assert_cli_runs, assert_close

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


FAMILIES = sorted(CONVERTED) + sorted(FRESH)


def _model(family: str, tmp_path) -> FlaxVQGANModel:
    if family in CONVERTED:
        argv, _ = CONVERTED[family]
        out = tmp_path / "converted"
        assert convert_main([str(FIXTURES / argv[0]), *argv[1:], "--resolution", "32", "--output", str(out)]) == 0
        return FlaxVQGANModel.from_pretrained(out)
    config = VQGANConfig.from_preset("tiny", **{"embed_dim": None, "n_embed": None, **FRESH[family][0]})
    return FlaxVQGANModel(config, seed=0)


@pytest.mark.one_stack
@pytest.mark.parametrize("family", FAMILIES)
def test_the_command_line_runs_every_family(family, tmp_path, capsys):
    model = _model(family, tmp_path)
    capsys.readouterr()
    assert_cli_runs(model, tmp_path, capsys, {**CONVERTED, **FRESH}[family][1])


@pytest.mark.one_stack
@pytest.mark.parametrize("family", FAMILIES)
def test_the_wrapper_and_the_many_device_helpers_give_the_single_device_tokens(family, tmp_path):
    """LWM's VQGAN wrapper (replicated over the 8 devices) and the sharded / pmap helpers: the
    tokens of one device, the same decode within 1e-5."""
    import jax

    from vqgan_flax.data import parallel as P
    from vqgan_flax.vqgan import VQGAN

    assert jax.device_count() == 8
    model = _model(family, tmp_path)
    pixels = np.random.default_rng(4).uniform(-1, 1, (5, 32, 48, 3)).astype(np.float32)
    single = model.encode(pixels)
    grid = (32 // model.config.downsampling_factor, 48 // model.config.downsampling_factor)
    mesh = P.make_mesh()
    sharded = P.sharded_encode(model, pixels, params=P.replicate_on_mesh(model.params, mesh), mesh=mesh)
    np.testing.assert_array_equal(sharded.indices, single.indices)
    pmapped = P.pmap_encode(model, pixels, P.replicate_params(model.params))
    np.testing.assert_array_equal(pmapped.indices, single.indices)
    decoded = model.decode_code(single.indices, latent_shape=grid)
    on_devices = P.sharded_decode_code(model, np.asarray(single.indices).reshape(5, *grid))
    assert_close(on_devices, decoded, "sharded decode_code", 1e-5, 1e-5)
    model.save_pretrained(tmp_path / "folder")
    vqgan = VQGAN(str(tmp_path / "folder"), replicate=True)
    _, indices = vqgan.encode(pixels)
    np.testing.assert_array_equal(indices, np.asarray(single.indices).reshape(5, *grid))
    assert_close(vqgan.decode(indices), np.clip(decoded, -1, 1), "wrapper decode", 1e-5, 1e-5)
