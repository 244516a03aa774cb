"""Tokenizing a dataset on all devices of all processes (``jax.distributed``).

After ``jax.distributed.initialize(...)`` every process calls ``encode_dataset`` with the same
item list. The items are split into global batches over all devices; each process loads only the
items that land on its own devices, and writes their tokens to its own shard file. The shards
together hold every item exactly once; ``merge_token_shards`` puts them back in input order.
"""

from __future__ import annotations

import glob
import math
import os
from typing import Any, Callable, List, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from .image_io import atomic_write, load_image
from .modeling_flax_vqgan import FlaxVQGANPreTrainedModel
from .parallel import make_mesh

SHARD_PATTERN = "tokens-{process:05d}-of-{count:05d}.npz"


def _process_rows(sharding: NamedSharding, global_shape: Tuple[int, ...]) -> List[int]:
    """Rows of a batch-sharded global array held by this process's devices, in the order
    ``jax.make_array_from_process_local_data`` expects the process-local data."""
    rows = set()
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        rows.update(range(*index[0].indices(global_shape[0])))
    return sorted(rows)


def encode_dataset(
    items: Sequence[Any],
    model: FlaxVQGANPreTrainedModel,
    output_dir: str,
    params: Any = None,
    image_size: Optional[int] = None,
    batch_size_per_device: int = 4,
    load: Optional[Callable[[Any], np.ndarray]] = None,
) -> str:
    """Encode ``items`` (image paths or arrays) with all global devices; returns this process's
    shard file (``tokens-PPPPP-of-NNNNN.npz`` with ``item_ids`` and ``indices`` (n, h, w)).

    Every process must call this with the same ``items`` and options.
    """
    image_size = image_size or model.config.resolution
    load = load or (lambda item: load_image(item, image_size))
    mesh = make_mesh(jax.devices())
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    replicated = NamedSharding(mesh, PartitionSpec())
    global_batch = batch_size_per_device * mesh.size
    shape = (global_batch, image_size, image_size, model.config.in_channels)
    my_rows = _process_rows(sharding, shape)
    # Every process holds the same params: each supplies its copy (no cross-host transfer).
    params = jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x), np.shape(x)),
        model.params if params is None else params,
    )
    encode = jax.jit(lambda x, p: model.encode(x, params=p).indices, out_shardings=sharding)
    latent = model.config.latent_shape(image_size, image_size)

    item_ids: List[int] = []
    tokens: List[np.ndarray] = []
    for step in range(math.ceil(len(items) / global_batch)):
        ids = [step * global_batch + row for row in my_rows]
        local = np.zeros((len(ids), *shape[1:]), np.float32)  # rows past the end stay zero padding
        for k, item_id in enumerate(ids):
            if item_id < len(items):
                local[k] = load(items[item_id])
        batch = jax.make_array_from_process_local_data(sharding, local, shape)
        indices = encode(batch, params)
        for shard in indices.addressable_shards:
            start = shard.index[0].indices(global_batch)[0]
            for offset, row_tokens in enumerate(np.asarray(shard.data)):
                item_id = step * global_batch + start + offset
                if item_id < len(items):
                    item_ids.append(item_id)
                    tokens.append(row_tokens.reshape(latent))

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, SHARD_PATTERN.format(process=jax.process_index(), count=jax.process_count()))
    order = np.argsort(item_ids, kind="stable")
    arrays = {
        "item_ids": np.asarray(item_ids, np.int64)[order],
        "indices": np.asarray(tokens, np.int32).reshape(-1, *latent)[order],
        "num_items": np.asarray(len(items)),
    }
    atomic_write(path, lambda f: np.savez(f, **arrays))
    # Nobody merges before every process has written its shard.
    multihost_utils.sync_global_devices("vqgan_flax.encode_dataset")
    return path


def merge_token_shards(output_dir: str) -> np.ndarray:
    """All shard files of ``output_dir`` → indices (N, h, w) in input order; an item missing or
    present twice is an error."""
    paths = sorted(glob.glob(os.path.join(output_dir, "tokens-*-of-*.npz")))
    if not paths:
        raise FileNotFoundError(f"{output_dir}: no tokens-*-of-*.npz shard files")
    shards = [np.load(p) for p in paths]
    counts = {int(s["num_items"]) for s in shards}
    if len(counts) != 1:
        raise ValueError(f"{output_dir}: shards disagree on the number of items: {sorted(counts)}")
    total = counts.pop()
    item_ids = np.concatenate([s["item_ids"] for s in shards])
    indices = np.concatenate([s["indices"] for s in shards])
    seen = np.bincount(item_ids, minlength=total)
    if len(seen) != total or seen.min() != 1 or seen.max() != 1:
        missing = np.flatnonzero(seen[:total] == 0)[:10].tolist()
        duplicated = np.flatnonzero(seen > 1)[:10].tolist()
        raise ValueError(f"{output_dir}: items missing {missing} / duplicated {duplicated} across {len(paths)} shards")
    return indices[np.argsort(item_ids)]
