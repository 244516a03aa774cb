"""VQGANConfig: taming field names, presets, taming YAML, vqgan-jax config.json."""

from __future__ import annotations

import json

import pytest
import yaml
from utils import FIXTURES

from vqgan_flax import PRESETS, VQGANConfig, list_presets


def test_defaults_are_taming_f16_imagenet():
    config = VQGANConfig()
    assert (config.ch, config.ch_mult, config.num_res_blocks, config.attn_resolutions) == (
        128,
        [1, 1, 2, 2, 4],
        2,
        [16],
    )
    assert (config.z_channels, config.embed_dim, config.n_embed, config.resolution) == (256, 256, 1024, 256)
    assert (config.quantizer, config.beta, config.legacy_loss, config.mid_block_attention) == ("vq", 0.25, True, True)
    assert config.model_type == "vqgan"
    assert config.downsampling_factor == 16 and config.num_resolutions == 5
    assert config.latent_shape(256, 512) == (16, 32)
    with pytest.raises(ValueError, match="250x256 is not divisible by the downsampling factor 16"):
        config.latent_shape(250, 256)
    # Attention where taming runs it: only at the level whose training resolution is 16.
    assert [config.attention_at_level(level) for level in range(5)] == [False, False, False, False, True]


def test_presets():
    assert list_presets() == sorted(PRESETS) and {"f16-1024", "f16-16384", "gumbel-f8", "tiny"} <= set(PRESETS)
    assert VQGANConfig.from_preset("f16-16384").n_embed == 16384
    gumbel = VQGANConfig.from_preset("gumbel-f8")
    assert (gumbel.quantizer, gumbel.downsampling_factor, gumbel.n_embed) == ("gumbel", 8, 8192)
    assert VQGANConfig.from_preset("tiny", n_embed=7).n_embed == 7
    with pytest.raises(ValueError, match="Unknown preset 'f32'"):
        VQGANConfig.from_preset("f32")


@pytest.mark.parametrize("case,quantizer", [("taming_vq", "vq"), ("taming_gumbel", "gumbel")])
def test_from_taming_yaml(case, quantizer):
    config = VQGANConfig.from_taming_yaml(FIXTURES / case / "model.yaml")
    ddconfig = yaml.safe_load((FIXTURES / case / "model.yaml").read_text())["model"]["params"]["ddconfig"]
    assert config.quantizer == quantizer
    assert {k: v for k, v in config.to_taming_ddconfig().items() if k in ddconfig} == ddconfig
    if quantizer == "gumbel":
        assert config.kl_weight == 1e-8


def test_from_taming_yaml_errors(tmp_path):
    bad_target = tmp_path / "model.yaml"
    bad_target.write_text("model:\n  target: taming.models.cond_transformer.Net2NetTransformer\n  params: {}\n")
    with pytest.raises(ValueError, match=r"model.yaml: unsupported model.target 'taming.models.cond_transformer"):
        VQGANConfig.from_taming_yaml(bad_target)
    no_ddconfig = tmp_path / "other.yaml"
    no_ddconfig.write_text("model:\n  target: taming.models.vqgan.VQModel\n  params: {embed_dim: 4}\n")
    with pytest.raises(ValueError, match=r"other.yaml: model.params lacks \['ddconfig', 'n_embed'\]"):
        VQGANConfig.from_taming_yaml(no_ddconfig)


def test_vqganjax_config_json_loads_unchanged():
    folder = FIXTURES / "vqganjax" / "checkpoint"
    raw = json.loads((folder / "config.json").read_text())
    assert "model_type" not in raw and raw["architectures"] == ["del"]
    config = VQGANConfig.from_pretrained(folder)
    for key in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "embed_dim", "n_embed"):
        assert getattr(config, key) == raw[key]
    assert config.num_resolutions == raw["num_resolutions"]
    with pytest.raises(ValueError, match=r"num_resolutions=4 does not match len\(ch_mult\)=3"):
        VQGANConfig(**{**raw, "num_resolutions": 4})


def test_save_and_reload(tmp_path):
    config = VQGANConfig.from_preset("gumbel-f8", temperature=0.5)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "vqgan" and "num_resolutions" not in saved
    assert VQGANConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


def test_invalid_values():
    with pytest.raises(ValueError, match="Unknown quantizer 'rvq'"):
        VQGANConfig(quantizer="rvq")
    with pytest.raises(ValueError, match=r"ch=48 must be a multiple of norm_num_groups=32"):
        VQGANConfig(ch=48)
    with pytest.raises(ValueError, match=r"ch=32 must be a multiple of norm_num_groups=24"):
        VQGANConfig(ch=32, norm_num_groups=24)
    with pytest.raises(ValueError, match=r"norm_num_groups=0 must be an integer in \[1, 1024\]"):
        VQGANConfig(norm_num_groups=0)
    with pytest.raises(ValueError, match=r"ch_mult=\[1, 1.5\] must be a non-empty list of positive integers"):
        VQGANConfig(ch=32, ch_mult=[1, 1.5])
    with pytest.raises(ValueError, match="double_z=True is not supported with the gumbel quantizer"):
        VQGANConfig(quantizer="gumbel", double_z=True)
