"""oneDNN convolutions on CPU (vqgan_flax/onednn_conv.py) against XLA's, and the fallbacks."""

import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vqgan_flax import FlaxVQGANModel, VQGANConfig, onednn_conv
from vqgan_flax.onednn_conv import CONV_ENV, OnednnUnavailable, conv_backend, conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")
LINUX_X86 = sys.platform == "linux" and platform.machine() == "x86_64"


def _dn(x, k):
    return lax.conv_dimension_numbers(x.shape, k.shape, NHWC)


def _operands(x_shape, k_shape, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal(x_shape), dtype), jnp.asarray(rng.standard_normal(k_shape) * 0.2, dtype))


def _ours(x, k, strides=(1, 1), padding="SAME"):
    return conv_general_dilated(x, k, strides, padding, dimension_numbers=_dn(x, k))


def _hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


@pytest.fixture
def onednn(monkeypatch):
    """oneDNN is a dependency on Linux x86-64: there it must build and load, not quietly fall back."""
    monkeypatch.delenv(CONV_ENV, raising=False)
    reason = onednn_conv.onednn_status()
    if reason is not None:
        assert not LINUX_X86, f"oneDNN convolutions unavailable on Linux x86-64: {reason}"
        pytest.skip(reason)


# (input, kernel, strides, padding): taming's 3x3 / stride-2 / 1x1 convs and odd shapes and pads
CASES = [
    ((2, 9, 7, 5), (3, 3, 5, 4), (1, 1), ((1, 1), (1, 1))),
    ((1, 9, 9, 8), (3, 3, 8, 6), (2, 2), ((0, 1), (0, 1))),
    ((3, 6, 5, 8), (1, 1, 8, 16), (1, 1), "SAME"),
    ((1, 11, 8, 3), (3, 3, 3, 7), (2, 1), "VALID"),
    ((1, 8, 10, 4), (4, 2, 4, 3), (1, 2), ((2, 0), (1, 3))),
]


@pytest.mark.parametrize("x_shape,k_shape,strides,padding", CASES)
def test_matches_xla_float32(onednn, x_shape, k_shape, strides, padding):
    x, k = _operands(x_shape, k_shape)
    ours = jax.jit(lambda x, k: _ours(x, k, strides, padding))(x, k)
    want = lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=_dn(x, k))
    assert ours.shape == want.shape and ours.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ours), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert "vqgan_onednn_conv" in _hlo(lambda x, k: _ours(x, k, strides, padding), x, k)


@pytest.mark.parametrize("x_shape,k_shape,strides,padding", CASES[:3])
def test_matches_xla_bfloat16(onednn, x_shape, k_shape, strides, padding):
    """bf16 operands, float32 accumulation on both sides; outputs differ by bf16 rounding only."""
    x, k = _operands(x_shape, k_shape, jnp.bfloat16)
    ours = jax.jit(lambda x, k: _ours(x, k, strides, padding))(x, k)
    want = lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=_dn(x, k))
    assert ours.dtype == jnp.bfloat16
    ours, want = np.asarray(ours, np.float32), np.asarray(want, np.float32)
    np.testing.assert_allclose(ours, want, rtol=2**-7, atol=2**-7 * np.abs(want).max())


def test_gradient_vmap_and_eager_match_xla(onednn):
    x, k = _operands((2, 8, 8, 4), (3, 3, 4, 5))

    def loss(conv, x, k):
        return jnp.sum(jnp.sin(conv(x, k, (2, 2), ((0, 1), (0, 1)), dimension_numbers=_dn(x, k))))

    ours = jax.grad(lambda x, k: loss(conv_general_dilated, x, k), argnums=(0, 1))(x, k)
    want = jax.grad(lambda x, k: loss(lax.conv_general_dilated, x, k), argnums=(0, 1))(x, k)
    for a, b in zip(ours, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    batched = jax.vmap(lambda x: conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=_dn(x, k)))(x[:, None])
    np.testing.assert_allclose(np.asarray(batched[:, 0]), np.asarray(
        lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=_dn(x, k))), rtol=1e-5, atol=1e-5)  # fmt: skip
    with jax.disable_jit():
        eager = conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=_dn(x, k))
    np.testing.assert_allclose(np.asarray(eager), np.asarray(batched[:, 0]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rhs_dilation": (2, 2)},
        {"lhs_dilation": (2, 1)},
        {"feature_group_count": 2},
        {"dimension_numbers": ("NHWC", "HWOI", "NHWC")},
        {"dtype": jnp.float16},
        {"padding": ((-1, 0), (0, 0))},
    ],
)
def test_what_onednn_does_not_take_goes_to_xla(onednn, kwargs):
    kwargs = dict(kwargs)
    x, k = _operands((1, 8, 8, 4), (3, 3, 2 if "feature_group_count" in kwargs else 4, 4), kwargs.pop("dtype", "f4"))
    kwargs.setdefault("dimension_numbers", _dn(x, k))
    padding = kwargs.pop("padding", ((1, 1), (1, 1)))
    text = _hlo(lambda x, k: conv_general_dilated(x, k, (1, 1), padding, **kwargs), x, k)
    assert "vqgan_onednn_conv" not in text and "stablehlo.convolution" in text
    ours = conv_general_dilated(x, k, (1, 1), padding, **kwargs)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(lax.conv_general_dilated(x, k, (1, 1), padding,
                                                                                         **kwargs)))  # fmt: skip


def test_gpu_and_tpu_programs_keep_xla_convolutions(onednn):
    """The oneDNN branch exists only in CPU lowerings (lax.platform_dependent)."""
    x, k = _operands((1, 8, 8, 4), (3, 3, 4, 4))
    fn = jax.jit(_ours)
    for platform_name, custom in (("cpu", True), ("cuda", False), ("tpu", False)):
        unchecked = [jax.export.DisabledSafetyCheck.custom_call(onednn_conv.TARGET)]
        text = jax.export.export(fn, platforms=[platform_name], disabled_checks=unchecked)(x, k).mlir_module()
        assert ("custom_call @vqgan_onednn_conv" in text) is custom, platform_name
        assert ("stablehlo.convolution" in text) is not custom, platform_name


def test_backend_choice(monkeypatch, onednn):
    monkeypatch.setenv(CONV_ENV, "xla")
    assert conv_backend() == "xla"
    x, k = _operands((1, 6, 6, 2), (3, 3, 2, 2))
    assert "vqgan_onednn_conv" not in _hlo(_ours, x, k)
    monkeypatch.setenv(CONV_ENV, "OneDNN")
    assert conv_backend() == "onednn"
    monkeypatch.setenv(CONV_ENV, "cudnn")
    with pytest.raises(ValueError, match=f"{CONV_ENV}='cudnn'"):
        conv_backend()


def test_unavailable_onednn_falls_back_or_fails_by_request(monkeypatch):
    monkeypatch.setattr(onednn_conv, "_load", lambda: "the onednn-cpu-gomp package is not installed")
    monkeypatch.setenv(CONV_ENV, "auto")
    assert conv_backend() == "xla"
    monkeypatch.setenv(CONV_ENV, "onednn")
    with pytest.raises(OnednnUnavailable, match="onednn-cpu-gomp package is not installed"):
        conv_backend()


def test_build_errors_name_the_cause(monkeypatch, tmp_path):
    def missing(dist):
        raise onednn_conv.importlib.metadata.PackageNotFoundError(dist)

    with monkeypatch.context() as patch:
        patch.setattr(onednn_conv.importlib.metadata, "files", missing)
        with pytest.raises(OnednnUnavailable, match="onednn-cpu-gomp package is not installed"):
            onednn_conv.build_extension(str(tmp_path))
    if not LINUX_X86:
        pytest.skip("oneDNN wheels exist for Linux x86-64 only")
    monkeypatch.setenv("CXX", "/bin/false")
    with pytest.raises(OnednnUnavailable, match="building .*onednn_conv.cc failed \\(/bin/false\\)"):
        onednn_conv.build_extension(str(tmp_path))
    assert not list(tmp_path.iterdir())  # nothing half-built is left to be loaded later


def test_build_is_cached_per_inputs(onednn, monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "g++")
    path = onednn_conv.build_extension(str(tmp_path))
    calls, run = [], subprocess.run
    monkeypatch.setattr(onednn_conv.subprocess, "run", lambda *a, **k: calls.append(a) or run(*a, **k))
    assert onednn_conv.build_extension(str(tmp_path)) == path and not calls
    monkeypatch.setenv("CXX", "c++")  # another compiler is another build
    assert onednn_conv.build_extension(str(tmp_path)) != path and len(calls) == 1


def test_handler_refuses_mismatched_dtypes(onednn):
    """The C++ side checks what it is given (the Python side never sends this)."""
    x, k = _operands((1, 4, 4, 2), (3, 3, 2, 2))
    call = jax.ffi.ffi_call(onednn_conv.TARGET, jax.ShapeDtypeStruct((1, 4, 4, 2), jnp.float32))
    attrs = {name: np.int64(v) for name, v in (("stride_h", 1), ("stride_w", 1), ("pad_top", 1), ("pad_bottom", 1),
                                               ("pad_left", 1), ("pad_right", 1))}  # fmt: skip
    with pytest.raises(Exception, match="vqgan_onednn_conv: input, kernel and output must all be float32"):
        jax.block_until_ready(call(x, k.astype(jnp.bfloat16), jnp.zeros((0,), jnp.float32), **attrs))


def test_model_tokens_equal_with_either_backend(onednn, monkeypatch):
    config = VQGANConfig.from_preset("tiny")
    pixels = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    outputs = {}
    for backend in ("onednn", "xla"):
        monkeypatch.setenv(CONV_ENV, backend)
        model = FlaxVQGANModel(config, seed=0)
        text = jax.jit(lambda p, x, m=model: m.module.apply({"params": p}, x)).lower(model.params, pixels).as_text()
        assert ("vqgan_onednn_conv" in text) is (backend == "onednn")
        outputs[backend] = (model.encode(pixels).indices, model(pixels).reconstruction)
    np.testing.assert_array_equal(np.asarray(outputs["onednn"][0]), np.asarray(outputs["xla"][0]))
    np.testing.assert_allclose(np.asarray(outputs["onednn"][1]), np.asarray(outputs["xla"][1]), atol=1e-4)
