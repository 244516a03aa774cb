"""Parity with the PyTorch reference (taming-transformers' own modules) on random weights.

Tolerances: float arrays atol = rtol = 1e-4 in float32; code indices exactly equal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from utils import assert_close, require_torch_reference

from vqgan_flax import Decoder, Encoder, FlaxVQGANModel, VQGANConfig
from vqgan_flax.conversion import convert_state_dict, taming_to_flax

require_torch_reference()  # every test here compares with PyTorch: skip (or fail) the whole module

import torch  # noqa: E402
from taming.modules.diffusionmodules.model import Decoder as TamingDecoder  # noqa: E402
from taming.modules.diffusionmodules.model import Encoder as TamingEncoder  # noqa: E402

from vqgan_flax.testing.taming_reference import TamingVQGAN, randomize_, state_dict_numpy, to_nchw_tensor, to_nhwc  # noqa: E402


def _small(**overrides) -> VQGANConfig:
    """A two-level architecture for the quick cases; overrides change one aspect at a time."""
    fields = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=8, embed_dim=8)
    return VQGANConfig(**{**fields, "n_embed": 32, "resolution": 16, **overrides})


CONFIGS = {
    # taming's f16 ImageNet architecture (ch 128, ch_mult 1,1,2,2,4, attention at 16), small codebook,
    # on a 32x32 input: attention still runs where taming runs it (decided by `resolution`).
    "f16-imagenet": (VQGANConfig.from_preset("f16-1024", n_embed=64, embed_dim=8), (1, 32, 32, 3)),
    "tiny-attn-two-levels": (
        VQGANConfig(
            ch=32,
            ch_mult=[1, 2, 2],
            num_res_blocks=1,
            attn_resolutions=[32, 8],
            z_channels=16,
            embed_dim=4,
            n_embed=48,
            resolution=32,
        ),
        (2, 32, 32, 3),
    ),
    "no-conv-resampling-nonsquare": (
        _small(num_res_blocks=2, resamp_with_conv=False),
        (2, 16, 24, 3),
    ),
    "gumbel": (
        VQGANConfig(
            ch=32,
            ch_mult=[1, 2],
            num_res_blocks=1,
            attn_resolutions=[8],
            z_channels=16,
            embed_dim=16,
            n_embed=64,
            resolution=16,
            quantizer="gumbel",
            kl_weight=1e-8,
        ),
        (2, 16, 16, 3),
    ),
}


def _inputs(shape, seed):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_full_model_matches_taming(name):
    config, shape = CONFIGS[name]
    reference = randomize_(TamingVQGAN(config), seed=10)
    params, _ = taming_to_flax(state_dict_numpy(reference), config)
    model = FlaxVQGANModel(config, _do_init=False)
    x = _inputs(shape, seed=11)

    with torch.no_grad():
        z = reference.quant_conv(reference.encoder(to_nchw_tensor(x)))
        if config.quantizer == "gumbel":
            logits = reference.quantize.proj(z)
            ref_indices = logits.argmax(1)  # taming's eval path adds noise; the noise-free code is the argmax
            ref_quant = reference.quantize.embed(ref_indices).permute(0, 3, 1, 2)
        else:
            ref_quant, _, (_, _, ref_indices) = reference.quantize(z)
        ref_indices = ref_indices.reshape(shape[0], -1).numpy()
        ref_reconstruction = reference.decode(ref_quant)

    encoded = model.encode(x, params=params)
    assert_close(encoded.latents, to_nhwc(z), "z")
    np.testing.assert_array_equal(encoded.indices, ref_indices)
    assert_close(encoded.quant_states, to_nhwc(ref_quant), "quant")
    if config.quantizer == "gumbel":
        assert_close(encoded.logits, to_nhwc(logits), "logits")
    assert_close(model.decode(encoded.quant_states, params=params), to_nhwc(ref_reconstruction), "decode")
    latent_shape = (shape[1] // config.downsampling_factor, shape[2] // config.downsampling_factor)
    decoded = model.decode_code(encoded.indices, params=params, latent_shape=latent_shape)
    assert_close(decoded, to_nhwc(ref_reconstruction), "decode_code")


def _compare_module(reference_cls, module_cls, config, input_shape, seed):
    """A bare taming Encoder/Decoder and ours with the same random weights, on the same input."""
    reference = randomize_(reference_cls(**config.to_taming_ddconfig()), seed=seed)
    module = module_cls(config)
    x = _inputs(input_shape, seed=seed + 1)
    params = _module_params(reference, module, x)
    with torch.no_grad():
        expected = to_nhwc(reference(to_nchw_tensor(x)))
    assert_close(module.apply({"params": params}, x), expected, module_cls.__name__)
    return expected


@pytest.mark.parametrize("double_z", [False, True])
def test_encoder_matches_taming(double_z):
    config = _small(attn_resolutions=[8], z_channels=4, double_z=double_z)
    expected = _compare_module(TamingEncoder, Encoder, config, (1, 16, 16, 3), seed=12)
    assert expected.shape[-1] == (8 if double_z else 4)


def test_decoder_give_pre_end_matches_taming():
    config = _small(z_channels=4, give_pre_end=True)
    expected = _compare_module(TamingDecoder, Decoder, config, (1, 8, 8, 4), seed=14)
    assert expected.shape == (1, 16, 16, 32)  # features before norm_out / conv_out


def _module_params(reference, module, x):
    """Convert a bare taming Encoder/Decoder state dict onto the Flax module's own init shapes."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]
    expected = {k: tuple(v.shape) for k, v in flatten_dict(shapes).items()}
    params, _ = convert_state_dict(state_dict_numpy(reference), expected)
    return params


@pytest.mark.parametrize("legacy", [True, False])
def test_vq_training_loss_and_straight_through_match_taming(legacy):
    config = _small(legacy_loss=legacy, beta=0.25)
    reference = randomize_(TamingVQGAN(config, legacy=legacy), seed=16)
    params, _ = taming_to_flax(state_dict_numpy(reference), config)
    model = FlaxVQGANModel(config, _do_init=False)
    x = _inputs((2, 16, 16, 3), seed=17)

    reference.train()
    z = reference.quant_conv(reference.encoder(to_nchw_tensor(x)))
    quant, ref_loss, _ = reference.quantize(z)
    # A gradient through both the straight-through path and the loss reaches codebook and encoder.
    (quant.square().mean() + ref_loss).backward()
    ref_codebook_grad = reference.quantize.embedding.weight.grad.numpy()
    ref_conv_in_grad = reference.encoder.conv_in.weight.grad.numpy().transpose(2, 3, 1, 0)

    def objective(p):
        out = model.encode(x, params=p, train=True)
        return jnp.mean(out.quant_states.astype(jnp.float32) ** 2) + out.loss, out.loss

    (_, loss), grads = jax.value_and_grad(objective, has_aux=True)(params)
    assert_close(loss, ref_loss.item(), "vq loss")
    assert_close(grads["quantize"]["embedding"]["embedding"], ref_codebook_grad, "codebook grad", atol=1e-5)
    assert_close(grads["encoder"]["conv_in"]["kernel"], ref_conv_in_grad, "encoder grad", atol=1e-5)


def test_gumbel_kl_term_matches_taming():
    config = CONFIGS["gumbel"][0]
    reference = randomize_(TamingVQGAN(config), seed=18)
    params, _ = taming_to_flax(state_dict_numpy(reference), config)
    model = FlaxVQGANModel(config, _do_init=False)
    x = _inputs((2, 16, 16, 3), seed=19)
    with torch.no_grad():
        _, ref_kl, _ = reference.quantize(reference.quant_conv(reference.encoder(to_nchw_tensor(x))))
    assert_close(model.encode(x, params=params).loss, ref_kl.item(), "gumbel kl", atol=1e-12, rtol=1e-4)


def _torchvision_with_random_vgg16():
    """A stand-in for ``torchvision`` holding only ``models.vgg16``: VGG16's ``features`` with the same
    layer indices and shapes (taming slices it by index), randomly initialised: nothing to download."""
    import types

    layers, in_channels = [], 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if width == "M":
            layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [torch.nn.Conv2d(in_channels, width, 3, padding=1), torch.nn.ReLU(inplace=True)]
            in_channels = width
    vgg16 = lambda pretrained=False, **_: types.SimpleNamespace(features=torch.nn.Sequential(*layers))  # noqa: E731
    module = types.ModuleType("torchvision")
    module.models = types.SimpleNamespace(vgg16=vgg16)
    return module


def test_lpips_matches_taming(monkeypatch):
    """Our LPIPS equals taming's ``LPIPS`` module on the same random VGG16 and linear heads."""
    import importlib
    import sys

    from utils import random_lpips_state_dict

    from vqgan_flax.train.lpips import LPIPS, lpips_params_from_state_dict

    monkeypatch.setitem(sys.modules, "torchvision", _torchvision_with_random_vgg16())
    for name in [m for m in sys.modules if m.startswith("taming.modules.losses")]:
        monkeypatch.delitem(sys.modules, name)
    taming_lpips = importlib.import_module("taming.modules.losses.lpips")
    monkeypatch.setattr(taming_lpips.LPIPS, "load_from_pretrained", lambda self, name="vgg_lpips": None)
    reference = taming_lpips.LPIPS().eval()
    state = random_lpips_state_dict(seed=3)
    missing, unexpected = reference.load_state_dict({k: torch.from_numpy(v).float() for k, v in state.items()},
                                                    strict=False)  # fmt: skip
    assert unexpected == [] and sorted(missing) == ["scaling_layer.scale", "scaling_layer.shift"]  # buffers

    rng = np.random.default_rng(4)
    images = rng.uniform(-1, 1, (3, 48, 40, 3)).astype(np.float32)
    others = np.clip(images + rng.normal(0, 0.3, images.shape), -1, 1).astype(np.float32)
    with torch.no_grad():
        expected = reference(to_nchw_tensor(images), to_nchw_tensor(others)).numpy().reshape(-1)
    ours = LPIPS().apply({"params": lpips_params_from_state_dict(state)}, images, others)
    assert len(set(np.round(expected, 6))) == 3  # three different distances: a per-image mix-up would show
    assert_close(ours, expected, "LPIPS vs taming", atol=1e-6, rtol=1e-4)
