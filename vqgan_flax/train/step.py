"""The train step: one pure function of (plan, numbers, state, batch, LPIPS params), jit-compiled
once per [`StepPlan`]. The plan holds what shapes the program (model, discriminator, schedule,
which loss terms exist); the numbers (loss weights, ``disc_start``, learning rate, warm-up and run
length, EMA decay, restart period, seed) are traced arguments, so changing one does not compile again.

May import: models, hub (for the model type), the other training modules.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from ..hub.modeling import FlaxVQGANModel
from ..models.outputs import VQGANOutput
from .config import TrainingConfig
from .losses import (
    NLayerDiscriminator,
    adaptive_weight,
    adopt_weight,
    codebook_usage,
    colour_anchor_loss,
    generator_adversarial_loss,
    hinge_d_loss,
    r1_penalty,
    reconstruction_loss,
    vanilla_d_loss,
)
from .lpips import LPIPS


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; serialised as one msgpack for exact resumption."""

    step: jax.Array
    params: Any
    disc_params: Any
    opt_state: Any
    disc_opt_state: Any
    code_counts: jax.Array
    ema_params: Any = None


def warmup_cosine_rate(count: ArrayLike, peak: ArrayLike, warmup_steps: ArrayLike, steps: ArrayLike) -> jax.Array:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps`` (at least 1), then a cosine decay to
    10 % of ``peak`` at ``steps`` (optax's ``warmup_cosine_decay_schedule``); every argument may be
    traced, so the rate and the run's length are numbers of the compiled step, not constants."""
    count = jnp.asarray(count, jnp.float32)
    warm = jnp.maximum(jnp.asarray(warmup_steps, jnp.float32), 1.0)
    length = jnp.maximum(jnp.asarray(steps, jnp.float32), jnp.asarray(warmup_steps, jnp.float32) + 1.0) - warm
    rising = peak * jnp.minimum(count, warm) / warm
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(count - warm, 0.0, length) / length))
    return jnp.where(count < warm, rising, peak * (0.9 * cosine + 0.1))


def learning_rate_schedule(config: TrainingConfig) -> optax.Schedule:
    """The autoencoder's learning rate per step (see ``TrainingConfig.schedule``)."""
    if config.schedule == "constant":
        return optax.constant_schedule(config.learning_rate)
    return lambda count: warmup_cosine_rate(count, config.learning_rate, config.warmup_steps, config.steps)


_INT32_MAX = 2**31 - 1  # the step counter is int32: a threshold past it is never reached
_WEIGHTS = ("codebook_weight", "perceptual_weight", "chroma_weight", "ssim_weight", "colour_anchor_weight",
            "disc_weight", "disc_factor", "weight_decay", "r1_weight")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _ByConfig:
    """A Flax module compared and hashed by its model's config and dtypes (a module holding a
    transformers-style config is not hashable), so equal models share one compiled step."""

    key: str
    module: Any = dataclasses.field(compare=False, hash=False)


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What shapes the train step's program: the model, the discriminator, the schedule's kind and
    which loss terms exist. The numbers that do not change the program (loss weights,
    ``disc_start``, the learning rate and the run's length, the EMA decay, the restart period, the
    seed) are arguments of the step ([`step_arguments`]), so trainers with equal plans share one
    compiled step: a sweep over loss weights, a resumed run or a second trainer in the same process
    does not compile again."""

    model: _ByConfig
    discriminator: NLayerDiscriminator
    disc_loss: str
    reconstruction_loss: str
    schedule: str
    adam_b1: float
    adam_b2: float
    gan: bool
    perceptual: bool
    chroma: bool
    ssim: bool
    colour_anchor: bool
    quantize_after: bool
    restarts: bool
    ema: bool
    decay: bool = False
    clip: bool = False
    adaptive: bool = True
    gen_loss: str = "hinge"
    r1: bool = False

    @classmethod
    def of(cls, model: FlaxVQGANModel, config: TrainingConfig, perceptual: bool) -> StepPlan:
        """The plan of training ``model`` with ``config`` (``perceptual``: LPIPS params are given)."""
        dtypes = f"{jnp.dtype(model.module.dtype).name}|{jnp.dtype(model.module.param_dtype).name}"
        key = f"{model.config.to_json_string()}|{dtypes}"
        return cls(
            model=_ByConfig(key, model.module),
            discriminator=NLayerDiscriminator(config.disc_ndf, config.disc_num_layers),
            disc_loss=config.disc_loss,
            reconstruction_loss=config.reconstruction_loss,
            schedule=config.schedule,
            adam_b1=float(config.adam_b1),
            adam_b2=float(config.adam_b2),
            gan=config.disc_weight > 0 and config.disc_factor > 0,
            perceptual=perceptual and config.perceptual_weight > 0,
            chroma=config.chroma_weight > 0,
            ssim=config.ssim_weight > 0,
            colour_anchor=config.colour_anchor_weight > 0,
            quantize_after=config.quantize_after > 0,
            restarts=bool(config.codebook_restart_every) and model.config.quantizer == "vq",
            ema=bool(config.ema_decay),
            decay=config.weight_decay > 0,
            clip=config.max_grad_norm is not None,
            adaptive=bool(config.adaptive_disc_weight),
            gen_loss=config.gen_loss,
            r1=config.r1_weight > 0,
        )

    def optimizers(
        self, numbers: Dict[str, jax.Array]
    ) -> Tuple[optax.GradientTransformation, optax.GradientTransformation]:
        """Adam for the autoencoder (with its schedule) and for the discriminator (constant rate),
        reading the rate and the run's length from ``numbers``: optax's ``adam`` chain, so the
        optimiser states (and saved train states) are the ones ``optax.adam`` keeps."""
        rate = numbers["learning_rate"]
        if self.schedule == "cosine":
            schedule = lambda count: warmup_cosine_rate(count, rate, numbers["warmup_steps"], numbers["steps"])  # noqa: E731
        else:
            schedule = lambda count: rate  # noqa: E731
        # Clipping and weight decay only where asked for: without them the chain (and a saved
        # optimiser state) is exactly optax.adam's.
        clip = [optax.clip_by_global_norm(numbers["max_grad_norm"])] if self.clip else []
        adam = lambda: optax.scale_by_adam(b1=self.adam_b1, b2=self.adam_b2)  # noqa: E731
        decay = [optax.add_decayed_weights(numbers["weight_decay"])] if self.decay else []
        autoencoder = optax.chain(*clip, adam(), *decay, optax.scale_by_schedule(lambda count: -schedule(count)))
        return autoencoder, optax.chain(*clip, adam(), optax.scale(-rate))


def step_arguments(config: TrainingConfig) -> Dict[str, jax.Array]:
    """The numbers of ``config`` the train step reads at run time (see [`StepPlan`])."""
    for name in (*_WEIGHTS, "ema_decay"):
        value = getattr(config, name)
        if value is not None and not value >= 0:  # also refuses nan
            raise ValueError(f"{name} must be a non-negative number; got {value!r}")
    as_float = lambda value: jnp.asarray(value, jnp.float32)  # noqa: E731
    as_step = lambda value: jnp.asarray(min(int(value), _INT32_MAX), jnp.int32)  # noqa: E731
    until = config.codebook_restart_until
    return {
        **{name: as_float(getattr(config, name)) for name in _WEIGHTS},
        "key": jax.random.PRNGKey(config.seed),
        "learning_rate": as_float(config.learning_rate),
        "warmup_steps": as_step(config.warmup_steps),
        "steps": as_step(config.steps),
        "disc_start": as_step(config.disc_start),
        "quantize_after": as_step(config.quantize_after),
        "ema_decay": as_float(config.ema_decay or 0.0),
        "max_grad_norm": as_float(config.max_grad_norm or 0.0),
        "restart_every": as_step(config.codebook_restart_every or 1),
        "restart_until": as_step(_INT32_MAX if until is None else until),
    }


def _train_step(
    plan: StepPlan, numbers: Dict[str, jax.Array], state: TrainState, batch: jax.Array, lpips_params: Optional[Dict]
) -> Tuple[TrainState, Dict[str, jax.Array]]:
    module, n_embed = plan.model.module, plan.model.module.config.n_embed
    rng = jax.random.fold_in(numbers["key"], state.step)
    dropout_rng, gumbel_rng = jax.random.split(rng)
    factor = adopt_weight(numbers["disc_factor"], state.step, numbers["disc_start"])
    perceptual = None
    if plan.perceptual:
        lpips = LPIPS()
        weights = lpips_params or {}
        perceptual = lambda a, b: lpips.apply({"params": weights}, a, b)  # noqa: E731
    codebook_weight, anchor_weight = numbers["codebook_weight"], numbers["colour_anchor_weight"]

    def generator_terms(params):
        variables, rngs = {"params": params}, {"dropout": dropout_rng, "gumbel": gumbel_rng}
        if plan.quantize_after:
            encoded = module.apply(variables, batch, train=True, rngs=rngs, method="encode")
            states = jnp.where(state.step < numbers["quantize_after"], encoded.latents, encoded.quant_states)
            decoded = module.apply(variables, states, train=True, rngs=rngs, method="decode")
            out = VQGANOutput(
                decoded, encoded.indices, encoded.quant_states, encoded.latents, encoded.loss, encoded.logits
            )
        else:
            out = module.apply(variables, batch, train=True, rngs=rngs)
        nll = reconstruction_loss(
            batch, out.reconstruction, plan.reconstruction_loss, perceptual, numbers["perceptual_weight"],
            numbers["chroma_weight"] if plan.chroma else 0.0, numbers["ssim_weight"] if plan.ssim else 0.0,
        )  # fmt: skip
        logits_fake = plan.discriminator.apply({"params": state.disc_params}, out.reconstruction)
        anchor = colour_anchor_loss(batch, out.latents) if plan.colour_anchor else jnp.zeros(())
        return (nll, generator_adversarial_loss(logits_fake, plan.gen_loss), out.loss, anchor), out

    if not plan.gan:
        # Reconstruction and codebook terms only: one backward pass, the discriminator untouched.
        def plain_terms(params):
            (nll, _, q_loss, anchor), out = generator_terms(params)
            return nll + codebook_weight * q_loss + anchor_weight * anchor, (nll, q_loss, anchor, out)

        (_, (nll, q_loss, anchor, out)), grads = jax.value_and_grad(plain_terms, has_aux=True)(state.params)
        zero = jnp.zeros((), jnp.float32)
        g_loss = d_weight = d_loss = logits_real = logits_fake = zero
        disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
    else:
        (nll, g_loss, q_loss, anchor), backward, out = jax.vjp(generator_terms, state.params, has_aux=True)
        zero, one = jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32)
        (nll_grads,) = backward((one, zero, codebook_weight, anchor_weight))
        (g_grads,) = backward((zero, one, zero, zero))
        last = lambda tree: tree["decoder"]["conv_out"]["kernel"]  # noqa: E731
        if plan.adaptive:
            d_weight = adaptive_weight(last(nll_grads), last(g_grads), numbers["disc_weight"])
        else:
            d_weight = numbers["disc_weight"]
        grads = jax.tree.map(lambda a, b: a + d_weight * factor * b, nll_grads, g_grads)
        disc_params, disc_opt_state, d_loss, logits_real, logits_fake = _disc_step(
            plan, numbers, state, batch, jax.lax.stop_gradient(out.reconstruction), factor
        )
    optimizer, _ = plan.optimizers(numbers)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    code_counts = state.code_counts + jnp.bincount(out.indices.reshape(-1), length=n_embed)
    if plan.restarts:
        params, code_counts = _restart_dead_codes(numbers, params, code_counts, out.latents, state.step + 1, rng)
    ema = state.ema_params
    if plan.ema:
        decay = numbers["ema_decay"]
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
    metrics = {
        "loss": nll + d_weight * factor * g_loss + codebook_weight * q_loss + anchor_weight * anchor,
        "nll_loss": nll,
        "quant_loss": q_loss,
        "colour_anchor_loss": anchor,
        "g_loss": g_loss,
        "d_weight": jnp.where(factor > 0, d_weight, 0.0),  # not computed before disc_start
        "disc_factor": factor,
        "disc_loss": d_loss,
        "logits_real": logits_real,
        "logits_fake": logits_fake,
        **codebook_usage(out.indices, n_embed),
    }
    new_state = TrainState(state.step + 1, params, disc_params, opt_state, disc_opt_state, code_counts, ema)
    return new_state, metrics


def _disc_step(
    plan: StepPlan, numbers: Dict[str, jax.Array], state: TrainState, batch: jax.Array, fake: jax.Array, factor
):
    """One discriminator update on real ``batch`` against the (detached) reconstructions."""
    d_loss_fn = hinge_d_loss if plan.disc_loss == "hinge" else vanilla_d_loss
    discriminator = plan.discriminator

    def disc_objective(disc_params):
        logits_real = discriminator.apply({"params": disc_params}, batch)
        logits_fake = discriminator.apply({"params": disc_params}, fake)
        loss = d_loss_fn(logits_real, logits_fake)
        if plan.r1:
            penalty = r1_penalty(lambda x: discriminator.apply({"params": disc_params}, x), batch)
            loss = loss + 0.5 * numbers["r1_weight"] * penalty
        return factor * loss, (logits_real.mean(), logits_fake.mean())

    (d_loss, (logits_real, logits_fake)), d_grads = jax.value_and_grad(disc_objective, has_aux=True)(state.disc_params)
    _, disc_optimizer = plan.optimizers(numbers)
    d_updates, disc_opt_state = disc_optimizer.update(d_grads, state.disc_opt_state, state.disc_params)
    return optax.apply_updates(state.disc_params, d_updates), disc_opt_state, d_loss, logits_real, logits_fake


def _restart_dead_codes(numbers: Dict[str, jax.Array], params: Any, counts: jax.Array, latents, step, rng):
    """At every ``restart_every``-th step up to ``restart_until``, move unused codes onto random latents."""
    flat = jax.lax.stop_gradient(latents).reshape(-1, latents.shape[-1]).astype(jnp.float32)
    picks = jax.random.randint(jax.random.fold_in(rng, 7), (counts.shape[0],), 0, flat.shape[0])
    restart = (step % numbers["restart_every"] == 0) & (step <= numbers["restart_until"])
    dead = restart & (counts == 0)
    codebook = params["quantize"]["embedding"]["embedding"]
    new_codebook = jnp.where(dead[:, None], flat[picks].astype(codebook.dtype), codebook)
    params = {**params, "quantize": {"embedding": {"embedding": new_codebook}}}
    return params, jnp.where(restart, 0, counts)


# One program per plan (and per input shapes and shardings); jit's cache is keyed by the plan.
compiled_train_step = jax.jit(_train_step, static_argnums=0, donate_argnums=2)
