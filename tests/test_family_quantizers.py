"""The codebook-free quantizers and the entropy losses (issue 34): FSQ and LFQ match
vector-quantize-pytorch (tests/fixtures/fsq_lfq, scripts/make_quantizer_fixtures.py; live on the
legacy stack), their configs imply their codebook sizes, models with them save, load, decode
their indices and train; LlamaGen's entropy loss for VQ."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from utils import FIXTURES, assert_close, require_torch_reference

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.models.quantizers import VectorQuantizer, squared_distances, vq_entropy_loss
from vqgan_flax.models.scalar_quantizers import (
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    entropy,
    fsq_codes_to_indices,
    fsq_indices_to_codes,
    fsq_quantize,
    lfq_bit_weights,
    lfq_entropy_loss,
    lfq_indices_to_codes,
)

CASE = FIXTURES / "fsq_lfq"
FSQ_LEVELS = {"fsq_a": (8, 5, 5, 5), "fsq_b": (7, 6, 4, 3, 3)}
LFQ = {"lfq_a": (6, 0.1, 0.25, 1.0, 1.0), "lfq_b": (4, 0.5, 0.0, 0.5, 0.5)}


@pytest.mark.parametrize("suffix", ["", "_nonsquare"])
@pytest.mark.parametrize("name", sorted(FSQ_LEVELS))
def test_fsq_matches_vector_quantize_pytorch(name, suffix):
    """Codes ≤ 1e-4 (they are exact multiples of 1/(L//2)), indices exact, codes from indices."""
    latents = np.load(CASE / "inputs.npz")[f"{name}_latents{suffix}"]
    expected = np.load(CASE / "expected.npz")
    quantizer = FiniteScalarQuantizer(FSQ_LEVELS[name])
    out = quantizer.apply({}, latents)
    np.testing.assert_array_equal(np.asarray(out.indices), expected[f"{name}_indices{suffix}"])
    assert_close(out.quantized, expected[f"{name}_quantized{suffix}"], "quantized")
    codes = quantizer.apply({}, expected[f"{name}_indices{suffix}"], method="get_codebook_entry")
    assert_close(codes, expected[f"{name}_codes{suffix}"], "codes")
    assert float(out.loss) == 0.0


@pytest.mark.parametrize("suffix", ["", "_nonsquare"])
@pytest.mark.parametrize("name", sorted(LFQ))
def test_lfq_matches_vector_quantize_pytorch(name, suffix):
    """Evaluation: signs and indices exact; training: the auxiliary loss (entropy + commitment)
    and its gradient with respect to the latents within 1e-4."""
    bits, entropy_weight, commitment, gamma, scale = LFQ[name]
    latents = np.load(CASE / "inputs.npz")[f"{name}_latents{suffix}"]
    expected = np.load(CASE / "expected.npz")
    quantizer = LookupFreeQuantizer(bits, entropy_weight, commitment, gamma, scale=scale)
    out = quantizer.apply({}, latents)
    np.testing.assert_array_equal(np.asarray(out.indices), expected[f"{name}_indices{suffix}"])
    assert_close(out.quantized, expected[f"{name}_quantized{suffix}"], "quantized")
    codes = quantizer.apply({}, expected[f"{name}_indices{suffix}"], method="get_codebook_entry")
    assert_close(codes, expected[f"{name}_codes{suffix}"], "codes")
    loss, grad = jax.value_and_grad(lambda z: quantizer.apply({}, z, train=True).loss)(jnp.asarray(latents))
    assert_close(loss, expected[f"{name}_aux_loss{suffix}"], "aux loss")
    assert_close(grad, expected[f"{name}_aux_loss_grad{suffix}"], "aux loss gradient")
    assert float(out.loss) == 0.0


def test_codes_and_indices_are_inverse_and_the_digits_are_in_order():
    """Every FSQ index maps to a code that maps back; channel 0 is FSQ's least significant digit
    and LFQ's most significant bit (vector-quantize-pytorch's order)."""
    levels = (5, 3, 4)
    every = jnp.arange(60)
    np.testing.assert_array_equal(np.asarray(fsq_codes_to_indices(fsq_indices_to_codes(every, levels), levels)), every)
    np.testing.assert_allclose(np.asarray(fsq_indices_to_codes(jnp.asarray(1), levels)), [-0.5, -1.0, -1.0])
    assert lfq_bit_weights(3).tolist() == [4, 2, 1]
    np.testing.assert_array_equal(np.asarray(lfq_indices_to_codes(jnp.asarray(4), 3, 0.5)), [0.5, -0.5, -0.5])
    codes = fsq_quantize(jnp.linspace(-5, 5, 101)[:, None] * jnp.ones((1, 3)), levels)
    assert np.unique(np.asarray(codes[:, 0])).size == 5 and float(jnp.abs(codes).max()) == 1.0
    uniform = jnp.full((4,), 0.25)
    assert float(entropy(uniform)) == pytest.approx(np.log(4), rel=1e-6)


def test_the_quantizer_implies_its_codebook_and_refuses_what_disagrees():
    fsq = VQGANConfig.from_preset("tiny", quantizer="fsq", fsq_levels=[8, 5, 5], embed_dim=None, n_embed=None)
    assert (fsq.n_embed, fsq.embed_dim) == (200, 3)
    lfq = VQGANConfig.from_preset("tiny", quantizer="lfq", embed_dim=10, n_embed=None)
    assert (lfq.n_embed, lfq.entropy_loss_weight) == (1024, 0.1)
    assert VQGANConfig().n_embed == 1024 and VQGANConfig().entropy_loss_weight == 0.0
    for fields, message in (
        (dict(quantizer="fsq", fsq_levels=[8, 2]), r"fsq_levels=\[8, 2\] must be a non-empty list of integers of at"),
        (dict(quantizer="fsq", fsq_levels=[8, 5], n_embed=64), "n_embed=64 disagrees with .*'fsq', which implies 40"),
        (dict(quantizer="fsq", fsq_levels=[8, 5], embed_dim=3), "embed_dim=3 disagrees with .*'fsq', which implies 2"),
        (dict(quantizer="lfq", embed_dim=30), r"embed_dim=30: LFQ's bits must be an integer in \[1, 24\]"),
        (dict(quantizer="lfq", embed_dim=4, n_embed=15), "n_embed=15 disagrees with quantizer='lfq', which implies 16"),
        (dict(quantizer="vq", fsq_levels=[3]), r"fsq_levels=\[3\] is for quantizer='fsq', not 'vq'"),
        (dict(quantizer="ibq", entropy_loss_weight=0.1), "entropy_loss_weight=0.1 is for vq, vq_l2 and lfq, not 'ibq'"),
        (dict(quantizer="lfq", embed_dim=4, lfq_scale=0), r"lfq_scale=0 must be a number in \[1e-06, 1e6\)"),
        (dict(entropy_temperature="hot"), "entropy_temperature='hot' must be a number"),
        (dict(quantizer="fsq", fsq_levels=[1 << 20, 1 << 20]), r"n_embed=1099511627776 must be an integer in"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            VQGANConfig(**fields)


@pytest.mark.parametrize("fields", [dict(quantizer="fsq", fsq_levels=[5, 5, 4, 3]), dict(quantizer="lfq", embed_dim=6)])
def test_models_with_implicit_codes_save_load_and_decode_their_indices(fields, tmp_path):
    """No quantizer parameters; save/load round-trips the config; decode_code of the indices is
    decode of the quantized latents; the indices cover the implied codebook's range only."""
    config = VQGANConfig.from_preset("tiny", **{"embed_dim": None, "n_embed": None, **fields})
    model = FlaxVQGANModel(config, seed=0)
    assert "quantize" not in model.params
    model.save_pretrained(tmp_path / "m")
    again = FlaxVQGANModel.from_pretrained(tmp_path / "m")
    assert again.config.to_dict() == config.to_dict()
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 16, 24, 3)).astype(np.float32)
    encoded = again.encode(pixels)
    assert 0 <= int(np.min(encoded.indices)) and int(np.max(encoded.indices)) < config.n_embed
    assert_close(
        again.decode_code(encoded.indices, latent_shape=(8, 12)), again.decode(encoded.quant_states), "decode_code"
    )


@pytest.mark.one_stack  # the quantizers' math is compared on both stacks; the trainer is tested on both
@pytest.mark.parametrize("fields", [dict(quantizer="fsq", fsq_levels=[5, 5, 4]), dict(quantizer="lfq", embed_dim=5),
                                    dict(quantizer="vq_l2", entropy_loss_weight=0.05)])  # fmt: skip
def test_the_trainer_trains_with_fsq_lfq_and_the_vq_entropy_loss(fields):
    """A few steps of the trainer with each: the loss stays finite, the encoder and decoder learn,
    the code statistics count the implied codebook."""
    from test_training import SINGLE, _data

    from vqgan_flax.train.trainer import TrainingConfig, VQGANTrainer

    implied = {} if fields["quantizer"] == "vq_l2" else {"embed_dim": None, "n_embed": None}
    config = VQGANConfig.from_preset("tiny", **{**implied, **fields})
    training = TrainingConfig(steps=3, batch_size=4, crop_size=16, learning_rate=1e-3, disc_start=1000,
                              disc_num_layers=1, disc_ndf=32, log_every=1, save_every=1000)  # fmt: skip
    trainer = VQGANTrainer(FlaxVQGANModel(config, seed=0), training, mesh=SINGLE)
    logs = []
    state = trainer.init_state()
    start = jax.device_get(state.params)
    state = trainer.fit(_data(), state=state, progress=False, on_log=logs.append)
    params = jax.device_get(state.params)
    assert all(np.isfinite(m["loss"]) for m in logs) and len(logs) == 3
    for part, leaf in (("encoder", "conv_in"), ("decoder", "conv_out")):
        assert float(np.abs(params[part][leaf]["kernel"] - start[part][leaf]["kernel"]).max()) > 0
    assert 1 <= logs[-1]["perplexity"] <= config.n_embed


def test_the_vq_entropy_loss_is_llamagens():
    """vq_entropy_loss against LlamaGen's compute_entropy_loss written out in numpy (softmax of
    -d / 0.01; per-position entropy of log_softmax minus the entropy of the mean with +1e-5); the
    quantizer adds it only in training, weighted."""
    rng = np.random.default_rng(3)
    latents = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    codebook = rng.normal(size=(16, 4)).astype(np.float32)
    d = np.asarray(squared_distances(latents, codebook), np.float64)
    logits = -d / 0.01
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    average = probs.mean(axis=0)
    reference = -np.mean(np.sum(probs * log_probs, axis=1)) + np.sum(average * np.log(average + 1e-5))
    assert float(vq_entropy_loss(jnp.asarray(d, jnp.float32))) == pytest.approx(reference, rel=1e-4, abs=1e-5)
    params = {"params": {"embedding": {"embedding": codebook}}}
    plain = VectorQuantizer(16, 4, beta=0.25).apply(params, latents, train=True)
    weighted = VectorQuantizer(16, 4, beta=0.25, entropy_weight=0.5).apply(params, latents, train=True)
    evaluated = VectorQuantizer(16, 4, beta=0.25, entropy_weight=0.5).apply(params, latents)
    assert float(weighted.loss - plain.loss) == pytest.approx(0.5 * reference, rel=1e-4, abs=1e-5)
    assert float(evaluated.loss) == pytest.approx(float(plain.loss), rel=1e-6)
    np.testing.assert_array_equal(np.asarray(weighted.indices), np.asarray(plain.indices))
    codes = lfq_indices_to_codes(jnp.arange(4), 2)
    # Undecided positions (zeros) and uniform use: 0; one sure position per code: -log 4.
    assert float(lfq_entropy_loss(jnp.zeros((4, 2)), codes, 0.01, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(lfq_entropy_loss(codes, codes, 0.01, 1.0)) == pytest.approx(-np.log(4), rel=1e-5)


@pytest.mark.torch
def test_live_against_vector_quantize_pytorch():
    """Where vector-quantize-pytorch imports (the legacy stack), on other latents and settings
    than the fixture's: FSQ and LFQ (evaluation and the training loss) agree."""
    require_torch_reference("vector_quantize_pytorch")
    import torch
    from vector_quantize_pytorch import FSQ
    from vector_quantize_pytorch import LFQ as TorchLFQ

    z = (2.0 * np.random.default_rng(9).normal(size=(1, 6, 2, 5))).astype(np.float32)
    torch_z = torch.from_numpy(z).permute(0, 3, 1, 2)
    quantized, indices = FSQ([9, 7, 5, 4, 3]).eval()(torch_z)
    ours = FiniteScalarQuantizer((9, 7, 5, 4, 3)).apply({}, z)
    np.testing.assert_array_equal(np.asarray(ours.indices), indices.numpy())
    assert_close(ours.quantized, quantized.permute(0, 2, 3, 1).numpy(), "fsq")
    lfq = TorchLFQ(dim=5, codebook_size=32, entropy_loss_weight=0.2, commitment_loss_weight=0.1, diversity_gamma=2.0)
    _, lfq_indices, aux = lfq.train()(torch_z)
    mine = LookupFreeQuantizer(5, 0.2, 0.1, 2.0).apply({}, z, train=True)
    np.testing.assert_array_equal(np.asarray(mine.indices), lfq_indices.numpy())
    assert_close(mine.loss, aux.item(), "lfq aux loss")
