"""Training recipes (issue 35): AdamW's decoupled weight decay, gradient clipping, a fixed
adversarial weight, the non-saturating generator loss, R1, and named recipe files
(`--recipe llamagen-vq`, LlamaGen's VQ settings) under the command line's flags."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image
from test_training import _data, _trainer
from utils import assert_close, run_cli

from vqgan_flax.train.config import TrainingConfig, list_recipes, load_recipe
from vqgan_flax.train.losses import generator_adversarial_loss, r1_penalty
from vqgan_flax.train.step import StepPlan, step_arguments


def _optimizer(**fields):
    config = TrainingConfig(**fields)
    model = _trainer().model
    return StepPlan.of(model, config, perceptual=False).optimizers(step_arguments(config))[0]


def test_the_optimiser_is_adam_adamw_or_clipped_adam_as_configured():
    """Without the new options the chain's state is optax.adam's (saved states still load); with
    weight decay one update is optax.adamw's; with clipping, clip_by_global_norm's then Adam's."""
    params = {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.asarray([0.1, -0.2])}
    grads = {"w": jnp.asarray([[3.0, -1.0], [2.0, 0.5]]), "b": jnp.asarray([4.0, -6.0])}
    base = dict(learning_rate=1e-2, adam_b1=0.9, adam_b2=0.95)
    plain = _optimizer(**base)
    state = plain.init(params)
    reference = optax.adam(1e-2, b1=0.9, b2=0.95)
    assert jax.tree.structure(jax.tree.map(np.shape, state)) == jax.tree.structure(
        jax.tree.map(
            np.shape,
            optax.chain(optax.scale_by_adam(0.9, 0.95), optax.scale_by_schedule(lambda count: -1e-2)).init(params),
        )
    )
    for optimizer, expected in (
        (_optimizer(**base, weight_decay=0.05), optax.adamw(1e-2, b1=0.9, b2=0.95, weight_decay=0.05)),
        (_optimizer(**base, max_grad_norm=1.0), optax.chain(optax.clip_by_global_norm(1.0), reference)),
    ):
        ours, _ = optimizer.update(grads, optimizer.init(params), params)
        theirs, _ = expected.update(grads, expected.init(params), params)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
            assert_close(a, b, "update", atol=1e-7, rtol=1e-6)


def test_gan_terms_non_saturating_and_r1():
    logits = jnp.asarray([-2.0, 0.0, 3.0])
    assert float(generator_adversarial_loss(logits)) == pytest.approx(-1 / 3)
    assert float(generator_adversarial_loss(logits, "non_saturating")) == pytest.approx(
        float(np.mean(np.log1p(np.exp(-np.asarray(logits))))), rel=1e-6
    )
    w = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2, 3)).astype(np.float32))
    real = jnp.ones((4, 2, 2, 3))
    # D(x) = <w, x> per image: its input gradient is w for every image, so R1 is |w|^2.
    assert float(r1_penalty(lambda x: jnp.sum(x * w, axis=(1, 2, 3)), real)) == pytest.approx(float(jnp.sum(w**2)))


@pytest.mark.one_stack  # the loss functions are tested on both stacks (above)
def test_fixed_weight_non_saturating_and_r1_reach_the_step():
    """After disc_start: the fixed weight is disc_weight itself; R1 raises the discriminator's
    loss by γ/2 ‖∇D‖² (same state and batch); the non-saturating generator term is softplus."""
    batch = _data().batch(0, 8)
    logged = {}
    for name, fields in (("plain", {}), ("fixed", {"adaptive_disc_weight": False, "disc_weight": 0.3}),
                         ("r1", {"r1_weight": 10.0}), ("ns", {"gen_loss": "non_saturating"})):  # fmt: skip
        trainer = _trainer(disc_start=0, **fields)
        _, metrics = trainer.train_step(trainer.init_state(), trainer.shard(batch))
        logged[name] = jax.device_get(metrics)
    assert float(logged["fixed"]["d_weight"]) == pytest.approx(0.3)
    assert float(logged["plain"]["d_weight"]) != pytest.approx(0.3)
    assert float(logged["r1"]["disc_loss"]) > float(logged["plain"]["disc_loss"])
    # mean(softplus(-D)) is at least softplus(-mean D) (softplus is convex), and positive.
    softplus_of_mean = float(jax.nn.softplus(-logged["ns"]["logits_fake"]))
    assert float(logged["ns"]["g_loss"]) >= softplus_of_mean - 1e-6 and float(logged["ns"]["g_loss"]) > 0
    with pytest.raises(ValueError, match="unknown gen_loss 'soft'"):
        _trainer(gen_loss="soft")
    with pytest.raises(ValueError, match="max_grad_norm must be a positive number"):
        _trainer(max_grad_norm=0.0)


@pytest.mark.one_stack  # recipe loading and flag precedence are plain Python
def test_the_llamagen_recipe_and_flags_over_it(tmp_path, capsys):
    """The shipped recipe holds LlamaGen's settings; on the command line every flag given wins
    over it and the recipe over the defaults; the record keeps the result; a recipe with a field
    the trainer lacks is refused by name."""
    assert "llamagen-vq" in list_recipes()
    recipe = load_recipe("llamagen-vq")
    assert recipe["model"] == "llamagen-vq-ds16"
    assert {k: recipe["training"][k] for k in ("adam_b1", "adam_b2", "max_grad_norm", "reconstruction_loss",
                                               "disc_start", "adaptive_disc_weight")} == {
        "adam_b1": 0.9, "adam_b2": 0.95, "max_grad_norm": 1.0, "reconstruction_loss": "l2", "disc_start": 20000,
        "adaptive_disc_weight": False}  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(data / "a.png")
    code, _, err = run_cli(capsys, "train", "--recipe", "llamagen-vq", "--config", "tiny", "--data", data,
                           "--output", tmp_path / "run", "--steps", 1, "--batch-size", 8, "--crop-size", 16,
                           "--disc-num-layers", 1, "--disc-ndf", 16, "--quiet")  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / "run" / "training_config.json").read_text())
    assert (record["steps"], record["batch_size"], record["disc_num_layers"]) == (1, 8, 1)
    assert (record["adam_b1"], record["max_grad_norm"], record["reconstruction_loss"]) == (0.9, 1.0, "l2")
    assert record["adaptive_disc_weight"] is False and record["model_config"]["ch"] == 32
    (tmp_path / "bad.json").write_text(json.dumps({"model": None, "training": {"learning_rat": 1}}))
    with pytest.raises(ValueError, match="bad.json: training fields TrainingConfig does not have: learning_rat"):
        load_recipe(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="--recipe nope: neither a shipped recipe"):
        load_recipe("nope")
