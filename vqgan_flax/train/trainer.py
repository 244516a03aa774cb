"""Training and fine-tuning a VQGAN as taming does: Adam(β=(0.5, 0.9)) for the autoencoder and
a PatchGAN discriminator, L1 (+ optional LPIPS) reconstruction, codebook terms, hinge GAN loss
with taming's adaptive weight from ``disc_start`` on; data-parallel over all devices. The train
step itself is in ``step``; this module holds the crops, the trainer and its loop.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from ..data.image_io import list_images, open_rgb
from ..data.parallel import make_mesh
from ..hub.modeling import FlaxVQGANModel
from .config import TrainingConfig
from .resume import check_resume, run_record
from .step import StepPlan, TrainState, compiled_train_step, learning_rate_schedule, step_arguments
from .watch import RunWriter, ValidationSet, sample_grid, validate


class ImageCrops:
    """Random square crops (and horizontal flips) of a folder of images, deterministic per step.

    Images are decoded once (RGB, uint8). A step's batch depends only on ``(seed, step)``, so a
    resumed run sees exactly the batches an uninterrupted one would.

    Augmentations (off by default): ``min_scale`` < 1 takes each crop from a region up to
    ``crop_size / min_scale`` pixels wide (log-uniform) shrunk to ``crop_size`` (PIL's antialiased
    bicubic), so one photograph gives detail at several scales; ``colour_jitter`` = j multiplies
    brightness, contrast and saturation by factors drawn from [1 - j, 1 + j]; ``tint`` = t multiplies
    each channel by its own factor from [1 - t, 1 + t] (a colour cast, also on grayscale photographs);
    ``channel_shuffle`` permutes R, G and B at random, so a few photographs teach every hue (a model
    trained on skimage's mostly red and brown colour images turned a blue sky orange).
    """

    def __init__(
        self,
        images: Sequence[Any],
        crop_size: int,
        seed: int = 0,
        min_scale: float = 1.0,
        colour_jitter: float = 0.0,
        tint: float = 0.0,
        channel_shuffle: bool = False,
    ) -> None:

        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer; got {seed!r}")  # numpy's rng needs one
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1]; got {min_scale}")
        if not 0 <= colour_jitter < 1:
            raise ValueError(f"colour_jitter must be in [0, 1); got {colour_jitter}")
        if not 0 <= tint < 1:
            raise ValueError(f"tint must be in [0, 1); got {tint}")
        self.crop_size = crop_size
        self.seed = seed
        self.min_scale = min_scale
        self.colour_jitter = colour_jitter
        self.tint = tint
        self.channel_shuffle = bool(channel_shuffle)
        self.images: List[np.ndarray] = []
        for item in images:
            if isinstance(item, np.ndarray):
                array = item
            else:
                image = open_rgb(item)  # regular files only, within the decode budget
                if min(image.size) < crop_size:  # upscale small images so a crop fits
                    scale = crop_size / min(image.size)
                    image = image.resize((round(image.width * scale + 0.5), round(image.height * scale + 0.5)))
                array = np.asarray(image)
            if array.ndim != 3 or min(array.shape[:2]) < crop_size:
                raise ValueError(f"image of shape {array.shape} cannot give {crop_size}x{crop_size} crops")
            self.images.append(array)
        if not self.images:
            raise ValueError("no training images")
        self.source: Optional[str] = None

    def describe(self) -> Dict[str, Any]:
        """What decides the batches, for the run's record: the source folder (when known), the
        image count, the crop size and the augmentations (the seed is the training config's)."""
        return {"source": self.source, "images": len(self.images), "crop_size": self.crop_size,
                "min_scale": self.min_scale, "colour_jitter": self.colour_jitter, "tint": self.tint,
                "channel_shuffle": self.channel_shuffle}  # fmt: skip

    @classmethod
    def from_folder(cls, folder: str, crop_size: int, seed: int = 0, **augment: Any) -> ImageCrops:
        """Crops of every image in ``folder`` (``augment``: the keyword arguments of ``__init__``)."""
        crops = cls(list_images(folder), crop_size, seed, **augment)
        crops.source = os.path.abspath(folder)
        return crops

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """(batch_size, crop, crop, 3) float32 in [-1, 1] for ``step``."""
        rng = np.random.default_rng((self.seed, step))
        out = np.empty((batch_size, self.crop_size, self.crop_size, 3), np.float32)
        for k in range(batch_size):
            image = self.images[rng.integers(len(self.images))]
            side = self.crop_size
            if self.min_scale < 1:
                scale = float(np.exp(rng.uniform(np.log(self.min_scale), 0.0)))
                side = min(round(self.crop_size / scale), *image.shape[:2])
            top = rng.integers(image.shape[0] - side + 1)
            left = rng.integers(image.shape[1] - side + 1)
            crop = image[top : top + side, left : left + side]
            if side != self.crop_size:
                from PIL import Image

                size = (self.crop_size, self.crop_size)
                crop = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BICUBIC, reducing_gap=None))
            crop = (crop[:, ::-1] if rng.random() < 0.5 else crop).astype(np.float32) / 255.0
            if self.colour_jitter:
                crop = self._jitter(crop, rng)
            # Drawn only when enabled, so runs without them see the batches they always saw.
            if self.tint:
                crop = np.clip(crop * rng.uniform(1 - self.tint, 1 + self.tint, 3).astype(np.float32), 0.0, 1.0)
            if self.channel_shuffle:
                crop = crop[..., rng.permutation(3)]
            out[k] = crop * 2.0 - 1.0
        return out

    def _jitter(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Brightness, contrast and saturation changes of a [0, 1] crop, clipped back to [0, 1]."""
        brightness, contrast, saturation = rng.uniform(1 - self.colour_jitter, 1 + self.colour_jitter, 3)
        gray = crop @ np.array([0.299, 0.587, 0.114], np.float32)
        crop = crop * brightness
        crop = (crop - gray.mean() * brightness) * contrast + gray.mean() * brightness
        gray = crop @ np.array([0.299, 0.587, 0.114], np.float32)
        crop = (crop - gray[..., None]) * saturation + gray[..., None]
        return np.clip(crop, 0.0, 1.0)


def patch_grid_size(image_size: int, num_layers: int) -> int:
    """Side of the PatchGAN logit grid for square inputs of ``image_size``."""
    size = image_size
    for _ in range(num_layers):
        size = (size + 2 - 4) // 2 + 1  # 4x4, stride 2, pad 1
    return size - 2  # two 4x4 stride-1 convs with pad 1 each remove one pixel


class VQGANTrainer:
    """Jit-compiled taming-style training of a [`FlaxVQGANModel`] (from scratch or fine-tuning).

    Args:
        model: the model to train; its ``params`` (e.g. a converted taming checkpoint) are the start.
        config: [`TrainingConfig`].
        lpips_params: LPIPS params (see ``vqgan_flax.train.lpips``); without them no perceptual term.
        mesh: data-parallel mesh (default: all devices); the batch is split over it.
    """

    def __init__(
        self,
        model: FlaxVQGANModel,
        config: TrainingConfig,
        lpips_params: Optional[Dict] = None,
        mesh: Optional[jax.sharding.Mesh] = None,
    ) -> None:
        if config.gen_loss not in ("hinge", "non_saturating"):
            raise ValueError(f"unknown gen_loss {config.gen_loss!r}; expected 'hinge' or 'non_saturating'")
        if config.max_grad_norm is not None and not config.max_grad_norm > 0:
            raise ValueError(
                f"max_grad_norm must be a positive number (or None: no clipping); got {config.max_grad_norm!r}"
            )
        if config.disc_loss not in ("hinge", "vanilla"):
            raise ValueError(f"unknown disc_loss {config.disc_loss!r}; expected 'hinge' or 'vanilla'")
        if config.schedule not in ("constant", "cosine"):
            raise ValueError(f"unknown schedule {config.schedule!r}; expected 'constant' or 'cosine'")
        patches = patch_grid_size(config.crop_size, config.disc_num_layers)
        if patches < 1:
            raise ValueError(
                f"crop_size={config.crop_size} is too small for a {config.disc_num_layers}-layer discriminator "
                "(no patch logits left); use larger crops or fewer disc_num_layers"
            )
        if config.colour_anchor_weight and (model.config.quantizer != "vq" or model.config.embed_dim < 3):
            raise ValueError(
                f"colour_anchor_weight needs the nearest-neighbour quantizer and embed_dim >= 3; this model has "
                f"quantizer {model.config.quantizer!r}, embed_dim {model.config.embed_dim}"
            )
        self.model = model
        self.config = config
        self.mesh = mesh or make_mesh()
        self.lpips_params = lpips_params
        self.plan = StepPlan.of(model, config, perceptual=lpips_params is not None)
        self.discriminator = self.plan.discriminator
        self._arguments = step_arguments(config)
        self.optimizer, self.disc_optimizer = self.plan.optimizers(self._arguments)
        data = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(self.mesh.axis_names[0]))
        self._data_sharding = data
        self._replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

    def train_step(self, state: TrainState, batch: jax.Array) -> Tuple[TrainState, Dict[str, jax.Array]]:
        """One step: the new state (``state``'s buffers are donated) and the step's metrics."""
        return compiled_train_step(self.plan, self._arguments, state, batch, self.lpips_params)

    def init_state(self, params: Optional[Dict] = None) -> TrainState:
        """A fresh state from ``params`` (default: the model's), a new discriminator and optimisers."""
        # Copies: the step donates the state's buffers, and the model's own params must survive it
        # (a second fit or restore in the same process starts from them again).
        params = jax.tree.map(jnp.array, self.model.params if params is None else params)
        key = jax.random.PRNGKey(self.config.seed)
        dummy = jnp.zeros((1, self.config.crop_size, self.config.crop_size, self.model.config.out_ch))
        disc_params = self.discriminator.init(key, dummy)["params"]
        state = TrainState(
            step=jnp.asarray(0, jnp.int32),
            params=params,
            disc_params=disc_params,
            opt_state=self.optimizer.init(params),
            disc_opt_state=self.disc_optimizer.init(disc_params),
            code_counts=jnp.zeros((self.model.config.n_embed,), jnp.int32),
            # A copy: params and EMA are donated to the step as separate buffers.
            ema_params=jax.tree.map(jnp.copy, params) if self.config.ema_decay else None,
        )
        return jax.device_put(state, self._replicated)

    @property
    def uses_discriminator(self) -> bool:
        """False when ``disc_weight`` or ``disc_factor`` is 0: the GAN terms are skipped entirely."""
        return self.plan.gan

    def shard(self, batch: np.ndarray) -> jax.Array:
        """Put a global batch on the mesh, split over its data axis."""
        if len(batch) % self.mesh.size:
            raise ValueError(f"batch size {len(batch)} is not a multiple of the {self.mesh.size} devices")
        return jax.device_put(batch, self._data_sharding)

    # -- checkpoints ---------------------------------------------------------------------------

    def run_record(self, data: Optional[ImageCrops] = None) -> dict:
        """The run's settings as ``training_config.json`` keeps them (see ``train.resume``)."""
        return run_record(self.config.to_dict(), self.model.config.to_dict(), data.describe() if data else {})

    def save(self, state: TrainState, output_dir: str, data: Optional[ImageCrops] = None) -> str:
        """Write ``train_state.msgpack`` (exact resumption), the run's record
        (``training_config.json``, with the step) and a ``model/`` folder (EMA params when enabled)
        that ``FlaxVQGANModel.from_pretrained`` loads."""
        os.makedirs(output_dir, exist_ok=True)
        host_state = jax.device_get(state)
        tmp = os.path.join(output_dir, "train_state.msgpack.tmp")
        with open(tmp, "wb") as f:
            f.write(serialization.to_bytes(host_state))
        os.replace(tmp, os.path.join(output_dir, "train_state.msgpack"))
        with open(os.path.join(output_dir, "training_config.json"), "w") as f:
            json.dump({**self.run_record(data), "step": int(host_state.step)}, f, indent=2)
        params = host_state.ema_params if self.config.ema_decay else host_state.params
        self.model.save_pretrained(os.path.join(output_dir, "model"), params=params, safe_serialization=True)
        return output_dir

    def restore(self, output_dir: str) -> TrainState:
        """The state saved by [`save`] in ``output_dir``."""
        path = os.path.join(output_dir, "train_state.msgpack")
        with open(path, "rb") as f:
            state = serialization.from_bytes(jax.device_get(self.init_state()), f.read())
        return jax.device_put(state, self._replicated)

    # -- the loop ------------------------------------------------------------------------------

    def fit(
        self,
        data: ImageCrops,
        output_dir: Optional[str] = None,
        state: Optional[TrainState] = None,
        progress: bool = True,
        on_log: Optional[Callable[[Dict[str, float]], None]] = None,
        max_seconds: Optional[float] = None,
        allow_change: Sequence[str] = (),
        validation: Optional[ValidationSet] = None,
    ) -> TrainState:
        """Train up to ``config.steps`` and return the final state.

        Resumes from ``output_dir/train_state.msgpack`` when present; saves every ``save_every``
        steps and at the end; every ``log_every`` steps appends the metrics to
        ``output_dir/log.jsonl`` and passes them to ``on_log``. With ``max_seconds``, stops after
        the first step that ends past that budget, logging and saving it (a later call resumes).
        A resume whose settings differ from the recorded run's is refused before anything is
        written ([`check_resume`]), unless each changed field is in ``allow_change``. With
        ``validation``, every ``val_every`` steps (0: at each checkpoint) and at the end the model
        (its EMA weights with ``ema_decay``) is scored on it: ``val_*`` metrics logged and passed to
        ``on_log``, a sample grid in ``output_dir/samples/``; ``tensorboard`` mirrors the log.
        """
        cfg = self.config
        if state is None:
            resumable = output_dir is not None and os.path.isfile(os.path.join(output_dir, "train_state.msgpack"))
            if output_dir is not None and resumable:
                check_resume(output_dir, self.run_record(data), allow_change, TrainingConfig().to_dict())
                state = self.restore(output_dir)
            else:
                state = self.init_state()
        start = int(state.step)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step")
        writer = RunWriter(output_dir, cfg.tensorboard) if output_dir else None
        val_every = cfg.val_every or cfg.save_every
        began = time.time()
        for step in range(start, cfg.steps):
            state, metrics = self.train_step(state, self.shard(data.batch(step, cfg.batch_size)))
            if bar is not None:
                bar.update(1)
            done = step + 1
            out_of_time = max_seconds is not None and time.time() - began >= max_seconds
            if done % cfg.log_every == 0 or done == cfg.steps or out_of_time:
                logged = {"step": done, "seconds": time.time() - began, **jax.tree.map(float, metrics)}
                if bar is not None:
                    bar.set_postfix(nll=f"{logged['nll_loss']:.4f}", ppl=f"{logged['perplexity']:.0f}")
                if writer is not None:
                    writer.log(logged)
                if on_log is not None:
                    on_log(logged)
            if validation is not None and (done % val_every == 0 or done == cfg.steps or out_of_time):
                self._validate(state, validation, done, writer, on_log)
            if output_dir and (done % cfg.save_every == 0 or done == cfg.steps or out_of_time):
                self.save(state, output_dir, data)
            if out_of_time:
                break
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        return state

    def _validate(self, state: TrainState, held_out: ValidationSet, step: int, writer: Any, on_log: Any) -> None:
        params = jax.device_get(state.ema_params if self.config.ema_decay else state.params)
        scores = validate(self.model, params, held_out, self.config.batch_size)
        grid = sample_grid(held_out.images, scores.pop("reconstructions"))
        logged = {"step": step, **scores}
        if writer is not None:
            writer.log(logged)
            writer.samples(step, grid)
        if on_log is not None:
            on_log(logged)


__all__ = [
    "ImageCrops", "StepPlan", "TrainState", "TrainingConfig", "VQGANTrainer", "learning_rate_schedule",
    "patch_grid_size",
]  # fmt: skip
