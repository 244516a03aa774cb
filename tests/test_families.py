"""Other members of the VQGAN family (issue 34): LlamaGen's VQ converted with its architecture
inferred from the shapes, matching the outputs LlamaGen's own code recorded
(tests/fixtures/llamagen_vq, scripts/make_llamagen_fixtures.py); the l2-normalised quantizer;
inference on taming checkpoints; export back to LlamaGen's names."""

from __future__ import annotations

import numpy as np
import pytest
from utils import FIXTURES, assert_case_parity, assert_cli_runs, assert_close, nchw_to_nhwc

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.cli.convert import main as convert_main
from vqgan_flax.conversion import (
    ConversionError,
    infer_taming_config,
    llamagen_key_to_taming,
    load_state_dict,
    read_llamagen_checkpoint,
    taming_key_to_llamagen,
)
from vqgan_flax.models.quantizers import VectorQuantizer, l2_normalize

LLAMAGEN = FIXTURES / "llamagen_vq"


@pytest.fixture(scope="module")
def llamagen(tmp_path_factory):
    """The LlamaGen fixture converted by the command line, architecture inferred (EMA weights)."""
    out = tmp_path_factory.mktemp("llamagen")
    assert convert_main([str(LLAMAGEN / "checkpoint.pt"), "--from", "llamagen", "--output", str(out)]) == 0
    return FlaxVQGANModel.from_pretrained(out)


def test_the_inferred_architecture_is_the_one_llamagen_built(llamagen):
    config = llamagen.config
    assert (config.ch, config.ch_mult, config.num_res_blocks, config.z_channels) == (32, [1, 2, 2], 2, 16)
    assert (config.n_embed, config.embed_dim, config.quantizer, config.legacy_loss) == (64, 8, "vq_l2", False)
    assert config.attn_resolutions == [64] and config.attention_at_level(2) and not config.attention_at_level(1)
    assert config.mid_block_attention and config.resolution == 256


@pytest.mark.parametrize("suffix", ["", "_nonsquare"])
def test_llamagen_parity(llamagen, suffix):
    """Indices exact; latents, quantized latents, decode and decode_code within 1e-4 of LlamaGen's
    VQModel (its EMA weights, as its evaluation loads them), square and non-square."""
    pixels = nchw_to_nhwc(np.load(LLAMAGEN / "inputs.npz")[f"pixel_values{suffix}"])
    expected = {k.removesuffix(suffix): v for k, v in np.load(LLAMAGEN / "expected.npz").items() if k.endswith(suffix)}
    if not suffix:
        expected = {k: v for k, v in expected.items() if not k.endswith("_nonsquare")}
    encoded = llamagen.encode(pixels)
    np.testing.assert_array_equal(encoded.indices, expected["indices"].reshape(len(pixels), -1))
    assert_close(encoded.latents, nchw_to_nhwc(expected["z"]), "z")
    assert_close(encoded.quant_states, nchw_to_nhwc(expected["quant"]), "quant")
    assert_close(llamagen.decode(encoded.quant_states), nchw_to_nhwc(expected["reconstruction"]), "decode")
    decoded = nchw_to_nhwc(expected["decoded_from_indices"])
    assert_close(llamagen.decode_code(expected["indices"]), decoded, "decode_code")


def test_the_command_line_runs_a_llamagen_model(llamagen, tmp_path, capsys):
    """encode → decode, reconstruct (bf16) and info through the CLI on the converted LlamaGen model
    (CPU kernels on, as the suite runs): the tokens are the model's own."""
    assert_cli_runs(llamagen, tmp_path, capsys, "quantizer:           vq_l2, codebook 64 x 8")


def test_auto_finds_llamagen_and_no_ema_takes_the_trained_weights(tmp_path, capsys):
    assert convert_main([str(LLAMAGEN / "checkpoint.pt"), "--output", str(tmp_path / "auto")]) == 0
    out = capsys.readouterr().out
    assert "llamagen (ema); architecture inferred from the shapes: quantizer=vq_l2, ch=32" in out
    assert "dropped 1 non-model entries" in out  # quantize.codebook_used
    assert convert_main([str(LLAMAGEN / "checkpoint.pt"), "--no-ema", "--output", str(tmp_path / "trained")]) == 0
    assert "llamagen (model)" in capsys.readouterr().out
    trained, entry = read_llamagen_checkpoint(LLAMAGEN / "checkpoint.pt", ema=False)
    ema, _ = read_llamagen_checkpoint(LLAMAGEN / "checkpoint.pt")
    assert entry == "model" and not np.array_equal(trained["quant_conv.weight"], ema["quant_conv.weight"])
    model = FlaxVQGANModel.from_pretrained(tmp_path / "trained")
    kernel = np.asarray(model.params["encoder"]["down_1"]["block_0"]["conv1"]["kernel"])
    np.testing.assert_array_equal(kernel, trained["encoder.conv_blocks.1.res.0.conv1.weight"].transpose(2, 3, 1, 0))


def test_export_to_llamagen_round_trips_to_the_same_state(llamagen, tmp_path, capsys):
    """--to-llamagen writes LlamaGen's names and tensors (plus a zero codebook_used), bit for bit what
    the checkpoint held, so LlamaGen's VQModel loads it with strict=True."""
    folder = tmp_path / "model"
    llamagen.save_pretrained(folder)
    assert convert_main(["--to-llamagen", str(folder), "--output", str(tmp_path / "back.safetensors")]) == 0
    back = load_state_dict(tmp_path / "back.safetensors")
    original, _ = read_llamagen_checkpoint(LLAMAGEN / "checkpoint.pt")
    assert sorted(back) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(back[key], np.zeros_like(value) if key.endswith("codebook_used") else value, key)
    taming = FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=0)
    taming.save_pretrained(tmp_path / "taming")
    assert convert_main(["--to-llamagen", str(tmp_path / "taming"), "--output", str(tmp_path / "x.safetensors")]) == 1
    assert "quantizer='vq': LlamaGen's VQModel normalises its codes" in capsys.readouterr().err


def test_key_names_map_both_ways():
    levels = 3
    pairs = {
        "encoder.conv_blocks.2.res.1.conv2.weight": "encoder.down.2.block.1.conv2.weight",
        "encoder.conv_blocks.2.attn.0.q.bias": "encoder.down.2.attn.0.q.bias",
        "encoder.conv_blocks.0.downsample.conv.weight": "encoder.down.0.downsample.conv.weight",
        "decoder.conv_blocks.0.res.2.norm1.weight": "decoder.up.2.block.2.norm1.weight",
        "decoder.conv_blocks.2.upsample.conv.bias": "decoder.up.0.upsample.conv.bias",
        "encoder.mid.1.proj_out.weight": "encoder.mid.attn_1.proj_out.weight",
        "decoder.mid.2.conv1.weight": "decoder.mid.block_2.conv1.weight",
        "quant_conv.weight": "quant_conv.weight",
    }
    for llamagen_key, taming_key in pairs.items():
        assert llamagen_key_to_taming(llamagen_key, levels) == taming_key
        assert taming_key_to_llamagen(taming_key, levels) == llamagen_key


def test_taming_checkpoints_convert_without_a_config(tmp_path, capsys):
    """The taming fixture's architecture from its shapes alone: the same model as its model.yaml
    gives (attention by level, so the assumed 256 resolution places it on the same level)."""
    case = FIXTURES / "taming_vq"
    assert convert_main([str(case / "last.ckpt"), "--output", str(tmp_path / "inferred")]) == 0
    assert "taming (state dict); architecture inferred" in capsys.readouterr().out
    assert convert_main([str(case / "last.ckpt"), "--config", str(case / "model.yaml"), "--output",
                         str(tmp_path / "given")]) == 0  # fmt: skip
    inferred, given = (FlaxVQGANModel.from_pretrained(tmp_path / n) for n in ("inferred", "given"))
    assert inferred.config.attn_resolutions == [128] and given.config.attn_resolutions == [16]
    pixels = nchw_to_nhwc(np.load(case / "inputs.npz")["pixel_values"])
    np.testing.assert_array_equal(inferred.encode(pixels).indices, given.encode(pixels).indices)
    assert_close(inferred(pixels).reconstruction, given(pixels).reconstruction, "reconstruction")
    assert convert_main([str(case / "last.ckpt"), "--from", "llamagen", "--output", str(tmp_path / "x")]) == 1
    assert "--from llamagen, but no encoder.conv_blocks.* keys" in capsys.readouterr().err


def test_inference_names_what_it_cannot_find():
    state = load_state_dict(FIXTURES / "taming_vq" / "model.safetensors")
    assert infer_taming_config(state).ch_mult == [1, 2, 2]
    with pytest.raises(ConversionError, match=r"f.ckpt: cannot infer the architecture: no quant_conv.weight"):
        infer_taming_config({k: v for k, v in state.items() if k != "quant_conv.weight"}, "f.ckpt")
    broken = dict(state, **{"encoder.conv_in.weight": np.zeros((30, 3, 3, 3), np.float32)})
    with pytest.raises(ConversionError, match=r"encoder level 0 has 32 channels, not a multiple of ch=30"):
        infer_taming_config(broken, "f.ckpt")
    with pytest.raises(ConversionError, match=r"f.ckpt: quant_conv.weight has shape \(8,\)"):
        infer_taming_config(dict(state, **{"quant_conv.weight": np.zeros(8, np.float32)}), "f.ckpt")


def test_the_l2_quantizer_picks_the_most_similar_code_and_returns_unit_rows():
    import jax

    rng = np.random.default_rng(0)
    codebook = rng.normal(size=(16, 4)).astype(np.float32) * rng.uniform(0.1, 10, (16, 1)).astype(np.float32)
    latents = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    quantizer = VectorQuantizer(16, 4, l2_norm=True)
    params = {"params": {"embedding": {"embedding": codebook}}}
    out = quantizer.apply(params, latents)
    cosine = l2_normalize(latents).reshape(-1, 4) @ np.asarray(l2_normalize(codebook)).T
    np.testing.assert_array_equal(np.asarray(out.indices).ravel(), np.argmax(np.asarray(cosine), axis=1))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out.quantized), axis=-1), 1.0, rtol=1e-6)
    plain = VectorQuantizer(16, 4).apply(params, latents)
    assert not np.array_equal(np.asarray(plain.indices), np.asarray(out.indices)), "the scales must matter"
    rows = quantizer.apply(params, out.indices, method=VectorQuantizer.get_codebook_entry)
    np.testing.assert_array_equal(np.asarray(rows), np.asarray(out.quantized))
    # the loss compares normalised vectors, β on the commitment term when legacy=False
    paper = VectorQuantizer(16, 4, beta=0.25, legacy=False, l2_norm=True).apply(params, latents)
    z, e = np.asarray(l2_normalize(latents)), np.asarray(out.quantized)
    np.testing.assert_allclose(float(paper.loss), 1.25 * np.mean((z - e) ** 2), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(l2_normalize(np.zeros((1, 4), np.float32))), np.zeros((1, 4)))
    assert jax.numpy.isfinite(out.loss)


@pytest.mark.parametrize("preset", ["llamagen-vq-ds16", "llamagen-vq-ds8"])
def test_llamagen_presets_have_llamagens_parameter_tree(preset):
    """Each preset's parameters, named as LlamaGen names them, are VQ_16's / VQ_8's: the shapes of
    LlamaGen's published models (16384 x 8 codes, z 256, attention on the last level)."""
    from vqgan_flax.conversion import expected_param_shapes, taming_shape
    from vqgan_flax.conversion.taming import flax_key_to_taming

    config = VQGANConfig.from_preset(preset)
    shapes = {taming_key_to_llamagen(flax_key_to_taming(p), config.num_resolutions): taming_shape(p, s)
              for p, s in expected_param_shapes(config).items()}  # fmt: skip
    levels = 5 if preset.endswith("16") else 4
    assert shapes["quantize.embedding.weight"] == (16384, 8) and shapes["quant_conv.weight"] == (8, 256, 1, 1)
    assert f"encoder.conv_blocks.{levels - 1}.attn.1.q.weight" in shapes
    assert f"encoder.conv_blocks.{levels - 2}.attn.0.q.weight" not in shapes
    assert shapes["decoder.conv_blocks.0.attn.2.k.weight"] == (512, 512, 1, 1)  # 3 blocks, lowest level first
    widest = 256 if levels == 4 else 128  # the level above the top one: ch_mult[1] x 128
    assert shapes[f"decoder.conv_blocks.{levels - 1}.res.0.conv1.weight"] == (128, widest, 3, 3)
    assert config.downsampling_factor == (16 if levels == 5 else 8) and config.quantizer == "vq_l2"
    state = {llamagen_key_to_taming(k, levels): np.zeros(s, np.float32) for k, s in shapes.items()}
    rebuilt = infer_taming_config(state, quantizer="vq_l2", legacy_loss=False)
    fields = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "embed_dim", "n_embed")
    assert {f: getattr(rebuilt, f) for f in fields} == {f: getattr(config, f) for f in fields}


IBQ = FIXTURES / "ibq"


@pytest.fixture(scope="module")
def ibq(tmp_path_factory):
    """The IBQ fixture converted by the command line with --from ibq, architecture inferred (its
    LitEma weights)."""
    out = tmp_path_factory.mktemp("ibq")
    assert convert_main([str(IBQ / "last.ckpt"), "--from", "ibq", "--resolution", "32", "--output", str(out)]) == 0
    return FlaxVQGANModel.from_pretrained(out)


@pytest.mark.parametrize("suffix", ["", "_nonsquare"])
def test_ibq_parity(ibq, suffix):
    """Indices exact (largest dot product); latents, quantized latents, decode and decode from the
    indices within 1e-4 of SEED-Voken's IBQ modules with their EMA weights, square and non-square."""
    assert ibq.config.quantizer == "ibq" and ibq.config.attn_resolutions == [16] and ibq.config.num_res_blocks == 2
    assert_case_parity(ibq, IBQ, suffix)


def test_lit_ema_weights_are_taken_unless_no_ema(tmp_path, capsys):
    """The EMA shadows (model_ema.<name without dots>) replace the trained weights; --no-ema keeps
    the trained ones; a shadow missing for one weight is refused, naming it."""
    from vqgan_flax.conversion import lit_ema_state

    state = load_state_dict(IBQ / "last.ckpt")
    ema, which = lit_ema_state(state, "f.ckpt")
    trained, other = lit_ema_state(state, "f.ckpt", ema=False)
    assert (which, other) == ("ema", "model") and sorted(ema) == sorted(trained)
    assert not any(k.startswith(("loss.", "model_ema.")) for k in ema)
    np.testing.assert_array_equal(ema["encoder.conv_in.weight"], state["model_ema.encoderconv_inweight"])
    assert not np.array_equal(ema["encoder.conv_in.weight"], trained["encoder.conv_in.weight"])
    broken = {k: v for k, v in state.items() if k != "model_ema.quantizeembeddingweight"}
    with pytest.raises(
        ConversionError, match=r"f.ckpt: model weights without an EMA shadow: quantize.embedding.weight"
    ):
        lit_ema_state(broken, "f.ckpt")
    assert convert_main([str(IBQ / "last.ckpt"), "--from", "ibq", "--no-ema", "--output", str(tmp_path / "t")]) == 0
    assert "ibq (state dict); architecture inferred from the shapes: quantizer=ibq" in capsys.readouterr().out
    model = FlaxVQGANModel.from_pretrained(tmp_path / "t")
    codebook = np.asarray(model.params["quantize"]["embedding"]["embedding"])
    np.testing.assert_array_equal(codebook, trained["quantize.embedding.weight"])


def test_the_ibq_quantizer_picks_the_largest_dot_product_and_propagates_to_every_code():
    import jax
    import jax.numpy as jnp

    from vqgan_flax.models.quantizers import IndexPropagationQuantizer

    rng = np.random.default_rng(1)
    codebook = rng.normal(size=(16, 4)).astype(np.float32) * rng.uniform(0.1, 10, (16, 1)).astype(np.float32)
    latents = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    params = {"params": {"embedding": {"embedding": codebook}}}
    quantizer = IndexPropagationQuantizer(16, 4)
    out = quantizer.apply(params, latents)
    dots = latents.reshape(-1, 4) @ codebook.T
    np.testing.assert_array_equal(np.asarray(out.indices).ravel(), np.argmax(dots, axis=1))
    np.testing.assert_array_equal(np.asarray(out.quantized), codebook[np.argmax(dots, axis=1)].reshape(2, 3, 5, 4))
    nearest = VectorQuantizer(16, 4).apply(params, latents)
    assert not np.array_equal(np.asarray(nearest.indices), np.asarray(out.indices)), "L2 and dot product must differ"

    def loss(codes):
        result = quantizer.apply({"params": {"embedding": {"embedding": codes}}}, latents, train=True)
        return result.loss + jnp.sum(result.quantized)

    gradient = np.asarray(jax.grad(loss)(jnp.asarray(codebook)))
    chosen = set(np.asarray(out.indices).ravel().tolist())
    assert all(np.abs(gradient[i]).sum() > 0 for i in range(16) if i not in chosen), (
        "index propagation reaches every code"
    )
    train = quantizer.apply(params, latents, train=True)
    np.testing.assert_allclose(np.asarray(train.quantized), np.asarray(out.quantized), atol=1e-5)
    np.testing.assert_allclose(float(out.loss), 2.25 * np.mean((np.asarray(out.quantized) - latents) ** 2), rtol=1e-5)


@pytest.mark.parametrize("preset, codes", [("ibq-f16-16384", 16384), ("ibq-f16-262144", 262144)])
def test_ibq_presets_have_ibqs_parameter_tree(preset, codes):
    """IBQ's ImageNet configs (configs/IBQ/gpu/imagenet_ibqgan_*.yaml): f16, 4 ResnetBlocks a level,
    attention at 16, 256-dimensional codes; the shapes infer back to the same architecture."""
    from vqgan_flax.conversion import expected_param_shapes, taming_shape
    from vqgan_flax.conversion.taming import flax_key_to_taming

    config = VQGANConfig.from_preset(preset)
    shapes = {flax_key_to_taming(p): taming_shape(p, s) for p, s in expected_param_shapes(config).items()}
    assert shapes["quantize.embedding.weight"] == (codes, 256) and "encoder.down.0.block.3.conv1.weight" in shapes
    assert "encoder.down.4.attn.3.q.weight" in shapes and "encoder.down.3.attn.0.q.weight" not in shapes
    rebuilt = infer_taming_config({k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}, quantizer="ibq")
    assert rebuilt.to_dict() == config.to_dict()


def test_a_checkpoint_that_is_not_a_regular_file_is_named(tmp_path, capsys):
    """Checked before the reader's limit looks at its size: a missing file and a folder, one line."""
    (tmp_path / "folder.pt").mkdir()
    for name, message in (("missing.pt", "no such file"), ("folder.pt", "not a regular file")):
        assert convert_main([str(tmp_path / name), "--output", str(tmp_path / "out")]) == 1
        assert f"{tmp_path / name}: {message}" in capsys.readouterr().err


IBQ_YAML = """\
seed_everything: true
model:
  class_path: src.IBQ.models.ibqgan.IBQ
  init_args:
    ddconfig:
      double_z: False
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult: [ 1,1,2,2,4]  # num_down = len(ch_mult)-1
      num_res_blocks: 4
      attn_resolutions: [16]
      dropout: 0.0
    lossconfig:
      target: src.IBQ.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params: {disc_start: 0, entropy_loss_weight: 0.05}
    n_embed: 16384
    embed_dim: 256
    l2_normalize: False
    use_entropy_loss: True
    beta: 0.25
    use_ema: True
data:
  class_path: main.DataModuleFromConfig
ckpt_path: null
"""


def test_ibqs_lightning_cli_yaml_is_a_config(tmp_path, capsys):
    """IBQ's LightningCLI config (class_path / init_args, as configs/IBQ/gpu/imagenet_ibqgan_16384.yaml
    lays it out) reads as the ibq-f16-16384 preset; l2_normalize is refused by name; the IBQ
    fixture converts with its own such YAML to the model the shapes give."""
    (tmp_path / "ibq.yaml").write_text(IBQ_YAML)
    config = VQGANConfig.from_taming_yaml(tmp_path / "ibq.yaml")
    assert config.to_dict() == VQGANConfig.from_preset("ibq-f16-16384").to_dict()
    (tmp_path / "l2.yaml").write_text(IBQ_YAML.replace("l2_normalize: False", "l2_normalize: True"))
    with pytest.raises(ValueError, match=r"l2.yaml: model.init_args.l2_normalize is not supported"):
        VQGANConfig.from_taming_yaml(tmp_path / "l2.yaml")
    small = IBQ_YAML.replace("z_channels: 256", "z_channels: 16").replace("resolution: 256", "resolution: 32")
    small = (
        small.replace("ch: 128", "ch: 32")
        .replace("[ 1,1,2,2,4]", "[1, 2, 2]")
        .replace("num_res_blocks: 4", "num_res_blocks: 2")
    )
    small = small.replace("n_embed: 16384", "n_embed: 64").replace("embed_dim: 256", "embed_dim: 8")
    (tmp_path / "small.yaml").write_text(small)
    argv = [
        str(IBQ / "last.ckpt"),
        "--from",
        "ibq",
        "--config",
        str(tmp_path / "small.yaml"),
        "--output",
        str(tmp_path / "y"),
    ]
    assert convert_main(argv) == 0
    assert "ibq (ema); architecture as given: quantizer=ibq" in capsys.readouterr().out
    model = FlaxVQGANModel.from_pretrained(tmp_path / "y")
    assert_case_parity(model, IBQ, "")
