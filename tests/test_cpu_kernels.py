"""The CPU kernels (vqgan_flax/kernels/cpu.py: oneDNN convolution, fused GroupNorm) against XLA's
ops, and the fallbacks."""

import contextlib
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.kernels import cpu as cpu_kernels
from vqgan_flax.kernels.cpu import KERNELS_ENV, KernelsUnavailable, conv2d, group_norm, kernel_backend, upsample_conv

NHWC = ("NHWC", "HWIO", "NHWC")
LINUX_X86 = sys.platform == "linux" and platform.machine() == "x86_64"


@contextlib.contextmanager
def monkeypatch_env(name, value):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(name, value)
        yield


def _dn(x, k):
    return lax.conv_dimension_numbers(x.shape, k.shape, NHWC)


def _operands(x_shape, k_shape, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal(x_shape), dtype), jnp.asarray(rng.standard_normal(k_shape) * 0.2, dtype))


def _ours(x, k, strides=(1, 1), padding="SAME"):
    return conv2d(x, k, jnp.zeros(k.shape[3:], k.dtype), strides, padding)


def _hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


@pytest.fixture
def onednn(monkeypatch):
    """oneDNN is a dependency on Linux x86-64: there it must build and load, not quietly fall back."""
    monkeypatch.setenv(KERNELS_ENV, "on")
    reason = cpu_kernels.kernels_status()
    if reason is not None:
        assert not LINUX_X86, f"CPU kernels unavailable on Linux x86-64: {reason}"
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
    # oneDNN's bf16 convolutions need AVX-512 or AMX: where the CPU lacks them XLA computes them.
    uses_onednn = "vqgan_onednn_conv" in _hlo(lambda x, k: _ours(x, k, strides, padding), x, k)
    assert uses_onednn == cpu_kernels.onednn_has_bfloat16()


def test_bfloat16_convs_take_xla_where_onednn_lacks_them(onednn, monkeypatch):
    """On a CPU without AVX-512 oneDNN cannot create a bf16 convolution (the compiled program would
    fail at its first call): bf16 convs and upsampling convs go to XLA, float32 ones stay oneDNN's."""
    monkeypatch.setattr(cpu_kernels, "onednn_has_bfloat16", lambda: False)
    x16, k16 = _operands((1, 8, 8, 4), (3, 3, 4, 4), jnp.bfloat16)
    assert "vqgan_onednn_conv" not in _hlo(lambda x, k: _ours(x, k), x16, k16)
    assert "vqgan_onednn_conv" not in _hlo(upsample_conv, x16, k16)
    out = jax.jit(upsample_conv)(x16, k16)
    assert out.shape == (1, 16, 16, 4) and bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
    x32, k32 = _operands((1, 8, 8, 4), (3, 3, 4, 4))
    assert "vqgan_onednn_conv" in _hlo(lambda x, k: _ours(x, k), x32, k32)


def test_bfloat16_probe_agrees_with_the_cpu(onednn):
    """The probe's answer is what running a bf16 convolution through the handler gives."""
    call = jax.jit(lambda x, k: cpu_kernels._onednn_conv(x, k, *[jnp.zeros((0,), jnp.bfloat16)] * 2, (1, 1),
                                                         ((1, 1), (1, 1))))  # fmt: skip
    x, k = _operands((1, 4, 4, 8), (3, 3, 8, 8), jnp.bfloat16)
    try:
        jax.block_until_ready(call(x, k))
        ran = True
    except jax.errors.JaxRuntimeError:
        ran = False
    assert ran == cpu_kernels.onednn_has_bfloat16()


def test_gradient_vmap_and_eager_match_xla(onednn):
    x, k = _operands((2, 8, 8, 4), (3, 3, 4, 5))

    def xla(x, k, strides=(1, 1), padding="SAME"):
        return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=_dn(x, k))

    ours = jax.grad(lambda x, k: jnp.sum(jnp.sin(_ours(x, k, (2, 2), ((0, 1), (0, 1))))), argnums=(0, 1))(x, k)
    want = jax.grad(lambda x, k: jnp.sum(jnp.sin(xla(x, k, (2, 2), ((0, 1), (0, 1))))), argnums=(0, 1))(x, k)
    for a, b in zip(ours, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    batched = jax.vmap(lambda x: _ours(x, k))(x[:, None])
    np.testing.assert_allclose(np.asarray(batched[:, 0]), np.asarray(xla(x, k)), rtol=1e-5, atol=1e-5)
    with jax.disable_jit():
        eager = _ours(x, k)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(batched[:, 0]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype,padding", [(jnp.float16, ((1, 1), (1, 1))), (jnp.float32, ((-1, 0), (0, 0)))])
def test_what_onednn_does_not_take_goes_to_xla(onednn, dtype, padding):
    """float16, and negative pads (a crop oneDNN's pads cannot express), stay XLA's convolution."""
    x, k = _operands((1, 8, 8, 4), (3, 3, 4, 4), dtype)
    text = _hlo(lambda x, k: _ours(x, k, (1, 1), padding), x, k)
    assert "vqgan_onednn_conv" not in text and "stablehlo.convolution" in text
    want = lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=_dn(x, k))
    np.testing.assert_array_equal(np.asarray(_ours(x, k, (1, 1), padding)), np.asarray(want))


def test_gpu_and_tpu_programs_keep_xla_convolutions(onednn):
    """The oneDNN branch exists only in CPU lowerings (lax.platform_dependent)."""
    x, k = _operands((1, 8, 8, 4), (3, 3, 4, 4))
    fn = jax.jit(_ours)
    for platform_name, custom in (("cpu", True), ("cuda", False), ("tpu", False)):
        unchecked = [jax.export.DisabledSafetyCheck.custom_call(cpu_kernels.CONV_TARGET)]
        text = jax.export.export(fn, platforms=[platform_name], disabled_checks=unchecked)(x, k).mlir_module()
        assert ("custom_call @vqgan_onednn_conv" in text) is custom, platform_name
        assert ("stablehlo.convolution" in text) is not custom, platform_name


def test_backend_choice(monkeypatch, onednn):
    monkeypatch.setenv(KERNELS_ENV, "off")
    assert kernel_backend() == "xla"
    x, k = _operands((1, 6, 6, 2), (3, 3, 2, 2))
    assert "vqgan_onednn_conv" not in _hlo(_ours, x, k)
    monkeypatch.setenv(KERNELS_ENV, "On")
    assert kernel_backend() == "native"
    monkeypatch.setenv(KERNELS_ENV, "auto")  # this suite runs with 8 CPU devices (conftest.py)
    assert jax.device_count() == 8 and kernel_backend() == "xla"
    monkeypatch.setenv(KERNELS_ENV, "cudnn")
    with pytest.raises(ValueError, match=f"{KERNELS_ENV}='cudnn'"):
        kernel_backend()


def test_unavailable_onednn_falls_back_or_fails_by_request(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_load", lambda: "the onednn-cpu-gomp package is not installed")
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    monkeypatch.setenv(KERNELS_ENV, "auto")
    assert kernel_backend() == "xla"
    monkeypatch.setenv(KERNELS_ENV, "on")
    with pytest.raises(KernelsUnavailable, match="onednn-cpu-gomp package is not installed"):
        kernel_backend()


def test_build_errors_name_the_cause(monkeypatch, tmp_path):
    def missing(dist):
        raise cpu_kernels.importlib.metadata.PackageNotFoundError(dist)

    with monkeypatch.context() as patch:
        patch.setattr(cpu_kernels.importlib.metadata, "files", missing)
        with pytest.raises(KernelsUnavailable, match="onednn-cpu-gomp package is not installed"):
            cpu_kernels.build_extension(str(tmp_path))
    if not LINUX_X86:
        pytest.skip("oneDNN wheels exist for Linux x86-64 only")
    monkeypatch.setenv("CXX", "/bin/false")
    with pytest.raises(KernelsUnavailable, match="building the CPU kernels in .*csrc failed \\(/bin/false\\)"):
        cpu_kernels.build_extension(str(tmp_path))
    assert not list(tmp_path.iterdir())  # nothing half-built is left to be loaded later


def test_build_is_cached_per_inputs(onednn, monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "g++")
    path = cpu_kernels.build_extension(str(tmp_path))
    calls, run = [], subprocess.run
    monkeypatch.setattr(cpu_kernels.subprocess, "run", lambda *a, **k: calls.append(a) or run(*a, **k))
    assert cpu_kernels.build_extension(str(tmp_path)) == path and not calls
    monkeypatch.setenv("CXX", "c++")  # another compiler is another build
    assert cpu_kernels.build_extension(str(tmp_path)) != path and len(calls) == 1


def test_handler_refuses_mismatched_dtypes(onednn):
    """The C++ side checks what it is given (the Python side never sends this)."""
    x, k = _operands((1, 4, 4, 2), (3, 3, 2, 2))
    call = jax.ffi.ffi_call(cpu_kernels.CONV_TARGET, jax.ShapeDtypeStruct((1, 4, 4, 2), jnp.float32))
    attrs = {name: np.int64(v) for name, v in (("stride_h", 1), ("stride_w", 1), ("pad_top", 1), ("pad_bottom", 1),
                                               ("pad_left", 1), ("pad_right", 1))}  # fmt: skip
    attrs["transposed"] = False
    with pytest.raises(Exception, match="vqgan_onednn_conv: input, kernel and output must all be float32"):
        jax.block_until_ready(call(x, k.astype(jnp.bfloat16), *[jnp.zeros((0,), jnp.float32)] * 2, **attrs))


def test_model_tokens_equal_with_either_backend(onednn, monkeypatch):
    config = VQGANConfig.from_preset("tiny")
    pixels = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    outputs = {}
    for setting in ("on", "off"):
        monkeypatch.setenv(KERNELS_ENV, setting)
        model = FlaxVQGANModel(config, seed=0)
        text = jax.jit(lambda p, x, m=model: m.module.apply({"params": p}, x)).lower(model.params, pixels).as_text()
        for target in (cpu_kernels.CONV_TARGET, cpu_kernels.GROUP_NORM_TARGET):
            assert (f"custom_call @{target}" in text) is (setting == "on"), target
        outputs[setting] = (model.encode(pixels).indices, model(pixels).reconstruction)
    np.testing.assert_array_equal(np.asarray(outputs["on"][0]), np.asarray(outputs["off"][0]))
    np.testing.assert_allclose(np.asarray(outputs["on"][1]), np.asarray(outputs["off"][1]), atol=1e-4)


def _flax_group_norm(x, scale, bias, swish):
    """The reference: flax's own GroupNorm (two-pass statistics, float32), then swish."""
    import flax.linen as nn

    norm = nn.GroupNorm(num_groups=32, epsilon=1e-6, dtype=jnp.float32, use_fast_variance=False)
    y = norm.apply({"params": {"scale": scale, "bias": bias}}, x.astype(jnp.float32))
    return nn.swish(y) if swish else y


@pytest.mark.parametrize("shape", [(1, 8, 8, 64), (2, 5, 7, 96), (1, 33, 17, 32)])
@pytest.mark.parametrize("swish", [False, True])
def test_group_norm_matches_flax(onednn, shape, swish):
    rng = np.random.default_rng(2)
    # a large common offset: one-pass (E[x²] - E[x]²) statistics would lose most digits here
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 40, jnp.float32)
    scale, bias = (jnp.asarray(rng.standard_normal(shape[-1:]), jnp.float32) for _ in range(2))
    want = np.asarray(_flax_group_norm(x, scale, bias, swish))
    fn = jax.jit(lambda x, s, b: group_norm(x, s, b, 32, 1e-6, jnp.float32, swish))
    assert f"custom_call @{cpu_kernels.GROUP_NORM_TARGET}" in fn.lower(x, scale, bias).as_text()
    np.testing.assert_allclose(np.asarray(fn(x, scale, bias)), want, rtol=1e-5, atol=2e-5)
    with monkeypatch_env(KERNELS_ENV, "off"):  # the XLA path computes the same thing
        xla = jax.jit(lambda x, s, b: group_norm(x, s, b, 32, 1e-6, jnp.float32, swish))
        assert "custom_call" not in xla.lower(x, scale, bias).as_text()
        np.testing.assert_allclose(np.asarray(xla(x, scale, bias)), want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("backend", ["on", "off"])
def test_group_norm_bfloat16_in_and_out(onednn, backend):
    """bf16 in, float32 arithmetic inside (statistics, centring, scaling) on both backends. The
    common offset makes bf16 arithmetic show: at 40 a bf16 step is 0.25, so a mean or a centred
    value rounded to bf16 moves the output by up to ~0.06 (its std is 2), far past the tolerance."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((1, 6, 6, 64)) * 2 + 40, jnp.bfloat16)
    scale, bias = jnp.ones(64), jnp.asarray(rng.standard_normal(64), jnp.float32)
    want = np.asarray(_flax_group_norm(x, scale, bias, True))
    with monkeypatch_env(KERNELS_ENV, backend):
        for out_dtype in (jnp.bfloat16, jnp.float32):
            fn = jax.jit(lambda x, d=out_dtype: group_norm(x, scale, bias, 32, 1e-6, d, True))
            assert (f"custom_call @{cpu_kernels.GROUP_NORM_TARGET}" in fn.lower(x).as_text()) is (backend == "on")
            ours = fn(x)
            assert ours.dtype == out_dtype
            tol = 2**-8 if out_dtype == jnp.bfloat16 else 1e-5  # the output's rounding only
            np.testing.assert_allclose(np.asarray(ours, np.float32), want, rtol=tol, atol=tol)


def test_group_norm_keeps_nan_and_extremes(onednn):
    """swish's exp is an approximation clamped to [-87, 88]: no overflow to inf, NaN stays NaN."""
    x = np.zeros((1, 4, 4, 32), np.float32)
    x[0, 0, 0, :] = 1e4  # normalised to about +-3.9 per group: moderate
    scale = jnp.full(32, 100.0)  # pushes the normalised values to +-390: swish's tails
    ours = np.asarray(jax.jit(lambda x: group_norm(x, scale, jnp.zeros(32), 32, 1e-6, jnp.float32, True))(x))
    np.testing.assert_allclose(ours, np.asarray(_flax_group_norm(jnp.asarray(x), scale, jnp.zeros(32), True)),
                               rtol=1e-5, atol=1e-4)  # fmt: skip
    x[0, 1, 1, 5] = np.nan
    ours = np.asarray(jax.jit(lambda x: group_norm(x, jnp.ones(32), jnp.zeros(32), 32, 1e-6, jnp.float32, True))(x))
    assert np.isnan(ours[..., 5]).all() and np.isfinite(np.delete(ours, 5, axis=-1)).all()


def test_group_norm_gradient_matches_flax(onednn):
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 64)), jnp.float32)
    scale, bias = jnp.asarray(rng.uniform(0.5, 1.5, 64), jnp.float32), jnp.zeros(64)
    ours = jax.grad(lambda x, s: jnp.sum(group_norm(x, s, bias, 32, 1e-6, jnp.float32, True) ** 2), (0, 1))(x, scale)
    want = jax.grad(lambda x, s: jnp.sum(_flax_group_norm(x, s, bias, True) ** 2), (0, 1))(x, scale)
    for a, b in zip(ours, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_group_norm_handler_checks_groups(onednn):
    call = jax.ffi.ffi_call(cpu_kernels.GROUP_NORM_TARGET, jax.ShapeDtypeStruct((1, 2, 2, 48), jnp.float32))
    with pytest.raises(Exception, match="vqgan_group_norm: channels 48 do not fit groups 32"):
        jax.block_until_ready(call(jnp.ones((1, 2, 2, 48)), jnp.ones(48), jnp.zeros(48), groups=np.int64(32),
                                   epsilon=np.float32(1e-6), swish=False))  # fmt: skip


def test_sharded_program_equals_one_device(onednn):
    """Under "on" with a batch sharded over 8 devices the kernels run on gathered operands; the
    result must equal one device's (a shared oneDNN scratchpad once made it differ)."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    model = FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=0)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)), jnp.float32)
    fn = jax.jit(lambda p, x: model.module.apply({"params": p}, x)[0])
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = fn(
        jax.device_put(model.params, NamedSharding(mesh, P())), jax.device_put(x, NamedSharding(mesh, P("data")))
    )
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(fn(model.params, x)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(2, 5, 7, 8), (1, 1, 1, 4), (1, 16, 16, 32)])
def test_upsample_conv_equals_upsampling_then_conv(onednn, dtype, shape):
    """One stride-2 transposed 4x4 conv with summed taps = nearest x2 upsampling + 3x3 conv."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    k = jnp.asarray(rng.standard_normal((3, 3, shape[-1], 6)) * 0.2, dtype)
    upsampled = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    want = np.asarray(lax.conv_general_dilated(upsampled, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC),
                      np.float32)  # fmt: skip
    fn = jax.jit(upsample_conv)
    # bf16 goes through oneDNN only where the CPU has bf16 convolutions (AVX-512 / AMX), else XLA's.
    onednn = dtype == jnp.float32 or cpu_kernels.onednn_has_bfloat16()
    assert ("transposed = true" in fn.lower(x, k).as_text()) == onednn
    ours = fn(x, k)
    assert ours.shape == (shape[0], 2 * shape[1], 2 * shape[2], 6) and ours.dtype == dtype
    # bf16: the summed taps are rounded once more than the separate products
    tol = 1e-5 if dtype == jnp.float32 else 2**-6 * np.abs(want).max()
    np.testing.assert_allclose(np.asarray(ours, np.float32), want, rtol=tol, atol=tol)


def test_upsample_conv_gradient_matches_xla(onednn):
    rng = np.random.default_rng(6)
    x, k = jnp.asarray(rng.standard_normal((1, 4, 5, 8))), jnp.asarray(rng.standard_normal((3, 3, 8, 4)) * 0.2)
    ours = jax.grad(lambda x, k: jnp.sum(jnp.sin(upsample_conv(x, k))), (0, 1))(x, k)
    want = jax.grad(lambda x, k: jnp.sum(jnp.sin(cpu_kernels._upsample_conv_xla(x, k))), (0, 1))(x, k)
    for a, b in zip(ours, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transposed,out_hw", [(False, (4, 4)), (False, (3, 4)), (True, (9, 8))])
def test_conv_handler_refuses_an_output_size_it_would_not_fill(onednn, transposed, out_hw):
    """XLA allocates the output; a size that does not follow from input, kernel, strides and pads
    would make oneDNN read or write outside it."""
    x, k = _operands((1, 4, 4, 2), (3, 3, 2, 2) if not transposed else (4, 4, 2, 2))
    call = jax.ffi.ffi_call(cpu_kernels.CONV_TARGET, jax.ShapeDtypeStruct((1, *out_hw, 2), jnp.float32))
    stride = 2 if transposed else 1
    attrs = {"stride_h": np.int64(stride), "stride_w": np.int64(stride), "pad_top": np.int64(1),
             "pad_bottom": np.int64(1), "pad_left": np.int64(1), "pad_right": np.int64(1),
             "transposed": transposed}  # fmt: skip
    if out_hw == ((8, 8) if transposed else (4, 4)):
        jax.block_until_ready(call(x, k, *[jnp.zeros((0,), jnp.float32)] * 2, **attrs))  # the right size runs
        return
    with pytest.raises(Exception, match="output height/width do not follow from the input"):
        jax.block_until_ready(call(x, k, *[jnp.zeros((0,), jnp.float32)] * 2, **attrs))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_conv2d_fuses_the_bias(onednn, dtype):
    x, k = _operands((2, 7, 6, 8), (3, 3, 8, 5), dtype)
    bias = jnp.asarray(np.random.default_rng(7).standard_normal(5), dtype)
    fn = jax.jit(lambda x, k, b: conv2d(x, k, b, (2, 2), ((0, 1), (0, 1))))
    text = fn.lower(x, k, bias).as_text()
    if dtype == jnp.float32 or cpu_kernels.onednn_has_bfloat16():  # else XLA computes bf16 convs
        assert "tensor<5x" in text.split("custom_call @vqgan_onednn_conv")[1].split("->")[0]  # the bias goes in
    want = lax.conv_general_dilated(x, k, (2, 2), ((0, 1), (0, 1)), dimension_numbers=NHWC) + bias
    want = np.asarray(want, np.float32)
    tol = 1e-5 if dtype == jnp.float32 else 2**-7 * np.abs(want).max()
    np.testing.assert_allclose(np.asarray(fn(x, k, bias), np.float32), want, rtol=tol, atol=tol)
    if dtype == jnp.float32:
        grads = jax.grad(lambda x, k, b: jnp.sum(jnp.sin(fn(x, k, b))), (0, 1, 2))(x, k, bias)
        wants = jax.grad(lambda x, k, b: jnp.sum(jnp.sin(lax.conv_general_dilated(
            x, k, (2, 2), ((0, 1), (0, 1)), dimension_numbers=NHWC) + b)), (0, 1, 2))(x, k, bias)  # fmt: skip
        for a, b in zip(grads, wants):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_conv2d_adds_the_residual_and_leaves_it_intact(onednn):
    """The residual operand shares the output's buffer; XLA must copy it where it is read later."""
    x, k = _operands((2, 6, 6, 8), (3, 3, 8, 8))
    bias = jnp.linspace(-1, 1, 8)
    residual = jnp.asarray(np.random.default_rng(8).standard_normal((2, 6, 6, 8)), jnp.float32)

    def ours(x, k, b, r):
        return conv2d(x, k, b, (1, 1), ((1, 1), (1, 1)), residual=r) * 2.0 + r  # r read again after the call

    def want(x, k, b, r):
        return (lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC) + b + r) * 2.0 + r

    call = jax.jit(ours).lower(x, k, bias, residual).as_text().split("custom_call @vqgan_onednn_conv")[1]
    assert call.split("->")[0].count("tensor<2x6x6x8xf32>") == 2  # x and the residual go in
    np.testing.assert_allclose(np.asarray(jax.jit(ours)(x, k, bias, residual)), np.asarray(want(x, k, bias, residual)),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    grads = jax.grad(lambda *a: jnp.sum(jnp.sin(ours(*a))), (0, 1, 2, 3))(x, k, bias, residual)
    wants = jax.grad(lambda *a: jnp.sum(jnp.sin(want(*a))), (0, 1, 2, 3))(x, k, bias, residual)
    # The kernel's gradient sums 72 products per entry, its largest entry ~45: float32 rounding of
    # those sums differs between oneDNN's and XLA's order by up to 1.9e-5 on an AVX2 CPU, so the
    # absolute bound is 1e-6 of each gradient's largest entry (a wrong weight would be off by O(1)).
    for a, b in zip(grads, wants):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))
