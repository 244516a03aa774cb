"""Running a VQGAN on many devices, for any batch size.

Two paths, same results as one device:

- ``jit`` + ``NamedSharding`` (current JAX's recommended path): ``make_mesh()``, then
  ``sharded_encode`` / ``sharded_decode`` / ``sharded_decode_code``. The batch is split over the
  mesh's ``"data"`` axis, the parameters are replicated.
- ``pmap`` (DALL·E-mini's pattern, kept for code and checkpoints that expect it):
  ``replicate_params``, ``shard_batch`` / ``unshard``, ``pmap_encode`` / ``pmap_decode_code``.

Batches whose size is not a multiple of the device count are padded and the padding is dropped
from the results, so callers never see a device axis or the padding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..hub.modeling import FlaxVQGANPreTrainedModel
from ..models.outputs import VQGANEncoderOutput

DATA_AXIS = "data"


def replicate_params(params: Any, devices: Optional[Sequence[jax.Device]] = None) -> Any:
    """Copy ``params`` onto every device (a leading device axis, as ``flax.jax_utils.replicate``).

    Not flax's own: it stacks ``len(devices)`` copies first (on the host, or on the first device
    for jax arrays), eight copies of a 1 GB model before anything is sent; a broadcast view
    sends one host copy to each device."""
    devices = list(devices or jax.local_devices())
    sharding = NamedSharding(Mesh(np.asarray(devices), ("replica",)), PartitionSpec("replica"))

    def put(x):
        x = np.asarray(x)
        return jax.device_put(np.broadcast_to(x[None], (len(devices), *x.shape)), sharding)

    return jax.tree.map(put, params)


def pad_batch(batch: Any, multiple: int) -> Tuple[Any, int]:
    """Pad the leading axis up to a multiple of ``multiple`` by repeating the last item; returns
    ``(padded, number_of_padding_items)``."""
    size = len(batch)
    if size == 0:
        raise ValueError("cannot shard an empty batch")
    pad = -size % multiple
    if pad:
        batch = np.concatenate([np.asarray(batch), np.repeat(np.asarray(batch)[-1:], pad, axis=0)])
    return batch, pad


def shard_batch(batch: Any, num_devices: Optional[int] = None) -> Tuple[np.ndarray, int]:
    """(B, ...) → (num_devices, ceil(B / num_devices), ...) for ``pmap``, plus the padding count."""
    num_devices = num_devices or jax.local_device_count()
    padded, pad = pad_batch(np.asarray(batch), num_devices)
    return padded.reshape(num_devices, -1, *padded.shape[1:]), pad


def unshard(sharded: Any, pad: int = 0) -> Any:
    """Inverse of ``shard_batch`` for a pytree of outputs: merge the device axis, drop the padding."""

    def merge(x):
        x = x.reshape(-1, *x.shape[2:])
        return x[: x.shape[0] - pad]

    return jax.tree.map(merge, sharded)


def _cached(model: FlaxVQGANPreTrainedModel, key: Tuple, build) -> Any:
    # Compiled wrappers live in the model's bounded cache, so repeated calls neither retrace nor recompile.
    return model.compiled.get_or_build(key, build)


def _per_item(output: Any) -> Any:
    # The quantizer loss is a batch mean (and would include the padding): not returned here.
    return dataclasses.replace(output, loss=None) if isinstance(output, VQGANEncoderOutput) else output


def pmap_encode(model: FlaxVQGANPreTrainedModel, pixel_values: Any, replicated_params: Any) -> VQGANEncoderOutput:
    """``model.encode`` split over all local devices with ``pmap``; any batch size. The output's
    ``loss`` is None (a batch statistic, for training)."""
    encode = _cached(model, ("pmap", "encode"), lambda: jax.pmap(lambda x, p: _per_item(model.encode(x, params=p))))
    sharded, pad = shard_batch(pixel_values, _device_count(replicated_params))
    return unshard(encode(sharded, replicated_params), pad)


def pmap_decode_code(
    model: FlaxVQGANPreTrainedModel,
    indices: Any,
    replicated_params: Any,
    latent_shape: Optional[Sequence[int]] = None,
) -> jax.Array:
    """``model.decode_code`` split over all local devices with ``pmap`` (DALL·E-mini's decoding)."""
    latent_shape = None if latent_shape is None else tuple(latent_shape)
    decode = _cached(
        model,
        ("pmap", "decode_code", latent_shape),
        lambda: jax.pmap(lambda i, p: model.decode_code(i, params=p, latent_shape=latent_shape)),
    )
    sharded, pad = shard_batch(indices, _device_count(replicated_params))
    return unshard(decode(sharded, replicated_params), pad)


def _device_count(replicated_params: Any) -> int:
    return jax.tree.leaves(replicated_params)[0].shape[0]


def make_mesh(devices: Optional[Sequence[jax.Device]] = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D data-parallel mesh over ``devices`` (default: all devices of all processes)."""
    return Mesh(np.asarray(devices or jax.devices()), (axis_name,))


def replicate_on_mesh(params: Any, mesh: Mesh) -> Any:
    """Put ``params`` on every device of ``mesh`` (fully replicated ``NamedSharding``)."""
    return jax.device_put(params, NamedSharding(mesh, PartitionSpec()))


def _sharded_call(
    model: FlaxVQGANPreTrainedModel, method: str, batch: Any, params: Any, mesh: Optional[Mesh], **options: Any
) -> Any:
    mesh = mesh or make_mesh()
    batch_sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    key = ("mesh", method, mesh, tuple(sorted(options.items())))
    run = _cached(
        model,
        key,
        lambda: jax.jit(
            lambda x, p: _per_item(getattr(model, method)(x, params=p, **options)),
            in_shardings=(batch_sharding, NamedSharding(mesh, PartitionSpec())),
            out_shardings=batch_sharding,
        ),
    )
    padded, pad = pad_batch(np.asarray(batch), mesh.size)
    # A no-op when the caller already replicated them with replicate_on_mesh (do that once).
    params = model.params if params is None else params
    out = run(jax.device_put(padded, batch_sharding), replicate_on_mesh(params, mesh))
    return jax.tree.map(lambda x: x[: x.shape[0] - pad], out)


def sharded_encode(
    model: FlaxVQGANPreTrainedModel, pixel_values: Any, params: Any = None, mesh: Optional[Mesh] = None
) -> VQGANEncoderOutput:
    """``model.encode`` under ``jit`` with the batch sharded over ``mesh`` (default: all devices);
    the output's ``loss`` is None."""
    return _sharded_call(model, "encode", pixel_values, params, mesh)


def sharded_decode(
    model: FlaxVQGANPreTrainedModel, quant_states: Any, params: Any = None, mesh: Optional[Mesh] = None
) -> jax.Array:
    """``model.decode`` under ``jit`` with the batch sharded over ``mesh``."""
    return _sharded_call(model, "decode", quant_states, params, mesh)


def sharded_decode_code(
    model: FlaxVQGANPreTrainedModel,
    indices: Any,
    params: Any = None,
    mesh: Optional[Mesh] = None,
    latent_shape: Optional[Sequence[int]] = None,
) -> jax.Array:
    """``model.decode_code`` under ``jit`` with the batch sharded over ``mesh``."""
    latent_shape = None if latent_shape is None else tuple(latent_shape)
    return _sharded_call(model, "decode_code", indices, params, mesh, latent_shape=latent_shape)


__all__ = [
    "DATA_AXIS",
    "make_mesh",
    "pad_batch",
    "pmap_decode_code",
    "pmap_encode",
    "replicate_on_mesh",
    "replicate_params",
    "shard_batch",
    "sharded_decode",
    "sharded_decode_code",
    "sharded_encode",
    "unshard",
]
