"""FlaxVQGANModel behaviour: API shapes, save/load, dtypes, training path, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from utils import FIXTURES, assert_close

from vqgan_flax import FlaxVQGANModel, VQGANConfig, VQModel, indices_to_grid


@pytest.fixture(scope="module")
def tiny_model():
    return FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=0)


@pytest.fixture(scope="module")
def pretrained_model():
    """Real (random-weight) vqgan-jax checkpoint: latents spread over the codebook."""
    return FlaxVQGANModel.from_pretrained(FIXTURES / "vqganjax" / "checkpoint")


def _images(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def test_shapes_and_unpacking(tiny_model):
    x = _images((2, 16, 16, 3))
    quant_states, indices = tiny_model.encode(x)
    assert quant_states.shape == (2, 8, 8, 8) and indices.shape == (2, 64) and indices.dtype == jnp.int32
    reconstruction, indices2 = tiny_model(x)
    assert reconstruction.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(indices, indices2)
    out = tiny_model(x)
    assert out[0] is out.reconstruction and out[1] is out.indices and len(out) == 2
    assert out.latents.shape == (2, 8, 8, 8) and out.loss.shape == ()


def test_vqmodel_alias_is_the_model():
    assert VQModel is FlaxVQGANModel


@pytest.mark.parametrize("fmt", ["safetensors", "msgpack"])
def test_save_pretrained_round_trip(tiny_model, tmp_path, fmt):
    tiny_model.save_pretrained(tmp_path, safe_serialization=fmt == "safetensors")
    expected_file = "model.safetensors" if fmt == "safetensors" else "flax_model.msgpack"
    assert (tmp_path / expected_file).is_file() and (tmp_path / "config.json").is_file()
    loaded = FlaxVQGANModel.from_pretrained(tmp_path)
    assert loaded.config.to_dict() == {**tiny_model.config.to_dict(), "architectures": ["VQGANModel"]}
    for a, b in zip(jax.tree.leaves(tiny_model.params), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(a, b)
    x = _images((1, 16, 16, 3))
    np.testing.assert_array_equal(loaded(x).reconstruction, tiny_model(x).reconstruction)


def test_do_init_false_returns_params(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    model, params = FlaxVQGANModel.from_pretrained(tmp_path, _do_init=False)
    with pytest.raises(ValueError, match="_do_init=False"):
        _ = model.params
    x = _images((1, 16, 16, 3))
    np.testing.assert_array_equal(model(x, params=params).indices, tiny_model(x).indices)
    from flax.traverse_util import flatten_dict

    def shapes(tree):
        return {key: (leaf.shape, leaf.dtype) for key, leaf in flatten_dict(tree).items()}

    assert shapes(params) == shapes(tiny_model.params)  # every weight, each in its place


def test_missing_weights_is_an_error(tiny_model, tmp_path):
    from flax.traverse_util import flatten_dict, unflatten_dict

    flat = flatten_dict(tiny_model.params)
    del flat[("decoder", "conv_out", "kernel")]
    FlaxVQGANModel(tiny_model.config, _do_init=False).save_pretrained(tmp_path, params=unflatten_dict(flat))
    with pytest.raises(ValueError, match=r"lacks 1 of .*decoder/conv_out/kernel"):
        FlaxVQGANModel.from_pretrained(tmp_path)


def test_non_square_and_other_sizes(pretrained_model):
    for shape in [(1, 32, 48, 3), (2, 24, 8, 3), (1, 64, 64, 3)]:
        quant_states, indices = pretrained_model.encode(_images(shape))
        h, w = shape[1] // 4, shape[2] // 4
        assert quant_states.shape == (shape[0], h, w, 8) and indices.shape == (shape[0], h * w)
        decoded = pretrained_model.decode_code(indices, latent_shape=(h, w))
        assert decoded.shape == shape
        assert_close(decoded, pretrained_model.decode(quant_states), "decode_code vs decode")


def test_rejects_sizes_not_divisible_by_the_factor(tiny_model):
    with pytest.raises(ValueError, match=r"divisible by 2; got \(1, 15, 16, 3\)"):
        tiny_model.encode(_images((1, 15, 16, 3)))
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        tiny_model.encode(_images((16, 16, 3)))


def test_decode_code_index_shapes(pretrained_model):
    indices = np.asarray(pretrained_model.encode(_images((2, 32, 48, 3))).indices)  # 8x12 grid
    reference = pretrained_model.decode_code(indices.reshape(2, 8, 12))
    assert_close(pretrained_model.decode_code(indices, latent_shape=(8, 12)), reference, "(B, N) + latent_shape")
    square = indices[:, :64]
    assert_close(pretrained_model.decode_code(square), pretrained_model.decode_code(square.reshape(2, 8, 8)), "square")
    with pytest.raises(ValueError, match="96 tokens per image is not a square"):
        pretrained_model.decode_code(indices)
    with pytest.raises(ValueError, match=r"latent_shape=\(8, 8\) holds 64 tokens, indices have 96"):
        pretrained_model.decode_code(indices, latent_shape=(8, 8))
    with pytest.raises(ValueError, match=r"do not match latent_shape"):
        indices_to_grid(indices.reshape(2, 8, 12), latent_shape=(12, 8))
    with pytest.raises(ValueError, match=r"\(B, N\) or \(B, h, w\)"):
        indices_to_grid(indices.reshape(-1))


def test_the_grid_travels_with_the_tokens_and_guesses_warn(pretrained_model):
    """A 4:1 image's flat tokens can be a perfect square (an 8x32 grid is 256 tokens, as 16x16):
    the encoder output says the grid, and decode_code warns where it would have to guess."""
    import warnings

    config = pretrained_model.config
    f = config.downsampling_factor
    native = config.latent_shape(config.resolution, config.resolution)
    wide = (native[0] // 2, native[1] * 2)  # same token count as the native square, other shape
    out = pretrained_model.encode(_images((2, wide[0] * f, wide[1] * f, 3)))
    assert out.latent_shape == wide and out.grid_indices.shape == (2, *wide)
    full = pretrained_model(_images((1, wide[0] * f, wide[1] * f, 3)))
    assert full.latent_shape == wide and full.grid_indices.shape == (1, *wide)
    reference = pretrained_model.decode_code(out.grid_indices)
    assert reference.shape == (2, wide[0] * f, wide[1] * f, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the native square grid is vqgan-jax's convention: no warning
        pretrained_model.decode_code(out.indices, latent_shape=wide)
        assert pretrained_model.decode_code(out.indices).shape == (2, native[0] * f, native[1] * f, 3)
    other = (native[0] // 2) ** 2  # square, but not the model's grid: a guess, said out loud
    with pytest.warns(FutureWarning, match=rf"{other} flat tokens decoded as a {native[0] // 2}x{native[0] // 2} grid"):
        pretrained_model.decode_code(out.indices[:, :other])


def test_jit_matches_eager(pretrained_model):
    """The compiled public methods equal the module run op by op (``jax.disable_jit``): XLA's fusion
    may reorder float sums, nothing else."""
    x = _images((2, 32, 32, 3), seed=1)
    variables = {"params": pretrained_model.params}
    jitted = pretrained_model(x, micro_batch_size=2)
    with jax.disable_jit():
        eager = pretrained_model.module.apply(variables, jnp.asarray(x))
        assert not isinstance(eager.reconstruction, jax.core.Tracer)
        eager_decoded = pretrained_model.module.apply(variables, eager.indices, method="decode_code")
    np.testing.assert_array_equal(jitted.indices, eager.indices)
    assert_close(jitted.reconstruction, eager.reconstruction, "jit", atol=1e-5, rtol=1e-5)
    assert_close(jitted.latents, eager.latents, "jit latents", atol=1e-5, rtol=1e-5)
    assert_close(pretrained_model.decode_code(jitted.indices), eager_decoded, "jit decode_code", atol=1e-5, rtol=1e-5)
    # The eager path is really different code: a changed weight moves it, and the compiled call sees it too.
    shifted = jax.tree.map(lambda a: a, pretrained_model.params)
    shifted["decoder"]["conv_out"]["bias"] = shifted["decoder"]["conv_out"]["bias"] + 1.0
    with jax.disable_jit():
        moved = pretrained_model.module.apply({"params": shifted}, jnp.asarray(x))
    assert_close(moved.reconstruction, eager.reconstruction + 1.0, "bias moves eager output", atol=1e-5, rtol=1e-5)
    assert_close(pretrained_model(x, params=shifted).reconstruction, moved.reconstruction, "jit with params=",
                 atol=1e-5, rtol=1e-5)  # fmt: skip


def test_micro_batching_gives_the_same_results(pretrained_model):
    x = _images((6, 32, 32, 3), seed=2)
    whole = pretrained_model(x, micro_batch_size=6)  # one chunk: no loop
    for micro in (1, 4):  # 4 does not divide 6: chunks of gcd(4, 6) = 2
        chunked = pretrained_model(x, micro_batch_size=micro)
        np.testing.assert_array_equal(chunked.indices, whole.indices)
        assert_close(chunked.reconstruction, whole.reconstruction, f"micro {micro}", atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(float(chunked.loss), float(whole.loss), rtol=1e-5)
        encoded = pretrained_model.encode(x, micro_batch_size=micro)
        np.testing.assert_array_equal(encoded.indices, whole.indices)
        assert_close(pretrained_model.decode(encoded.quant_states, micro_batch_size=micro), whole.reconstruction,
                     "decode", atol=1e-5, rtol=1e-5)  # fmt: skip
        assert_close(pretrained_model.decode_code(whole.indices, micro_batch_size=micro), whole.reconstruction,
                     "decode_code", atol=1e-5, rtol=1e-5)  # fmt: skip
    compiled = [key[1] for key in pretrained_model.compiled if key[0] == "__call__"]
    assert {1, 2}.issubset(compiled) and None in compiled  # one compiled loop per chunk size


def test_default_micro_batch_size():
    pick = FlaxVQGANModel.default_micro_batch_size
    assert pick(np.zeros((8, 4))) == 1 and pick(jnp.zeros((8, 4))) == 1  # one CPU device
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))  # 8 CPU devices (conftest)
    sharded = jax.device_put(np.zeros((8, 4)), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch")))
    assert pick(sharded) is None
    seen = []
    jax.jit(lambda x: seen.append(pick(x)) or x)(np.zeros(3))
    assert seen == [None]  # inside a caller's jit the placement is unknown: whole batch


def test_bf16_compute_close_to_float32():
    """bf16 compute, float32 params: finite, indices and pixels close to float32 (stated tolerance)."""
    folder = FIXTURES / "vqganjax" / "checkpoint"
    fp32 = FlaxVQGANModel.from_pretrained(folder)
    bf16 = FlaxVQGANModel.from_pretrained(folder, dtype=jnp.bfloat16)
    x = np.load(FIXTURES / "vqganjax" / "inputs.npz")["pixel_values"]
    out16, out32 = bf16(x), fp32(x)
    assert out16.reconstruction.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(out16.reconstruction.astype(jnp.float32))))
    # Measured on an AVX2 CPU with both backends (kernels on / off): latents off by at most 0.044
    # (of 2.8), 127 of 128 indices equal, decoded pixels off by 0.049 at most and 0.0067 on average.
    # GroupNorm computed in bf16 instead of float32 gives 0.068, 122 of 128, 0.093 and 0.0102: each
    # bound below fails that break.
    assert float(jnp.max(jnp.abs(out16.latents.astype(jnp.float32) - out32.latents))) < 0.06
    assert float(jnp.mean(out16.indices == out32.indices)) >= 0.97
    decoded16 = bf16.decode_code(out32.indices).astype(jnp.float32)
    error = jnp.abs(decoded16 - fp32.decode_code(out32.indices))
    assert float(jnp.max(error)) < 0.075 and float(jnp.mean(error)) < 0.009


def _equations(jaxpr):
    """Every equation of a jaxpr, descending into the jaxprs its equations carry (jit, scan, custom_jvp)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def test_bf16_program_keeps_convs_in_bf16_and_statistics_in_float32():
    """What the bf16 claim means, read from the traced program: every convolution takes bf16
    operands; every reduction (GroupNorm statistics, softmax, codebook distances and argmin) reads
    float32; the codebook distance matmul is float32. The float32 model has no bf16 at all."""
    from flax.traverse_util import flatten_dict

    config = VQGANConfig.from_preset("tiny")
    x = jnp.asarray(_images((1, 16, 16, 3)))
    model = FlaxVQGANModel(config, dtype=jnp.bfloat16)
    jaxpr = jax.make_jaxpr(lambda p, x: model.module.apply({"params": p}, x))(model.params, x).jaxpr
    by_kind: dict = {}
    for eqn in _equations(jaxpr):
        kind = eqn.primitive.name
        kind = f"{kind}:{eqn.params['target_name']}" if kind == "ffi_call" else kind
        by_kind.setdefault(kind, []).append(tuple(str(v.aval.dtype) for v in eqn.invars))
    kernels = [k for k, v in flatten_dict(model.params).items() if k[-1] == "kernel" and v.ndim == 4]
    encoder = sum(k[0] == "encoder" for k in kernels)
    # In traced order: the encoder's convs in bf16 except its last, which with quant_conv decides the
    # codes and stays float32 (blocks.FLOAT32_CONVS); then post_quant_conv and the decoder in bf16.
    bf16, f32 = ("bfloat16", "bfloat16"), ("float32", "float32")
    expected = [bf16] * (encoder - 1) + [f32, f32] + [bf16] * (len(kernels) - encoder - 1)
    assert by_kind["conv_general_dilated"] == expected
    # On CPU each convolution is also traced as a oneDNN call (kernels/cpu.py) with the same operands,
    # the bf16 ones only where oneDNN has bf16 convolutions on this CPU (else XLA's alone run them).
    from vqgan_flax.kernels.cpu import kernel_backend, onednn_has_bfloat16

    onednn = [d[:2] for d in by_kind.get("ffi_call:vqgan_onednn_conv", [])]
    handled = [d for d in expected if d == f32 or onednn_has_bfloat16()]
    assert onednn == (handled if kernel_backend() == "native" else [])
    reductions = [d for name in ("reduce_sum", "reduce_max", "argmin") for d in by_kind.get(name, [])]
    norms = [k for k in flatten_dict(model.params) if k[-2].startswith("norm") and k[-1] == "scale"]
    assert len(reductions) >= 2 * len(norms) and {d[0] for d in reductions} == {"float32"}
    codebook = [d for d in by_kind["dot_general"] if d == ("float32", "float32")]
    attention = [d for d in by_kind["dot_general"] if d == ("bfloat16", "bfloat16")]
    attention_blocks = sum(k[-2:] == ("q", "kernel") for k in kernels)
    assert attention_blocks > 0 and len(attention) == 2 * attention_blocks  # q·k and weights·v in bf16
    assert len(codebook) == 1  # the codebook distances in float32
    assert len(codebook) + len(attention) == len(by_kind["dot_general"])

    fp32 = FlaxVQGANModel(config)
    jaxpr32 = jax.make_jaxpr(lambda p, x: fp32.module.apply({"params": p}, x))(fp32.params, x).jaxpr
    assert not any("bfloat16" in str(v.aval.dtype) for e in _equations(jaxpr32) for v in (*e.invars, *e.outvars))


def test_bf16_model_casts_its_conv_weights_once_with_the_same_results():
    """A bf16 model called without ``params`` uses a cached copy of its weights with each conv's
    kernel and bias already in that conv's compute dtype (blocks.conv_compute_dtype, the one place
    the precision is declared; checked here against the dtypes the traced convs really compute in):
    bit-identical results to casting inside the call, rebuilt when ``model.params`` is replaced."""
    import flax.linen as nn
    from flax.traverse_util import flatten_dict

    from vqgan_flax.models.blocks import Conv, UpsampleConv, conv_compute_dtype

    def conv_compute_dtypes(module, params, *args):
        dtypes = {}

        def record(next_fun, call_args, call_kwargs, context):
            conv = context.module
            if context.method_name == "__call__" and isinstance(conv, (Conv, UpsampleConv, nn.Conv)):
                dtypes[tuple(conv.path)] = jnp.dtype(conv.dtype or conv.param_dtype)
            return next_fun(*call_args, **call_kwargs)

        with nn.intercept_methods(record):
            jax.eval_shape(lambda p, *a: module.apply({"params": p}, *a), params, *args)
        return dtypes

    config = VQGANConfig.from_preset("tiny")
    model = FlaxVQGANModel(config, dtype=jnp.bfloat16)
    x = _images((2, 16, 16, 3))
    # First called inside a caller's jit: the cached copy must hold arrays, not that trace's tracers.
    traced = jax.jit(lambda pixels: model.encode(pixels).indices)(x)
    assert not isinstance(model._cast_params[1]["encoder"]["conv_in"]["kernel"], jax.core.Tracer)
    assert np.array_equal(np.asarray(traced), np.asarray(model.encode(x).indices))
    dtypes = conv_compute_dtypes(model.module, model.params_shape_tree, jax.ShapeDtypeStruct(x.shape, jnp.float32))
    conv_paths = {k[:-1] for k, v in flatten_dict(model.params).items() if k[-1] == "kernel"}
    assert set(dtypes) == conv_paths
    assert {k for k, d in dtypes.items() if d == jnp.float32} == {("encoder", "conv_out"), ("quant_conv",)}
    assert all(conv_compute_dtype(path, model.dtype) == dtype for path, dtype in dtypes.items())
    cached = model.encode(x)
    inside = model.encode(x, params=model.params)  # float32 weights, cast inside the program
    assert np.array_equal(np.asarray(cached.indices), np.asarray(inside.indices))
    assert np.array_equal(np.asarray(cached.quant_states), np.asarray(inside.quant_states))
    decoded = model.decode_code(cached.indices, latent_shape=(8, 8))
    inside = model.decode_code(cached.indices, params=model.params, latent_shape=(8, 8))
    assert np.array_equal(np.asarray(decoded), np.asarray(inside))
    flat = flatten_dict(model._cast_params[1])
    assert flat[("encoder", "conv_in", "kernel")].dtype == jnp.bfloat16
    assert flat[("decoder", "conv_out", "bias")].dtype == jnp.bfloat16
    for kept in [("encoder", "conv_out", "kernel"), ("quant_conv", "kernel"), ("quantize", "embedding", "embedding")]:
        assert flat[kept].dtype == jnp.float32, kept
    assert all(v.dtype == jnp.float32 for k, v in flat.items() if k[-2].startswith("norm"))
    # New weights: the cache follows them (a stale copy would still give the old codes).
    model.params = FlaxVQGANModel(config, seed=7).params
    fresh = model.encode(x, params=model.params)
    assert np.array_equal(np.asarray(model.encode(x).quant_states), np.asarray(fresh.quant_states))
    assert not np.array_equal(np.asarray(fresh.quant_states), np.asarray(cached.quant_states))
    fp32 = FlaxVQGANModel(config)
    assert fp32._params_in_compute_dtype() is fp32.params  # float32: its own params, no copy


def test_bf16_params(tiny_model):
    params16 = tiny_model.to_bf16(tiny_model.params)
    assert {leaf.dtype for leaf in jax.tree.leaves(params16)} == {jnp.dtype(jnp.bfloat16)}
    x = _images((1, 16, 16, 3))
    out = tiny_model(x, params=params16)
    assert bool(jnp.all(jnp.isfinite(out.reconstruction.astype(jnp.float32))))


@pytest.mark.parametrize("backend", ["auto", "off"])
def test_group_norm_statistics_stay_float32_in_bf16(monkeypatch, backend):
    """A bf16 model's GroupNorm is given bf16 activations and must compute its statistics in float32.
    At 40 a bf16 step is 0.25, so bf16 arithmetic for the mean or the centred values moves the
    output by up to ~0.06 (its std is 2); the bound is far below that (CPU kernels and XLA's ops)."""
    monkeypatch.setenv("VQGAN_FLAX_CPU_KERNELS", backend)
    config = VQGANConfig.from_preset("tiny")
    model = FlaxVQGANModel(config, dtype=jnp.bfloat16)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 8, 8, 64)) * 2 + 40, jnp.bfloat16)
    out = model.module.apply({"params": model.params}, x, method=lambda m, h: m.encoder.mid.block_1.norm1(h))
    assert out.dtype == jnp.float32
    groups = config.norm_num_groups
    values = np.asarray(x, np.float64).reshape(1, 8, 8, groups, 64 // groups)
    mean, var = values.mean(axis=(1, 2, 4), keepdims=True), values.var(axis=(1, 2, 4), keepdims=True)
    want = ((values - mean) / np.sqrt(var + 1e-6)).reshape(1, 8, 8, 64)  # torch-style init: scale 1, bias 0
    assert_close(out, want, "GroupNorm of bf16 activations", atol=2e-3)


def test_train_mode_straight_through_and_losses(pretrained_model):
    x = _images((2, 32, 32, 3), seed=2)
    params = pretrained_model.params
    encoded = pretrained_model.encode(x, train=True)
    eval_encoded = pretrained_model.encode(x)
    np.testing.assert_array_equal(encoded.indices, eval_encoded.indices)
    assert_close(encoded.quant_states, eval_encoded.quant_states, "straight-through forward value", atol=1e-6)
    z, q = np.asarray(encoded.latents), np.asarray(encoded.quant_states)
    commitment = codebook = np.mean((q - z) ** 2)
    assert_close(encoded.loss, commitment + 0.25 * codebook, "legacy VQ loss")

    def reconstruction_loss(p):
        return jnp.mean((pretrained_model(x, params=p, train=True).reconstruction - x) ** 2)

    grads = jax.grad(reconstruction_loss)(params)
    # Straight-through: the decoder's loss reaches the encoder; the codebook gets no gradient from it.
    assert float(jnp.abs(grads["encoder"]["conv_in"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["quantize"]["embedding"]["embedding"]).max()) == 0


def test_dropout_only_in_training():
    config = VQGANConfig.from_preset("tiny", dropout=0.5)
    model = FlaxVQGANModel(config)
    x = _images((1, 16, 16, 3))
    a = model(x, train=True, dropout_rng=jax.random.PRNGKey(1)).reconstruction
    b = model(x, train=True, dropout_rng=jax.random.PRNGKey(2)).reconstruction
    assert float(jnp.max(jnp.abs(a - b))) > 0
    np.testing.assert_array_equal(model(x).reconstruction, model(x).reconstruction)
    with pytest.raises(Exception, match="dropout"):
        model(x, train=True)


def test_gumbel_eval_is_deterministic_and_train_samples():
    config = VQGANConfig.from_preset("tiny", quantizer="gumbel", n_embed=16)
    model = FlaxVQGANModel(config)
    x = _images((2, 16, 16, 3), seed=3)
    first, second = model.encode(x), model.encode(x)
    np.testing.assert_array_equal(first.indices, second.indices)
    np.testing.assert_array_equal(first.indices, jnp.argmax(first.logits, -1).reshape(2, -1))
    codebook = model.params["quantize"]["embed"]["embedding"]
    assert_close(first.quant_states, codebook[first.indices.reshape(2, 8, 8)], "eval quant = codebook rows")

    samples = [model.encode(x, train=True, gumbel_rng=jax.random.PRNGKey(s), temperature=5.0).indices for s in (0, 1)]
    assert bool(jnp.any(samples[0] != samples[1]))
    with pytest.raises(Exception, match="gumbel"):
        model.encode(x, train=True)

    def objective(p):
        out = model.encode(x, params=p, train=True, gumbel_rng=jax.random.PRNGKey(0))
        return jnp.sum(out.quant_states**2) + out.loss

    grads = jax.grad(objective)(model.params)
    # Hard straight-through Gumbel-softmax: gradients reach the projection and the codebook.
    assert float(jnp.abs(grads["quantize"]["proj"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["quantize"]["embed"]["embedding"]).max()) > 0


def test_random_init_follows_torch_defaults():
    from vqgan_flax.models.module import torch_style_init

    config = VQGANConfig.from_preset("tiny", quantizer="gumbel", n_embed=4096)
    model = FlaxVQGANModel(config, seed=3)
    params = model.params
    assert model.required_params == set(__import__("flax").traverse_util.flatten_dict(params))
    kernel = np.asarray(params["encoder"]["conv_in"]["kernel"])  # fan_in 3*3*3
    bound = 1 / np.sqrt(27)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
    assert np.abs(np.asarray(params["encoder"]["conv_in"]["bias"])).max() <= bound
    np.testing.assert_array_equal(params["encoder"]["norm_out"]["scale"], 1.0)
    np.testing.assert_array_equal(params["encoder"]["norm_out"]["bias"], 0.0)
    codebook = np.asarray(params["quantize"]["embed"]["embedding"])
    assert abs(codebook.std() - 1.0) < 0.02 and abs(codebook.mean()) < 0.02
    vq = FlaxVQGANModel(VQGANConfig.from_preset("tiny")).params["quantize"]["embedding"]["embedding"]
    assert float(jnp.abs(vq).max()) <= 1 / 32
    # Same seed, same parameters; another seed, others.
    again = torch_style_init(
        jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params), jax.random.PRNGKey(3), config
    )
    np.testing.assert_array_equal(again["decoder"]["conv_out"]["kernel"], params["decoder"]["conv_out"]["kernel"])


def test_norm_num_groups_changes_the_normalisation_and_round_trips(tmp_path):
    """The same weights give other outputs with 8 groups than with 32 (the field reaches every
    GroupNorm), and a saved model keeps its group count."""
    kwargs = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], z_channels=8, embed_dim=4,
                  n_embed=16, resolution=16)  # fmt: skip
    taming_like = FlaxVQGANModel(VQGANConfig(**kwargs), seed=0)
    grouped = FlaxVQGANModel(VQGANConfig(**kwargs, norm_num_groups=8), seed=0)
    pixels = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    latents = lambda m: m.encode(pixels).latents  # noqa: E731
    assert np.abs(np.asarray(latents(taming_like)) - np.asarray(latents(grouped))).max() > 1e-3
    grouped.save_pretrained(tmp_path)
    again = FlaxVQGANModel.from_pretrained(tmp_path)
    assert again.config.norm_num_groups == 8
    assert_close(again(pixels).reconstruction, grouped(pixels).reconstruction, "saved model")
