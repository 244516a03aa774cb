"""``VQGAN``: LWM's convenience class (load, optionally replicate, encode/decode compiled), with
our exact model underneath.

    vqgan = VQGAN("path/to/folder_or_lwm_pickle", replicate=True)
    quantized, indices = vqgan.encode(images)   # images (B, H, W, 3) or video (B, T, H, W, 3)
    pixels = vqgan.decode(indices)              # clipped to [-1, 1]
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ..conversion import load_lwm_checkpoint
from ..data.parallel import replicate_params, shard_batch, unshard
from ..hub.modeling import FlaxVQGANModel
from ..models.input_checks import check_indices, check_pixels


def load_checkpoint(
    vqgan_checkpoint: Any, dtype: jnp.dtype = jnp.float32, lwm_config: Optional[Dict[str, Any]] = None, **kwargs: Any
) -> Tuple[FlaxVQGANModel, Dict]:
    """A model (without bound params) and its params from a ``from_pretrained`` folder / Hub id
    or an LWM params pickle (a file)."""
    if os.path.isfile(os.fspath(vqgan_checkpoint)):
        config, params = load_lwm_checkpoint(vqgan_checkpoint, lwm_config)
        return FlaxVQGANModel(config, dtype=dtype, _do_init=False), params
    return FlaxVQGANModel.from_pretrained(vqgan_checkpoint, dtype=dtype, _do_init=False, **kwargs)


class VQGAN:
    """Tokenize images and videos with a VQGAN, on one device (``jit``) or all local devices (``pmap``).

    Args:
        vqgan_checkpoint: a folder or Hub repo id that ``FlaxVQGANModel.from_pretrained`` loads, or
            an LWM checkpoint file (a pickle of LWM's params; its config is read from an LWM-style
            ``config.json`` beside it, else LWM's published defaults).
        replicate: replicate the params on all local devices and ``pmap`` encode/decode; any batch
            size works (it is padded to a multiple of the device count and the padding dropped).
        dtype: computation dtype.
        lwm_config: LWM config fields overriding the ``config.json`` lookup for LWM pickles.
    """

    def __init__(
        self,
        vqgan_checkpoint: Any,
        replicate: bool = False,
        dtype: jnp.dtype = jnp.float32,
        lwm_config: Optional[Dict[str, Any]] = None,
        devices: Optional[Sequence[jax.Device]] = None,
        **from_pretrained_kwargs: Any,
    ) -> None:
        self.model, params = load_checkpoint(vqgan_checkpoint, dtype, lwm_config, **from_pretrained_kwargs)
        self.config = self.model.config
        self.replicate = replicate
        self.devices = list(devices or jax.local_devices())
        self.params = replicate_params(params, self.devices) if replicate else jax.device_put(params, self.devices[0])

        # Under our own jit the model cannot see the device: pass the micro-batching an eager call would use.
        micro = None if replicate else self.model.default_micro_batch_size(jax.tree.leaves(self.params)[0])

        def encode(pixel_values, params):
            out = self.model.encode(pixel_values, params=params, micro_batch_size=micro)
            height, width = out.quant_states.shape[1:3]
            return out.quant_states, out.indices.reshape(-1, height, width)

        def decode(indices, params):
            return jnp.clip(self.model.decode_code(indices, params=params, micro_batch_size=micro), -1.0, 1.0)

        wrap = (lambda fn: jax.pmap(fn, devices=self.devices)) if replicate else jax.jit
        self._encode, self._decode = wrap(encode), wrap(decode)

    def _run(self, fn, batch: Any, item_ndim: int) -> Any:
        batch = np.asarray(batch)
        video_frames = None
        if batch.ndim == item_ndim + 2:  # (B, T, ...): frames are encoded like images
            video_frames = batch.shape[1]
            batch = batch.reshape(-1, *batch.shape[2:])
        elif batch.ndim != item_ndim + 1:
            kinds = "images (B, H, W, C) or video (B, T, H, W, C)" if item_ndim == 3 else "(B, h, w) or (B, T, h, w)"
            raise ValueError(f"expected {kinds}; got shape {batch.shape}")
        if self.replicate:
            sharded, pad = shard_batch(batch, len(self.devices))
            out = unshard(fn(sharded, self.params), pad)
        else:
            out = fn(batch, self.params)
        if video_frames is not None:
            out = jax.tree.map(lambda x: x.reshape(-1, video_frames, *x.shape[1:]), out)
        return out

    def encode(self, pixel_values: Any) -> Tuple[jax.Array, jax.Array]:
        """Pixels in [-1, 1] → ``(quantized, indices)``; indices as a grid (B, h, w) or (B, T, h, w)."""
        pixels = np.asarray(pixel_values)
        if pixels.ndim in (4, 5):  # other shapes get _run's own message
            check_pixels(pixels.reshape(-1, *pixels.shape[-3:]), self.model.config.in_channels)  # video: B*T frames
        return self._run(self._encode, pixel_values, item_ndim=3)

    def decode(self, indices: Any) -> jax.Array:
        """Indices (B, h, w) or (B, T, h, w) → pixels clipped to [-1, 1]."""
        check_indices(indices, self.model.config.n_embed)
        return self._run(self._decode, np.asarray(indices, dtype=np.int32), item_ndim=2)
