"""diffusers' VQModel, aMUSEd's VQ (issue 34): models made by diffusers' own VQModel
(tests/fixtures/diffusers_vq*, scripts/make_diffusers_fixtures.py) convert from their folder (its
config.json) or from the weights alone (the shapes), and match; config.json fields are read or
refused by name; the amused presets; a live comparison where diffusers imports (legacy stack)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from utils import FIXTURES, assert_case_parity, assert_close, require_torch_reference

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.cli.convert import main as convert_main
from vqgan_flax.conversion import ConversionError, expected_param_shapes, taming_shape
from vqgan_flax.conversion.diffusers import config_from_diffusers, diffusers_key_to_taming, diffusers_to_taming_state
from vqgan_flax.conversion.taming import flax_key_to_taming

CASES = ("diffusers_vq", "diffusers_vq_noattn")
FIELDS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "embed_dim", "n_embed",
          "mid_block_attention", "quantizer")  # fmt: skip


@pytest.fixture(scope="module", params=CASES)
def converted(request, tmp_path_factory):
    """``(model, case folder)``: the case's vqvae/ folder converted with --from diffusers."""
    case = FIXTURES / request.param
    out = tmp_path_factory.mktemp(request.param)
    argv = [str(case / "vqvae"), "--from", "diffusers", "--resolution", "32", "--output", str(out)]
    assert convert_main(argv) == 0
    return FlaxVQGANModel.from_pretrained(out), case


@pytest.mark.parametrize("suffix", ["", "_nonsquare"])
def test_diffusers_parity(converted, suffix):
    """Indices exact; latents, quantized latents, decode and aMUSEd's token path (decode of the
    indices through lookup_from_codebook) within 1e-4 of diffusers' VQModel, with attention at
    a level and in the middle, and with none."""
    assert_case_parity(*converted, suffix)


def test_the_folder_the_pipeline_and_the_bare_weights_give_one_model(converted, tmp_path, capsys):
    """A pipeline folder (vqvae/ inside) under auto reads the same config.json; the weights file
    alone, without its config, has its architecture inferred from the shapes: the same fields."""
    model, case = converted
    shutil.copytree(case / "vqvae", tmp_path / "pipeline" / "vqvae")
    assert convert_main([str(tmp_path / "pipeline"), "--resolution", "32", "--output", str(tmp_path / "p")]) == 0
    printed = capsys.readouterr().out
    assert f"diffusers (safetensors); architecture from {tmp_path / 'pipeline' / 'vqvae' / 'config.json'}" in printed
    (tmp_path / "bare").mkdir()
    shutil.copy(case / "vqvae" / "diffusion_pytorch_model.safetensors", tmp_path / "bare" / "w.safetensors")
    argv = [str(tmp_path / "bare" / "w.safetensors"), "--resolution", "32", "--output", str(tmp_path / "b")]
    assert convert_main(argv) == 0
    assert "diffusers (safetensors); architecture inferred from the shapes" in capsys.readouterr().out
    for folder in ("p", "b"):
        again = FlaxVQGANModel.from_pretrained(tmp_path / folder)
        assert {f: getattr(again.config, f) for f in FIELDS} == {f: getattr(model.config, f) for f in FIELDS}
        codes = np.asarray(again.params["quantize"]["embedding"]["embedding"])
        np.testing.assert_array_equal(codes, np.asarray(model.params["quantize"]["embedding"]["embedding"]))


def test_diffusers_names_map_to_tamings():
    """Level, middle, upsampler and outer keys; today's and pre-0.14 attention names; the
    decoder's up_blocks counted from the lowest resolution; Linear attention weights as 1x1 convs."""
    pairs = {
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight": "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.down_blocks.0.downsamplers.0.conv.bias": "encoder.down.0.downsample.conv.bias",
        "encoder.down_blocks.2.attentions.1.to_out.0.weight": "encoder.down.2.attn.1.proj_out.weight",
        "encoder.mid_block.attentions.0.group_norm.weight": "encoder.mid.attn_1.norm.weight",
        "decoder.mid_block.resnets.1.norm2.bias": "decoder.mid.block_2.norm2.bias",
        "decoder.mid_block.attentions.0.query.weight": "decoder.mid.attn_1.q.weight",
        "decoder.mid_block.attentions.0.proj_attn.bias": "decoder.mid.attn_1.proj_out.bias",
        "decoder.up_blocks.0.resnets.2.conv1.weight": "decoder.up.2.block.2.conv1.weight",
        "decoder.up_blocks.1.upsamplers.0.conv.weight": "decoder.up.1.upsample.conv.weight",
        "decoder.conv_norm_out.weight": "decoder.norm_out.weight",
        "quantize.embedding.weight": "quantize.embedding.weight",
        "decoder.up_blocks.0.upsamplers.1.conv.weight": "decoder.up_blocks.0.upsamplers.1.conv.weight",
    }
    assert {k: diffusers_key_to_taming(k, 3) for k in pairs} == pairs
    state = {"decoder.up_blocks.2.resnets.0.conv1.weight": np.zeros((1, 1, 3, 3)),
             "encoder.mid_block.attentions.0.to_k.weight": np.zeros((4, 4))}  # fmt: skip
    renamed = diffusers_to_taming_state(state)
    assert (
        renamed["encoder.mid.attn_1.k.weight"].shape == (4, 4, 1, 1) and "decoder.up.0.block.0.conv1.weight" in renamed
    )


def _amused_config(**changes):
    """aMUSEd's vqvae/config.json (diffusers' scripts/convert_amused.py), with ``changes``."""
    document = {"_class_name": "VQModel", "_diffusers_version": "0.25.0", "act_fn": "silu", "vq_embed_dim": None,
                "block_out_channels": [128, 256, 256, 512, 768], "down_block_types": ["DownEncoderBlock2D"] * 5,
                "force_upcast": False, "in_channels": 3, "latent_channels": 64, "layers_per_block": 2,
                "lookup_from_codebook": True, "mid_block_add_attention": False, "norm_num_groups": 32,
                "norm_type": "group", "num_vq_embeddings": 8192, "out_channels": 3, "sample_size": 32,
                "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 5}  # fmt: skip
    document.update(changes)
    return document


def test_amused_config_is_the_amused_preset_and_wrong_fields_are_named(tmp_path):
    """aMUSEd's config.json reads as the amused-256 / amused-512 presets; what our model cannot
    be is refused, naming the field."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_amused_config()))
    for resolution in (256, 512):
        config = config_from_diffusers(str(path), resolution)
        assert config.to_dict() == VQGANConfig.from_preset(f"amused-{resolution}").to_dict()
    for changes, message in (
        ({"_class_name": "AutoencoderKL"}, "_class_name='AutoencoderKL'; expected 'VQModel'"),
        ({"act_fn": "gelu"}, "act_fn='gelu' is not supported"),
        ({"norm_type": "spatial"}, "norm_type='spatial' is not supported"),
        ({"use_post_quant_conv": False}, "fields this converter does not know: use_post_quant_conv"),
        ({"block_out_channels": [128, 192, 256, 512, 768]}, r"block_out_channels=\[128, 192.*\]: each must be a mult"),
        ({"block_out_channels": [128, -1]}, r"block_out_channels=\[128, -1\] must be a non-empty list"),
        ({"down_block_types": ["DownEncoderBlock2D"] * 4}, "down_block_types=.* must list 5 of"),
        ({"up_block_types": ["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 4},
         r"encoder levels attending \[False, False, False, False, False\] but decoder levels"),
        ({"latent_channels": 0}, "z_channels=0 must be an integer"),
    ):  # fmt: skip
        path.write_text(json.dumps(_amused_config(**changes)))
        with pytest.raises(ConversionError, match=f"{path}: {message}"):
            config_from_diffusers(str(path))


def test_a_folder_without_weights_or_with_taming_keys_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    assert convert_main([str(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 1
    from vqgan_flax.conversion import convert_checkpoint

    with pytest.raises(ConversionError, match="no diffusion_pytorch_model.safetensors or diffusion_pytorch_model.bin"):
        convert_checkpoint(tmp_path / "empty", tmp_path / "o")
    taming = FIXTURES / "taming_vq" / "model.safetensors"
    with pytest.raises(ConversionError, match="--from diffusers, but no encoder.down_blocks"):
        convert_checkpoint(taming, tmp_path / "t", family="diffusers", config=VQGANConfig.from_preset("tiny"))
    with pytest.raises(ConversionError, match="--from ldm, but its keys are diffusers'"):
        convert_checkpoint(FIXTURES / "diffusers_vq" / "vqvae" / "diffusion_pytorch_model.safetensors", tmp_path / "d",
                           family="ldm")  # fmt: skip


@pytest.mark.parametrize("preset", ["amused-256", "amused-512"])
def test_amused_presets_have_amuseds_parameter_tree(preset):
    """The shapes diffusers' aMUSEd VQModel has: 128 x [1, 2, 2, 4, 6] widths, 8192 x 64 codes,
    no attention anywhere; three ResnetBlocks per decoder level."""
    config = VQGANConfig.from_preset(preset)
    shapes = {flax_key_to_taming(p): taming_shape(p, s) for p, s in expected_param_shapes(config).items()}
    assert shapes["quantize.embedding.weight"] == (8192, 64) and shapes["encoder.conv_out.weight"] == (64, 768, 3, 3)
    assert not any(".attn" in key for key in shapes) and "decoder.up.4.block.2.conv2.weight" in shapes
    assert config.downsampling_factor == 16 and config.resolution == int(preset.split("-")[1])


@pytest.mark.torch
def test_live_against_diffusers_with_amuseds_layout(tmp_path):
    """Where diffusers imports (the legacy stack): a random VQModel of aMUSEd's layout, at a
    smaller width, saved by diffusers, converted and compared (indices exact, floats ≤ 1e-4); the
    full-size aMUSEd VQModel's state dict maps onto the amused-256 preset's tree, every shape."""
    require_torch_reference("diffusers")
    import torch
    from diffusers import VQModel

    from vqgan_flax.testing.taming_reference import randomize_

    layout = _amused_config(block_out_channels=[32, 64, 64, 128, 192], latent_channels=16, num_vq_embeddings=128)
    kwargs = {k: v for k, v in layout.items() if not k.startswith("_")}
    model = randomize_(VQModel(**kwargs), 5)
    model.save_pretrained(tmp_path / "vqvae")
    assert convert_main([str(tmp_path / "vqvae"), "--output", str(tmp_path / "flax")]) == 0
    ours = FlaxVQGANModel.from_pretrained(tmp_path / "flax")
    pixels = np.random.default_rng(5).uniform(-1, 1, (1, 3, 32, 64)).astype(np.float32)
    with torch.no_grad():
        latents = model.encode(torch.from_numpy(pixels)).latents
        _, _, (_, _, indices) = model.quantize(latents)
        decoded = model.decode(latents).sample.numpy()
    encoded = ours.encode(pixels.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(encoded.indices).ravel(), indices.numpy().ravel())
    assert_close(encoded.latents, latents.numpy().transpose(0, 2, 3, 1), "z")
    assert_close(ours.decode(encoded.quant_states), decoded.transpose(0, 2, 3, 1), "decode")
    full = VQModel(**{k: v for k, v in _amused_config().items() if not k.startswith("_")})
    mapped = {k: tuple(v.shape) for k, v in diffusers_to_taming_state(dict(full.state_dict())).items()}
    preset = VQGANConfig.from_preset("amused-256")
    assert mapped == {flax_key_to_taming(p): taming_shape(p, s) for p, s in expected_param_shapes(preset).items()}
