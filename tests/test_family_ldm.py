"""latent-diffusion's VQ first stages (issue 34): checkpoints made by latent-diffusion's own
Encoder/Decoder with taming's quantizer (tests/fixtures/ldm_vq*, scripts/make_ldm_fixtures.py)
convert with the architecture inferred or read from LDM's config.yaml, and match; LDM's YAML
fields (attn_type) and the vq-f4/f8/f16 presets."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from utils import FIXTURES, assert_case_parity

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.cli.convert import main as convert_main
from vqgan_flax.conversion import expected_param_shapes, infer_taming_config, taming_shape
from vqgan_flax.conversion.taming import flax_key_to_taming

CASES = ("ldm_vq", "ldm_vq_noattn")


@pytest.fixture(scope="module", params=CASES)
def ldm(request, tmp_path_factory):
    """``(model, case folder)``: the case converted with --from ldm, architecture inferred."""
    case = FIXTURES / request.param
    out = tmp_path_factory.mktemp(request.param)
    assert convert_main([str(case / "model.ckpt"), "--from", "ldm", "--resolution", "32", "--output", str(out)]) == 0
    return FlaxVQGANModel.from_pretrained(out), case


@pytest.mark.parametrize("suffix", ["", "_nonsquare"])
def test_ldm_parity(ldm, suffix):
    """Indices exact; latents, quantized latents, decode and decode from the indices within 1e-4
    of latent-diffusion's modules, square and non-square, with attention and with attn_type none."""
    assert_case_parity(*ldm, suffix)


def test_the_shapes_and_ldms_yaml_give_the_same_architecture(ldm, tmp_path, capsys):
    """The inferred config is the one LDM's config.yaml describes (attn_type none: no attention
    anywhere, the middle included); --config converts to the same weights; auto reads it as taming."""
    model, case = ldm
    from_yaml = VQGANConfig.from_taming_yaml(case / "config.yaml")
    fields = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "embed_dim", "n_embed",
              "mid_block_attention", "quantizer", "resolution")  # fmt: skip
    assert {f: getattr(model.config, f) for f in fields} == {f: getattr(from_yaml, f) for f in fields}
    assert model.config.mid_block_attention == (case.name == "ldm_vq")
    argv = [str(case / "model.ckpt"), "--config", str(case / "config.yaml"), "--output", str(tmp_path / "y")]
    assert convert_main(argv) == 0
    assert "dropped 2 non-model entries" in capsys.readouterr().out
    again = FlaxVQGANModel.from_pretrained(tmp_path / "y")
    for (path, a), (_, b) in zip(_leaves(model.params), _leaves(again.params)):
        np.testing.assert_array_equal(a, b, err_msg=path)


def _leaves(tree, prefix=""):
    for key in sorted(tree):
        if isinstance(tree[key], dict):
            yield from _leaves(tree[key], f"{prefix}{key}/")
        else:
            yield prefix + key, np.asarray(tree[key])


def _ldm_document(**ddconfig):
    base = {"double_z": False, "z_channels": 3, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}  # fmt: skip
    params = {"embed_dim": 3, "n_embed": 8192, "ddconfig": {**base, **ddconfig}, "lossconfig": {"target": "x"}}
    return {"model": {"target": "ldm.models.autoencoder.VQModel", "params": params}}


def test_ldm_yaml_fields_are_read_or_refused_by_name(tmp_path):
    """attn_type none removes every attention (middle too); vanilla is taming's; linear attention,
    a tanh output and a remapped codebook are other models, each refused naming the field."""
    assert VQGANConfig.from_taming_dict(_ldm_document()).to_dict() == VQGANConfig.from_preset("ldm-vq-f4").to_dict()
    none = VQGANConfig.from_taming_dict(_ldm_document(attn_type="none", attn_resolutions=[64]))
    assert none.to_dict() == VQGANConfig.from_preset("ldm-vq-f4-noattn").to_dict()
    interface = _ldm_document(attn_type="vanilla")
    interface["model"]["target"] = "ldm.models.autoencoder.VQModelInterface"
    assert VQGANConfig.from_taming_dict(interface).mid_block_attention
    for changes, message in (
        ({"attn_type": "linear"}, r"f.yaml: ddconfig.attn_type='linear' is not supported"),
        ({"use_linear_attn": True}, r"f.yaml: ddconfig.use_linear_attn=true is not supported"),
        ({"tanh_out": True}, r"f.yaml: ddconfig.tanh_out=true is not supported"),
    ):
        with pytest.raises(ValueError, match=message):
            VQGANConfig.from_taming_dict(_ldm_document(**changes), source="f.yaml")
    remapped = _ldm_document()
    remapped["model"]["params"]["remap"] = "data/remap.npy"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(remapped))
    with pytest.raises(ValueError, match=r"r.yaml: model.params.remap is not supported"):
        VQGANConfig.from_taming_yaml(tmp_path / "r.yaml")
    kl = _ldm_document()
    kl["model"]["target"] = "ldm.models.autoencoder.AutoencoderKL"
    with pytest.raises(ValueError, match=r"unsupported model.target 'ldm.models.autoencoder.AutoencoderKL'"):
        VQGANConfig.from_taming_dict(kl)


# latent-diffusion's models/first_stage_models/vq-f*/config.yaml, the fields that decide the tree.
PUBLISHED = {
    "ldm-vq-f4": dict(ch_mult=[1, 2, 4], attn_resolutions=[], z_channels=3, embed_dim=3, n_embed=8192),
    "ldm-vq-f4-noattn": dict(
        ch_mult=[1, 2, 4], attn_resolutions=[], z_channels=3, embed_dim=3, n_embed=8192, attn_type="none"
    ),
    "ldm-vq-f8": dict(ch_mult=[1, 2, 2, 4], attn_resolutions=[32], z_channels=4, embed_dim=4, n_embed=16384),
    "ldm-vq-f16": dict(ch_mult=[1, 1, 2, 2, 4], attn_resolutions=[16], z_channels=8, embed_dim=8, n_embed=16384),
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_ldm_presets_are_the_published_configs(preset):
    """Each preset is what its LDM config.yaml reads as, and its parameter tree infers back to it."""
    fields = dict(PUBLISHED[preset])
    embed_dim, n_embed = fields.pop("embed_dim"), fields.pop("n_embed")
    document = _ldm_document(**fields)
    document["model"]["params"].update(embed_dim=embed_dim, n_embed=n_embed)
    config = VQGANConfig.from_preset(preset)
    assert VQGANConfig.from_taming_dict(document).to_dict() == config.to_dict()
    shapes = {flax_key_to_taming(p): taming_shape(p, s) for p, s in expected_param_shapes(config).items()}
    assert shapes["quantize.embedding.weight"] == (n_embed, embed_dim)
    assert ("encoder.mid.attn_1.q.weight" in shapes) == (preset != "ldm-vq-f4-noattn")
    rebuilt = infer_taming_config({k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()})
    assert rebuilt.to_dict() == config.to_dict()
