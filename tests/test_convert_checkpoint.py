"""The taming → Flax converter and its reverse: command line, errors, safety, torch-free use."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from utils import FIXTURES, assert_close, nchw_to_nhwc

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.cli.convert import main
from vqgan_flax.conversion import (
    ConversionError,
    expected_param_shapes,
    export_to_taming,
    flax_key_to_taming,
    flax_to_taming,
    load_state_dict,
    taming_key_to_flax,
    taming_to_flax,
)

TAMING_VQ = FIXTURES / "taming_vq"
ROOT = FIXTURES.parent.parent


def test_key_mapping_both_ways():
    config = VQGANConfig.from_taming_yaml(TAMING_VQ / "model.yaml")
    expected = expected_param_shapes(config)
    cases = {
        "encoder.down.1.attn.0.q.weight": ("encoder", "down_1", "attn_0", "q", "kernel"),
        "encoder.down.0.block.0.norm1.weight": ("encoder", "down_0", "block_0", "norm1", "scale"),
        "decoder.up.2.upsample.conv.bias": ("decoder", "up_2", "upsample", "conv", "bias"),
        "encoder.mid.block_1.conv1.weight": ("encoder", "mid", "block_1", "conv1", "kernel"),
        "decoder.mid.attn_1.proj_out.weight": ("decoder", "mid", "attn_1", "proj_out", "kernel"),
        "quantize.embedding.weight": ("quantize", "embedding", "embedding"),
        "quant_conv.weight": ("quant_conv", "kernel"),
    }
    for taming_key, path in cases.items():
        assert taming_key_to_flax(taming_key, expected) == path
        assert flax_key_to_taming(path) == taming_key
    assert taming_key_to_flax("encoder.down.9.block.0.conv1.weight", expected) is None


def test_every_fixture_key_is_consumed():
    state = load_state_dict(TAMING_VQ / "last.ckpt")
    config = VQGANConfig.from_taming_yaml(TAMING_VQ / "model.yaml")
    params, dropped = taming_to_flax(state, config)
    assert dropped == 6  # loss.logvar, LPIPS scaling/lin, two discriminator tensors
    assert len(flax_to_taming(params)) == len(state) - 6


def test_safetensors_input_and_preset_free_flags(tmp_path):
    """The fixture's .safetensors state dict with the architecture given by flags only."""
    flags = [
        "--ch",
        "32",
        "--ch-mult",
        "1,2,2",
        "--num-res-blocks",
        "1",
        "--attn-resolutions",
        "16",
        "--z-channels",
        "16",
        "--embed-dim",
        "8",
        "--n-embed",
        "64",
        "--resolution",
        "32",
    ]
    assert main(["--checkpoint", str(TAMING_VQ / "model.safetensors"), *flags, "--output", str(tmp_path)]) == 0
    model = FlaxVQGANModel.from_pretrained(tmp_path)
    inputs = nchw_to_nhwc(np.load(TAMING_VQ / "inputs.npz")["pixel_values"])
    expected = np.load(TAMING_VQ / "expected.npz")
    np.testing.assert_array_equal(model.encode(inputs).indices, expected["indices"].reshape(2, -1))


@pytest.mark.torch
def test_preset_with_pt_state_dict(tmp_path):
    import torch

    from vqgan_flax.testing.taming_reference import TamingVQGAN, randomize_, to_nchw_tensor, to_nhwc

    config = VQGANConfig.from_preset("tiny")
    reference = randomize_(TamingVQGAN(config), seed=5)
    torch.save(reference.state_dict(), tmp_path / "tiny.pt")
    assert main(["--checkpoint", str(tmp_path / "tiny.pt"), "--preset", "tiny", "--output", str(tmp_path / "out")]) == 0
    model = FlaxVQGANModel.from_pretrained(tmp_path / "out")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference.decode(reference.quantize(reference.quant_conv(reference.encoder(to_nchw_tensor(x))))[0])
    assert_close(model(x).reconstruction, to_nhwc(expected), "reconstruction")


def _broken_state(tmp_path, edit):
    state = load_state_dict(TAMING_VQ / "model.safetensors")
    edit(state)
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    return ["--checkpoint", str(path), "--config", str(TAMING_VQ / "model.yaml"), "--output", str(tmp_path / "out")]


def test_missing_key_is_reported(tmp_path, capsys):
    argv = _broken_state(tmp_path, lambda s: s.pop("encoder.conv_in.weight"))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "1 missing keys: encoder.conv_in.weight (32, 3, 3, 3)" in err
    assert not (tmp_path / "out").exists()


def test_wrong_shape_and_unexpected_key_are_reported(tmp_path, capsys):
    def edit(state):
        state["quant_conv.weight"] = np.zeros((8, 4, 1, 1), np.float32)
        state["quantize.used"] = np.zeros(3, np.float32)

    assert main(_broken_state(tmp_path, edit)) == 1
    err = capsys.readouterr().err
    assert "quant_conv.weight: checkpoint (8, 4, 1, 1), model expects (8, 16, 1, 1)" in err
    assert "1 unexpected keys: quantize.used (3,)" in err
    assert "missing keys" not in err  # a mis-shaped key is not also reported missing


def test_unknown_quantizer_is_reported(tmp_path, capsys):
    argv = [
        "--checkpoint",
        str(TAMING_VQ / "last.ckpt"),
        "--config",
        str(TAMING_VQ / "model.yaml"),
        "--quantizer",
        "rq",
        "--output",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 1
    assert "Unknown quantizer 'rq'" in capsys.readouterr().err


def test_a_checkpoint_is_required(tmp_path, capsys):
    assert main(["--output", str(tmp_path)]) == 1
    assert "give a checkpoint: vqgan-flax convert CHECKPOINT --output DIR" in capsys.readouterr().err
    assert main([str(TAMING_VQ / "last.ckpt"), "--checkpoint", "other.ckpt", "--output", str(tmp_path)]) == 1
    assert "give the checkpoint once" in capsys.readouterr().err


class _RunsCode:
    """Pickles as a call to os.system: what a hostile checkpoint would contain."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Evals:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.torch
@pytest.mark.parametrize("payload", [_RunsCode, _Evals])
def test_hostile_ckpt_never_runs_code(tmp_path, payload):
    import torch

    from vqgan_flax.testing.taming_reference import TamingVQGAN, randomize_

    marker = tmp_path / "pwned"
    reference = randomize_(TamingVQGAN(VQGANConfig.from_preset("tiny")), seed=6)
    checkpoint = {"state_dict": reference.state_dict(), "callbacks": {"hook": payload(marker)}}
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    assert main(["--checkpoint", str(tmp_path / "evil.ckpt"), "--preset", "tiny", "--output", str(tmp_path / "o")]) == 0
    assert not marker.exists()
    # A hostile object in place of the state dict: refused, still without running it.
    torch.save({"state_dict": payload(marker)}, tmp_path / "evil2.ckpt")
    assert (
        main(["--checkpoint", str(tmp_path / "evil2.ckpt"), "--preset", "tiny", "--output", str(tmp_path / "p")]) == 1
    )
    assert not marker.exists()


def test_conversion_works_without_torch(tmp_path):
    """A subprocess in which `import torch` fails converts the Lightning fixture checkpoint."""
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from vqgan_flax.cli.convert import main\n"
        f"code = main(['--checkpoint', {str(TAMING_VQ / 'last.ckpt')!r}, '--config', {str(TAMING_VQ / 'model.yaml')!r},"
        f" '--output', {str(tmp_path / 'out')!r}])\n"
        "assert 'torch' not in [m for m, v in sys.modules.items() if v is not None], 'torch was imported'\n"
        f"assert main(['--to-taming', {str(tmp_path / 'out')!r}, '--output', {str(tmp_path / 'x.pt')!r}]) == 1\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "x.pt: writing .pt/.pth/.ckpt needs torch" in result.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.torch
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".ckpt"])
def test_export_loads_into_taming_strictly(tmp_path, suffix):
    import torch

    from vqgan_flax.testing.taming_reference import TamingVQGAN, to_nchw_tensor, to_nhwc

    folder = FIXTURES / "vqganjax" / "checkpoint"
    output = tmp_path / f"taming{suffix}"
    assert main(["--to-taming", str(folder), "--output", str(output)]) == 0
    if suffix == ".safetensors":
        state = {k: torch.from_numpy(v) for k, v in load_file(str(output)).items()}
    else:
        loaded = torch.load(output, weights_only=True)
        state = loaded["state_dict"] if suffix == ".ckpt" else loaded
    model = FlaxVQGANModel.from_pretrained(folder)
    reference = TamingVQGAN(model.config)
    reference.load_state_dict(state, strict=True)
    x = np.load(FIXTURES / "vqganjax" / "inputs.npz")["pixel_values"]
    with torch.no_grad():
        quant, _, _ = reference.quantize(reference.quant_conv(reference.encoder(to_nchw_tensor(x))))
        expected = reference.decode(quant)
    assert_close(model(x).reconstruction, to_nhwc(expected), "taming with exported weights")


def test_export_to_taming_returns_state(tmp_path):
    state = export_to_taming(FIXTURES / "vqganjax" / "checkpoint", tmp_path / "w.safetensors")
    assert state["encoder.conv_in.weight"].shape == (32, 3, 3, 3)
    with pytest.raises(ConversionError, match="unknown extension"):
        export_to_taming(FIXTURES / "vqganjax" / "checkpoint", tmp_path / "w.bin")


def test_export_of_params_in_hand_equals_export_of_their_folder(tmp_path):
    from vqgan_flax.conversion import export_params_to_taming

    model = FlaxVQGANModel.from_pretrained(FIXTURES / "vqganjax" / "checkpoint")
    state = export_params_to_taming(model.config, model.params, tmp_path / "a.safetensors", "in hand")
    folder = export_to_taming(FIXTURES / "vqganjax" / "checkpoint", tmp_path / "b.safetensors")
    assert sorted(state) == sorted(folder)
    for key in state:
        np.testing.assert_array_equal(state[key], folder[key], err_msg=key)
    broken = dict(model.params)
    broken.pop("quant_conv")
    with pytest.raises(
        ConversionError, match="(?s)in hand does not match the architecture.*missing keys: quant_conv/bias"
    ):
        export_params_to_taming(model.config, broken, tmp_path / "c.safetensors", "in hand")


def test_export_refuses_a_model_taming_cannot_compute(tmp_path):
    config = VQGANConfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=8, embed_dim=4,
                         n_embed=16, resolution=16, norm_num_groups=8)  # fmt: skip
    FlaxVQGANModel(config, seed=0).save_pretrained(tmp_path / "model")
    with pytest.raises(ConversionError, match="norm_num_groups=8; taming's GroupNorm always has 32 groups"):
        export_to_taming(tmp_path / "model", tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()


def test_module_entry_point(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vqgan_flax.cli",
            "convert",
            "--checkpoint",
            str(FIXTURES / "taming_gumbel/last.ckpt"),
            "--config",
            str(FIXTURES / "taming_gumbel/model.yaml"),
            "--output",
            str(tmp_path),
            "--format",
            "msgpack",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "dropped 6 non-model entries" in result.stdout
    assert (tmp_path / "flax_model.msgpack").is_file()
    assert FlaxVQGANModel.from_pretrained(tmp_path).config.quantizer == "gumbel"
