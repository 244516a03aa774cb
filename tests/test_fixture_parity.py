"""Parity with outputs recorded from the real taming-transformers and vqgan-jax code (tests/fixtures)."""

from __future__ import annotations

import numpy as np
import pytest
from utils import FIXTURES, TAMING_CASES, assert_close, nchw_to_nhwc, require_torch_reference

from vqgan_flax import FlaxVQGANModel
from vqgan_flax.cli.convert import main as convert_main


@pytest.fixture(scope="module", params=TAMING_CASES)
def converted_taming(request, tmp_path_factory):
    """Each taming case converted with the command-line converter (safetensors and msgpack)."""
    case = FIXTURES / request.param
    models = {}
    for fmt in ("safetensors", "msgpack"):
        out = tmp_path_factory.mktemp(f"{request.param}_{fmt}")
        argv = ["--checkpoint", str(case / "last.ckpt"), "--config", str(case / "model.yaml")]
        assert convert_main([*argv, "--output", str(out), "--format", fmt]) == 0
        expected_file = "model.safetensors" if fmt == "safetensors" else "flax_model.msgpack"
        assert (out / expected_file).is_file()
        models[fmt] = FlaxVQGANModel.from_pretrained(out)
    return request.param, models


@pytest.mark.parametrize("fmt", ["safetensors", "msgpack"])
def test_taming_fixture_parity(converted_taming, fmt):
    case, models = converted_taming
    model = models[fmt]
    inputs = nchw_to_nhwc(np.load(FIXTURES / case / "inputs.npz")["pixel_values"])
    expected = np.load(FIXTURES / case / "expected.npz")
    batch = inputs.shape[0]

    encoded = model.encode(inputs)
    assert encoded.indices.dtype == np.int32
    assert encoded.indices.shape == (batch, expected["indices"][0].size)
    np.testing.assert_array_equal(encoded.indices, expected["indices"].reshape(batch, -1))
    assert_close(encoded.latents, nchw_to_nhwc(expected["z"]), "z")
    assert_close(encoded.quant_states, nchw_to_nhwc(expected["quant"]), "quant")
    if "logits" in expected:
        assert_close(encoded.logits, nchw_to_nhwc(expected["logits"]), "logits")
    assert_close(model.decode(encoded.quant_states), nchw_to_nhwc(expected["reconstruction"]), "reconstruction")
    # decode_code from taming's own (B, h, w) indices and from our flattened ones.
    decoded = nchw_to_nhwc(expected["decoded_from_indices"])
    assert_close(model.decode_code(expected["indices"]), decoded, "decode_code (B, h, w)")
    grid = expected["indices"].shape[1:]
    assert_close(model.decode_code(encoded.indices, latent_shape=grid), decoded, "decode_code (B, N)")
    reconstruction, indices = model(inputs)
    np.testing.assert_array_equal(indices, encoded.indices)
    assert_close(reconstruction, nchw_to_nhwc(expected["reconstruction"]), "__call__")


@pytest.mark.parametrize("case", ["vqganjax", "vqganjax_old_layout"])
def test_vqganjax_checkpoint_parity(case):
    folder = FIXTURES / case / "checkpoint"
    if case.endswith("old_layout"):
        with pytest.warns(UserWarning, match=r"reshaped 66 GroupNorm .*\(1, 1, 1, C\)") as record:
            model = FlaxVQGANModel.from_pretrained(folder)
        assert len([w for w in record if "GroupNorm" in str(w.message)]) == 1
    else:
        model = FlaxVQGANModel.from_pretrained(folder)
    inputs = np.load(FIXTURES / case / "inputs.npz")["pixel_values"]
    expected = np.load(FIXTURES / case / "expected.npz")

    quant_states, indices = model.encode(inputs)
    np.testing.assert_array_equal(indices, expected["indices"])
    assert_close(model.encode(inputs).latents, expected["z"], "z")
    assert_close(quant_states, expected["quant_states"], "quant_states")
    assert_close(model.decode(quant_states), expected["reconstruction"], "reconstruction")
    # vqgan-jax's own convention: (B, N) with square N, no latent_shape.
    assert_close(model.decode_code(expected["indices"]), expected["decoded"], "decode_code")


def test_vqganjax_config_loads_unchanged():
    model = FlaxVQGANModel.from_pretrained(FIXTURES / "vqganjax" / "checkpoint")
    assert model.config.num_resolutions == 3
    assert model.config.ch_mult == [1, 2, 2]
    assert model.config.quantizer == "vq"


@pytest.mark.torch
def test_taming_fixtures_come_from_the_committed_generator():
    """scripts/make_taming_fixtures.py --check remakes every taming case with taming's own VQModel /
    GumbelVQ: weights, inputs and indices bit for bit, the float outputs to float32 rounding."""
    import pathlib
    import subprocess
    import sys

    require_torch_reference("pytorch_lightning")  # taming's VQModel subclasses its LightningModule
    import taming

    root = FIXTURES.parent.parent
    package = pathlib.Path(taming.__file__).parent
    result = subprocess.run([sys.executable, "scripts/make_taming_fixtures.py", "--taming", str(package), "--check"],
                            cwd=root, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("taming_")]
    assert [line.split(":")[0] for line in lines] == list(TAMING_CASES)
    assert all("weights, inputs and indices bit for bit" in line for line in lines), lines
