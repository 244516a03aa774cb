"""Training: losses go down, gradients reach every part, the discriminator joins at disc_start,
resumption is exact, and a step on 8 devices equals a single-device step."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from utils import assert_close, random_lpips_state_dict

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.evaluation.metrics import ssim
from vqgan_flax.train.losses import (
    adaptive_weight,
    block_colour,
    codebook_usage,
    colour_anchor_loss,
    hinge_d_loss,
    reconstruction_loss,
    structural_similarity,
)
from vqgan_flax.train.lpips import LPIPS, lpips_params_from_state_dict
from vqgan_flax.train.trainer import ImageCrops, TrainingConfig, VQGANTrainer, patch_grid_size

SINGLE = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))


def _data(seed=0):
    """Smooth random images (learnable, unlike pixel noise)."""
    rng = np.random.default_rng(seed)
    coarse = [rng.integers(0, 256, (3, 4, 3)).astype(np.float32) for _ in range(3)]
    images = [np.kron(c, np.ones((8, 7, 1))).astype(np.uint8) for c in coarse]  # 24x28 blocks
    return ImageCrops(images, crop_size=16, seed=seed)


def _trainer(mesh=SINGLE, **overrides):
    config = TrainingConfig(
        **{
            "steps": 4, "batch_size": 8, "crop_size": 16, "learning_rate": 1e-3, "disc_start": 2,
            "disc_num_layers": 1, "disc_ndf": 32, "log_every": 1, "save_every": 1000, **overrides,
        }
    )  # fmt: skip
    return VQGANTrainer(FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=0), config, mesh=mesh)


def _changed(before, after):
    return float(jnp.max(jnp.abs(jnp.asarray(after) - jnp.asarray(before)))) > 0


def test_loss_goes_down_and_every_part_learns():
    # 50 steps: the batch loss is noisy and falls slowly (at 25 steps it sat at 0.80-0.81 of its
    # start on both stacks, right at the bound); at 50 it is about 0.7.
    trainer = _trainer(steps=50, disc_start=1000)
    logs = []
    state = trainer.init_state()
    start = jax.device_get(state.params)
    state = trainer.fit(_data(), state=state, progress=False, on_log=logs.append)
    assert np.mean([m["nll_loss"] for m in logs[-5:]]) < 0.8 * np.mean([m["nll_loss"] for m in logs[:3]])
    params = jax.device_get(state.params)
    # Straight-through: the reconstruction loss reaches the encoder; the codebook learns from its loss.
    assert _changed(start["encoder"]["conv_in"]["kernel"], params["encoder"]["conv_in"]["kernel"])
    assert _changed(start["decoder"]["conv_out"]["kernel"], params["decoder"]["conv_out"]["kernel"])
    assert _changed(start["quantize"]["embedding"]["embedding"], params["quantize"]["embedding"]["embedding"])
    assert all(np.isfinite(m["loss"]) for m in logs)
    assert 1 <= logs[-1]["perplexity"] <= 32 and 0 <= logs[-1]["dead_code_share"] <= 1


def test_discriminator_joins_at_disc_start():
    trainer = _trainer(steps=4, disc_start=2)
    logs = []
    state = trainer.init_state()
    disc_start = jax.device_get(state.disc_params)
    for step in range(4):
        before = jax.device_get(state.disc_params)
        state, metrics = trainer.train_step(state, trainer.shard(_data().batch(step, 8)))
        logs.append(jax.device_get(metrics))
        changed = _changed(jax.tree.leaves(before)[0], jax.tree.leaves(jax.device_get(state.disc_params))[0])
        assert changed == (step >= 2), f"step {step}"
    assert [float(m["disc_factor"]) for m in logs] == [0.0, 0.0, 1.0, 1.0]
    assert float(logs[0]["disc_loss"]) == 0.0 and float(logs[3]["disc_loss"]) > 0
    assert float(logs[3]["d_weight"]) > 0
    assert _changed(jax.tree.leaves(disc_start)[0], jax.tree.leaves(jax.device_get(state.disc_params))[0])


def test_resume_gives_the_uninterrupted_run(tmp_path):
    straight = []
    _trainer(steps=6).fit(_data(), output_dir=str(tmp_path / "a"), progress=False, on_log=straight.append)
    first, second = [], []
    _trainer(steps=3).fit(_data(), output_dir=str(tmp_path / "b"), progress=False, on_log=first.append)
    resumed = _trainer(steps=6)  # a new process would build a new trainer and find the checkpoint
    state = resumed.fit(_data(), output_dir=str(tmp_path / "b"), progress=False, on_log=second.append)
    assert [m["step"] for m in first + second] == list(range(1, 7))
    for a, b in zip(straight, first + second):
        for key in ("loss", "nll_loss", "quant_loss", "g_loss", "disc_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
    assert int(state.step) == 6
    loaded = FlaxVQGANModel.from_pretrained(tmp_path / "b" / "model")
    np.testing.assert_allclose(
        loaded.params["decoder"]["conv_out"]["kernel"], jax.device_get(state.params)["decoder"]["conv_out"]["kernel"]
    )


def test_eight_device_step_equals_single_device_step():
    batch = _data().batch(0, 8)
    results = []
    for mesh in (SINGLE, jax.sharding.Mesh(np.array(jax.devices()), ("data",))):
        trainer = _trainer(mesh=mesh, disc_start=0)
        state, metrics = trainer.train_step(trainer.init_state(), trainer.shard(batch))
        results.append((jax.device_get(state), jax.device_get(metrics)))
    (one, m1), (eight, m8) = results
    for key in ("loss", "nll_loss", "g_loss", "disc_loss", "d_weight"):
        assert_close(m8[key], m1[key], key, atol=1e-5, rtol=1e-4)
    # Adam's first step moves every weight by about lr * sign(g): where g is within float noise of 0,
    # summation order (one device vs eight) can flip it. So: nearly all weights equal to 1e-5, and
    # none off by more than one such flip (2 * lr = 2e-3).
    for name in ("params", "disc_params"):
        diffs = np.concatenate(
            [
                np.abs(a - b).ravel()
                for a, b in zip(jax.tree.leaves(getattr(eight, name)), jax.tree.leaves(getattr(one, name)))
            ]
        )
        assert np.mean(diffs > 1e-5) < 1e-3, name
        assert diffs.max() <= 2e-3, name


def test_codebook_restarts_revive_dead_codes():
    trainer = _trainer(codebook_restart_every=2, disc_start=1000)
    state = trainer.init_state()
    codebook = jax.device_get(state.params)["quantize"]["embedding"]["embedding"]
    logs = []
    for step in range(2):
        state, metrics = trainer.train_step(state, trainer.shard(_data().batch(step, 8)))
        logs.append(jax.device_get(metrics))
    new_codebook = jax.device_get(state.params)["quantize"]["embedding"]["embedding"]
    moved = np.abs(new_codebook - codebook).max(axis=1) > 0.05  # far beyond one Adam step of 1e-3
    assert logs[1]["dead_code_share"] > 0 and moved.sum() >= 1
    assert int(jnp.sum(state.code_counts)) == 0  # the usage window starts over


def test_ema_tracks_params():
    trainer = _trainer(ema_decay=0.9)
    state = trainer.init_state()
    start = jax.device_get(state.params)
    state, _ = trainer.train_step(state, trainer.shard(_data().batch(0, 8)))
    new = jax.device_get(state)
    expected = jax.tree.map(lambda s, p: 0.9 * s + 0.1 * p, start, new.params)
    for a, b in zip(jax.tree.leaves(new.ema_params), jax.tree.leaves(expected)):
        assert_close(a, b, "ema", atol=1e-6)


def test_too_small_crops_for_the_discriminator():
    assert patch_grid_size(256, 3) == 30 and patch_grid_size(16, 3) == 0
    with pytest.raises(ValueError, match="crop_size=16 is too small for a 3-layer discriminator"):
        _trainer(disc_num_layers=3)
    with pytest.raises(ValueError, match="batch size 7 is not a multiple of the 8 devices"):
        _trainer(mesh=jax.sharding.Mesh(np.array(jax.devices()), ("data",))).shard(np.zeros((7, 16, 16, 3)))


def test_loss_functions():
    x = jnp.zeros((2, 4, 4, 3))
    assert float(reconstruction_loss(x, x + 0.5)) == pytest.approx(0.5)
    assert float(reconstruction_loss(x, x + 0.5, "l2")) == pytest.approx(0.25)
    assert float(
        reconstruction_loss(x, x, perceptual=lambda a, b: jnp.ones(2), perceptual_weight=0.3)
    ) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown reconstruction loss 'l3'"):
        reconstruction_loss(x, x, "l3")
    # The chroma term: a grey error (equal on R, G, B) has no chroma, so only the RGB distance
    # counts; an error on R alone adds the weight times the mean of |Cb| and |Cr| of that error.
    assert float(reconstruction_loss(x, x + 0.5, chroma_weight=4.0)) == pytest.approx(0.5, abs=1e-6)
    red = x.at[..., 0].set(0.6)
    expected = 0.2 + 4.0 * (0.168736 * 0.6 + 0.5 * 0.6) / 2
    assert float(reconstruction_loss(x, red, chroma_weight=4.0)) == pytest.approx(expected, rel=1e-6)
    assert float(reconstruction_loss(x, red, "l2", chroma_weight=4.0)) == pytest.approx(
        0.12 + 4.0 * ((0.168736 * 0.6) ** 2 + 0.09) / 2, rel=1e-6
    )
    assert float(hinge_d_loss(jnp.array([2.0]), jnp.array([-2.0]))) == 0.0
    assert float(hinge_d_loss(jnp.array([0.0]), jnp.array([0.0]))) == 1.0
    assert float(adaptive_weight(jnp.array([3.0, 4.0]), jnp.array([0.0, 1.0]), 0.5)) == pytest.approx(2.5, rel=1e-3)
    assert float(adaptive_weight(jnp.ones(3), jnp.zeros(3))) == 1e4  # clipped
    usage = codebook_usage(jnp.array([0, 0, 1, 1]), 4)
    assert float(usage["perplexity"]) == pytest.approx(2.0) and float(usage["dead_code_share"]) == 0.5


def test_lpips_plumbing_with_random_weights():
    params = lpips_params_from_state_dict(random_lpips_state_dict())
    x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    lpips = LPIPS()
    same = lpips.apply({"params": params}, x, x)
    other = lpips.apply({"params": params}, x, x[::-1])
    assert same.shape == (2,) and float(jnp.max(jnp.abs(same))) == 0.0 and float(jnp.min(other)) > 0
    with pytest.raises(KeyError, match="lacks lin4.model.1.weight"):
        lpips_params_from_state_dict({k: v for k, v in random_lpips_state_dict().items() if "lin4" not in k})
    # In the trainer the perceptual term adds to the reconstruction loss.
    batch = _data().batch(0, 8)
    plain = _trainer().train_step(_trainer().init_state(), jnp.asarray(batch))[1]
    base = _trainer(perceptual_weight=1.0)
    trainer = VQGANTrainer(base.model, base.config, lpips_params=params, mesh=SINGLE)
    with_lpips = trainer.train_step(trainer.init_state(), jnp.asarray(batch))[1]
    assert float(with_lpips["nll_loss"]) > float(plain["nll_loss"])


def test_chroma_weight_reaches_the_training_step():
    batch = jnp.asarray(_data().batch(0, 8))
    plain = _trainer(disc_weight=0.0).train_step(_trainer(disc_weight=0.0).init_state(), batch)[1]
    trainer = _trainer(disc_weight=0.0, chroma_weight=2.0)
    weighted = trainer.train_step(trainer.init_state(), batch)[1]
    assert float(weighted["nll_loss"]) > float(plain["nll_loss"])
    assert float(weighted["quant_loss"]) == pytest.approx(float(plain["quant_loss"]))


def test_structural_similarity_is_metrics_ssim_and_differentiable():
    """The SSIM loss term scores what the evaluation's SSIM (metrics.ssim, equal to scikit-image's)
    scores, per image, on [-1, 1] pixels; its gradient is finite and raises the score."""
    rng = np.random.default_rng(3)
    clean = rng.uniform(-1, 1, (2, 24, 20, 3)).astype(np.float32)
    noisy = np.clip(clean + rng.normal(0, 0.3, clean.shape), -1, 1).astype(np.float32)
    scores = structural_similarity(jnp.asarray(clean), jnp.asarray(noisy))
    to_255 = lambda a: (a + 1) * 127.5  # noqa: E731
    expected = [ssim(to_255(a), to_255(b)) for a, b in zip(clean, noisy)]
    assert scores.shape == (2,) and np.allclose(np.asarray(scores), expected, atol=1e-5)
    assert float(structural_similarity(jnp.asarray(clean), jnp.asarray(clean))[0]) == pytest.approx(1.0, abs=1e-5)
    grad = jax.grad(lambda y: jnp.sum(structural_similarity(jnp.asarray(clean), y)))(jnp.asarray(noisy))
    assert bool(jnp.all(jnp.isfinite(grad)))
    better = structural_similarity(jnp.asarray(clean), jnp.asarray(noisy) + 0.05 * grad)
    assert bool(jnp.all(better > scores))
    # In the reconstruction loss: weight x the mean of 1 - SSIM, added to the pixel distance.
    plain = float(reconstruction_loss(jnp.asarray(clean), jnp.asarray(noisy), "l2"))
    weighted = float(reconstruction_loss(jnp.asarray(clean), jnp.asarray(noisy), "l2", ssim_weight=0.5))
    assert weighted == pytest.approx(plain + 0.5 * float(jnp.mean(1 - scores)), rel=1e-5)
    with pytest.raises(ValueError, match=r"at least 11x11 pixels; got \(10, 20\)"):
        structural_similarity(jnp.zeros((1, 10, 20, 3)), jnp.zeros((1, 10, 20, 3)))
    with pytest.raises(ValueError, match=r"one shape; got \(1, 12, 12, 3\) and \(1, 12, 12, 1\)"):
        structural_similarity(jnp.zeros((1, 12, 12, 3)), jnp.zeros((1, 12, 12, 1)))


def test_ssim_weight_reaches_the_training_step():
    batch = jnp.asarray(_data().batch(0, 8))
    plain = _trainer(disc_weight=0.0).train_step(_trainer(disc_weight=0.0).init_state(), batch)[1]
    trainer = _trainer(disc_weight=0.0, ssim_weight=0.5)
    weighted = trainer.train_step(trainer.init_state(), batch)[1]
    assert float(weighted["nll_loss"]) > float(plain["nll_loss"]) + 0.1  # 1 - SSIM of an untrained model
    assert float(weighted["quant_loss"]) == pytest.approx(float(plain["quant_loss"]))


def test_colour_anchor_ties_three_latent_channels_to_the_block_colour():
    # Two 2x2 blocks: pure red and mid grey (pixels in [-1, 1]); their BT.601 (Y, Cb, Cr).
    pixels = jnp.concatenate([jnp.tile(jnp.array([1.0, -1.0, -1.0]), (1, 2, 2, 1)), jnp.zeros((1, 2, 2, 3))], axis=2)
    red = jnp.array([0.299 - 0.587 - 0.114, -0.168736 + 0.331264 - 0.5, 0.5 + 0.418688 + 0.081312])
    exact = jnp.stack([red, jnp.zeros(3)])[None, None]  # (1, 1, 2, 3): the latent grid
    free = jnp.full((1, 1, 2, 5), 7.0)  # channels past the third are not anchored
    assert float(colour_anchor_loss(pixels, jnp.concatenate([exact, free], -1))) == pytest.approx(0.0, abs=1e-7)
    zero = jnp.zeros((1, 1, 2, 3))
    assert float(colour_anchor_loss(pixels, zero)) == pytest.approx(float(jnp.sum(red**2)) / 6, rel=1e-6)
    # A block's mean is what counts: a 2x2 block half red, half grey has half the red colour.
    half = pixels.at[:, 1, :2].set(0.0)
    assert float(colour_anchor_loss(half, exact.at[..., 0, :].set(red / 2))) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match=r"latents \(1, 1, 2, 2\) need ≥ 3 channels"):
        colour_anchor_loss(pixels, jnp.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"a 1 x 3 grid does not divide the pixels \(1, 2, 4, 3\)"):
        colour_anchor_loss(pixels, jnp.zeros((1, 1, 3, 3)))
    assert block_colour(pixels, 1, 2).shape == (1, 1, 2, 3)
    assert jnp.allclose(block_colour(pixels, 1, 2), exact, atol=1e-6)
    # In the step, with and without the discriminator: the term is logged and added to the loss.
    batch = jnp.asarray(_data().batch(0, 8))
    for disc_start in (0, 10**6):
        trainer = _trainer(colour_anchor_weight=0.5, disc_start=disc_start)
        state = trainer.init_state()
        latents = trainer.model.module.apply({"params": state.params}, batch, method="encode").latents
        metrics = trainer.train_step(state, batch)[1]
        anchor = float(metrics["colour_anchor_loss"])
        assert anchor == pytest.approx(float(colour_anchor_loss(batch, latents)), rel=1e-5)
        unanchored = metrics["nll_loss"] + metrics["quant_loss"] + metrics["d_weight"] * metrics["g_loss"]
        assert float(metrics["loss"]) == pytest.approx(float(unanchored) + 0.5 * anchor, rel=1e-5)
    # The anchor moves the encoder: one step with it changes quant_conv differently than without.
    anchored, plain = _trainer(colour_anchor_weight=5.0, disc_weight=0.0), _trainer(disc_weight=0.0)
    kernel = lambda t: t.train_step(t.init_state(), batch)[0].params["quant_conv"]["kernel"]  # noqa: E731
    assert _changed(kernel(plain), kernel(anchored))
    gumbel = FlaxVQGANModel(VQGANConfig.from_preset("tiny", quantizer="gumbel"), seed=0)
    with pytest.raises(ValueError, match="colour_anchor_weight needs the nearest-neighbour quantizer"):
        VQGANTrainer(gumbel, TrainingConfig(colour_anchor_weight=1.0), mesh=SINGLE)


def test_quantize_after_decodes_the_continuous_latents_first():
    batch = jnp.asarray(_data().batch(0, 8))
    plain = _trainer(disc_weight=0.0)
    warm = _trainer(disc_weight=0.0, quantize_after=1)
    state = plain.init_state()
    # Step 0 < quantize_after: the loss is L1 between the batch and the decoded continuous latents.
    module, variables = plain.model.module, {"params": state.params}
    latents = module.apply(variables, batch, method="encode").latents
    expected = jnp.mean(jnp.abs(batch - module.apply(variables, latents, method="decode")))
    _, metrics = warm.train_step(warm.init_state(), batch)
    assert float(metrics["nll_loss"]) == pytest.approx(float(expected), rel=1e-5)
    quantized = float(plain.train_step(plain.init_state(), batch)[1]["nll_loss"])
    assert abs(float(metrics["nll_loss"]) - quantized) > 1e-4
    # From quantize_after on, the step is the plain one (copies: a step donates its state's buffers).
    after_one, _ = plain.train_step(plain.init_state(), batch)
    copy = lambda: jax.tree.map(jnp.array, after_one)  # noqa: E731
    a, b = plain.train_step(copy(), batch)[1], warm.train_step(copy(), batch)[1]
    assert float(a["nll_loss"]) == pytest.approx(float(b["nll_loss"]), rel=1e-6)


def test_without_a_discriminator_the_step_is_plain_reconstruction():
    """disc_weight=0: the discriminator is never updated and the update equals the gradient of
    L1 + codebook loss alone (the GAN branch's second backward pass is skipped)."""
    trainer = _trainer(disc_weight=0.0, disc_start=0)
    assert not trainer.uses_discriminator and _trainer().uses_discriminator
    state = trainer.init_state()
    before = jax.device_get(state)
    batch = trainer.shard(_data().batch(0, 8))
    new, metrics = trainer.train_step(state, batch)
    after = jax.device_get(new)
    for a, b in zip(jax.tree.leaves(before.disc_params), jax.tree.leaves(after.disc_params)):
        np.testing.assert_array_equal(a, b)
    assert float(metrics["g_loss"]) == 0 and float(metrics["d_weight"]) == 0
    # The same step from a GAN trainer whose discriminator has not started (factor 0) moves the
    # autoencoder identically: both follow only the reconstruction and codebook terms.
    gan = _trainer(disc_start=1000)
    reference, _ = gan.train_step(gan.init_state(), batch)
    for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(jax.device_get(reference.params))):
        assert_close(a, b, "params", atol=1e-6)


def test_cosine_schedule_warms_up_and_decays():
    from vqgan_flax.train.trainer import learning_rate_schedule

    config = TrainingConfig(steps=100, learning_rate=1e-3, schedule="cosine", warmup_steps=10)
    rate = learning_rate_schedule(config)
    assert float(rate(0)) == 0 and float(rate(10)) == pytest.approx(1e-3)
    assert float(rate(55)) == pytest.approx(0.55e-3, rel=1e-3) and float(rate(100)) == pytest.approx(1e-4)
    assert float(learning_rate_schedule(TrainingConfig(learning_rate=2e-4))(500)) == pytest.approx(2e-4)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        _trainer(schedule="step")


def test_restarts_stop_after_codebook_restart_until():
    trainer = _trainer(codebook_restart_every=1, codebook_restart_until=1, disc_start=1000)
    state = trainer.init_state()
    state, _ = trainer.train_step(state, trainer.shard(_data().batch(0, 8)))  # step 1: restarts
    assert int(jnp.sum(state.code_counts)) == 0
    state, _ = trainer.train_step(state, trainer.shard(_data().batch(1, 8)))  # step 2: none, counts kept
    assert int(jnp.sum(state.code_counts)) == 8 * 8 * 8  # 8 crops of 16², downsampling 2


def test_crop_augmentations_are_deterministic_and_in_range():
    images = [np.random.default_rng(0).integers(0, 256, (80, 90, 3)).astype(np.uint8)]
    plain = ImageCrops(images, 16, seed=3)
    augmented = ImageCrops(images, 16, seed=3, min_scale=0.25, colour_jitter=0.3)
    a, b = augmented.batch(5, 4), augmented.batch(5, 4)
    np.testing.assert_array_equal(a, b)  # a step's batch depends only on (seed, step)
    assert a.shape == (4, 16, 16, 3) and a.min() >= -1 and a.max() <= 1
    assert not np.allclose(a, plain.batch(5, 4))
    # A shrunk crop is smoother than a crop at full scale: neighbouring pixels differ less.
    flat = np.abs(np.diff(plain.batch(0, 64), axis=2)).mean()
    shrunk = np.abs(np.diff(ImageCrops(images, 16, seed=3, min_scale=0.25).batch(0, 64), axis=2)).mean()
    assert shrunk < 0.8 * flat
    with pytest.raises(ValueError, match=r"min_scale must be in \(0, 1\]; got 0"):
        ImageCrops(images, 16, min_scale=0)
    with pytest.raises(ValueError, match=r"colour_jitter must be in \[0, 1\); got 1.5"):
        ImageCrops(images, 16, colour_jitter=1.5)
    for seed in (-1, 1.5, True):
        with pytest.raises(ValueError, match=rf"seed must be a non-negative integer; got {seed}"):
            ImageCrops(images, 16, seed=seed)
    assert not np.allclose(ImageCrops(images, 16, seed=4).batch(5, 4), plain.batch(5, 4))


def test_channel_shuffle_and_tint_move_colour_but_keep_the_crop():
    # A pure-red image: a shuffled crop puts the red in another channel, a tint scales it.
    red = np.zeros((40, 40, 3), np.uint8)
    red[..., 0] = 200
    plain = ImageCrops([red], 16, seed=1).batch(0, 32)
    shuffled = ImageCrops([red], 16, seed=1, channel_shuffle=True).batch(0, 32)
    lit = (shuffled + 1) / 2 * 255  # back to pixel values
    np.testing.assert_allclose(np.sort(lit, axis=-1), np.sort((plain + 1) / 2 * 255, axis=-1), atol=1e-3)
    hot = {int(np.argmax(crop[0, 0])) for crop in lit}
    assert hot == {0, 1, 2}  # 32 draws of 3 channels: each one seen
    gray = np.full((40, 40, 3), 100, np.uint8)  # a tint gives a grayscale image a colour cast
    tinted = (ImageCrops([gray], 16, seed=1, tint=0.2).batch(0, 8) + 1) / 2 * 255
    gains = tinted[:, 0, 0] / 100
    assert np.all(np.abs(gains - 1) <= 0.2 + 1e-4) and np.ptp(gains, axis=-1).min() > 0
    assert np.ptp(tinted.reshape(8, -1, 3), axis=1).max() < 1e-3  # the same gain over the whole crop
    with pytest.raises(ValueError, match=r"tint must be in \[0, 1\); got -0.1"):
        ImageCrops([gray], 16, tint=-0.1)


def test_fit_stops_on_its_time_budget_and_resumes(tmp_path):
    trainer = _trainer(steps=6, disc_start=1000, save_every=100)
    state = trainer.fit(_data(), output_dir=str(tmp_path), progress=False, max_seconds=0)
    assert int(state.step) == 1  # the first step ends past a zero budget: logged, saved, stopped
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [1]
    resumed = trainer.fit(_data(), output_dir=str(tmp_path), progress=False)
    assert int(resumed.step) == 6


def test_equal_plans_share_one_compiled_step():
    """The numbers of a run (loss weights, disc_start, EMA decay, restart period, seed) are
    arguments of the compiled step, not constants in it: a trainer that changes only them runs the
    program already compiled, and still follows its own numbers."""
    from vqgan_flax.train.step import compiled_train_step, step_arguments

    batch = jnp.asarray(_data().batch(0, 8))
    first = _trainer(disc_start=0, ema_decay=0.5)
    first_metrics = first.train_step(first.init_state(), batch)[1]
    compiled = compiled_train_step._cache_size()
    second = _trainer(disc_start=5, ema_decay=0.9, codebook_weight=3.0, disc_weight=0.3, seed=4)
    assert second.plan == first.plan
    state, metrics = second.train_step(second.init_state(), batch)
    assert compiled_train_step._cache_size() == compiled
    assert float(first_metrics["disc_factor"]) == 1.0 and float(metrics["disc_factor"]) == 0.0  # disc_start 5
    assert float(metrics["loss"]) == pytest.approx(float(metrics["nll_loss"] + 3.0 * metrics["quant_loss"]), rel=1e-6)
    start = jax.device_get(second.init_state().params)
    expected = jax.tree.map(lambda s, p: 0.9 * s + 0.1 * p, start, jax.device_get(state.params))
    for a, b in zip(jax.tree.leaves(jax.device_get(state.ema_params)), jax.tree.leaves(expected)):
        assert_close(a, b, "ema", atol=1e-6)
    # What changes the program makes a new plan: a term switched on, another schedule, another model.
    assert _trainer(chroma_weight=1.0).plan != first.plan and _trainer(schedule="cosine").plan != first.plan
    assert _trainer(learning_rate=2e-3, steps=9, ema_decay=0.1).plan == first.plan
    assert _trainer(schedule="cosine", steps=9, warmup_steps=2).plan == _trainer(schedule="cosine").plan
    # The optimisers keep optax.adam's states, so train states saved before still restore.
    for ours, theirs in (
        (first.optimizer, optax.adam(optax.constant_schedule(1e-3), b1=0.5, b2=0.9)),
        (first.disc_optimizer, optax.adam(1e-3)),
    ):
        params = first.init_state().params
        assert jax.tree.structure(ours.init(params)) == jax.tree.structure(theirs.init(params))
    with pytest.raises(ValueError, match="codebook_weight must be a non-negative number; got -1.0"):
        step_arguments(TrainingConfig(codebook_weight=-1.0))
    with pytest.raises(ValueError, match="disc_weight must be a non-negative number; got nan"):
        _trainer(disc_weight=float("nan"))
