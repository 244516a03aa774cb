"""Tokenizing a dataset with several processes (``jax.distributed``, many hosts).

Every process calls ``encode_dataset`` with the same items (a list or any iterable, e.g. a
generator of paths) and takes its share by position: process ``i`` of ``n`` encodes the items
``i, i + n, i + 2n, ...`` on its own local devices and writes its own shard file. The processes
exchange nothing while they work, so an unreadable item or a failing process stops nobody else
(all of them used to run one global program per batch, so one failure left the others waiting
for a collective until Gloo's deadline). ``merge_token_shards`` puts the shards back in input
order. For parquet/JSONL outputs, resuming and webdataset or Hugging Face inputs, use
``vqgan-flax encode --process-index i --process-count n`` ([`data.tokenize`]); ``merge_token_shards``
reads its folders too, once ``data.verify`` finds them whole.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import jax
import numpy as np
from jax.experimental import multihost_utils

from ..hub.modeling import FlaxVQGANPreTrainedModel
from ..utils.files import atomic_write
from .image_io import open_rgb
from .parallel import pmap_encode, replicate_params
from .processing import VQGANImageProcessor, processor_for_model
from .storage import is_remote
from .writers import METADATA_FILE

SHARD_PATTERN = "tokens-{process:05d}-of-{count:05d}.npz"


def _load_for(processor: VQGANImageProcessor, item: Any, size: int) -> np.ndarray:
    """One item as the model's pixels: a path or a uint8 array through ``processor``; a float
    array is taken as pixels already in the model's range."""
    if isinstance(item, np.ndarray) and item.dtype != np.uint8:
        if item.shape[:2] != (size, size):
            raise ValueError(f"array: shape {item.shape}, expected {size}x{size}")
        return item.astype(np.float32)
    image = item if isinstance(item, np.ndarray) else open_rgb(item)
    return processor.to_pixel_values(np.asarray(processor.resize_crop(image), np.uint8))


def encode_dataset(
    items: Iterable[Any],
    model: FlaxVQGANPreTrainedModel,
    output_dir: str,
    params: Any = None,
    image_size: Optional[int] = None,
    batch_size_per_device: int = 4,
    load: Optional[Callable[[Any], np.ndarray]] = None,
    strict: bool = False,
    barrier: bool = True,
) -> str:
    """Encode this process's share of ``items`` (image paths or arrays) on its local devices;
    returns its shard file (``tokens-PPPPP-of-NNNNN.npz``: ``item_ids``, ``indices`` (n, h, w),
    ``num_items``, and the ``skipped_ids`` / ``skipped_errors`` of items that could not be read).

    Images go through the model's own image processor ([`data.processing.processor_for_model`]:
    its resize, crop and pixel range, e.g. [0, 1]); ``image_size`` overrides the size; arrays
    given as items are uint8 images, or float pixels already in the model's range. ``load`` replaces
    all of that. An unreadable item is skipped and recorded (``strict``: raises ``ValueError`` naming its
    position). With ``barrier`` every process waits for the others once its shard is written, so
    that process 0 may merge right after; a process that died is then reported by name.
    """
    processor = processor_for_model(model, image_size)
    image_size = processor.output_size[0] if processor.output_size else model.config.resolution
    load = load or (lambda item: _load_for(processor, item, image_size))
    process, count = jax.process_index(), jax.process_count()
    devices = jax.local_devices()
    params = model.params if params is None else params
    replicated = replicate_params(params, devices) if len(devices) > 1 else None
    batch_size = batch_size_per_device * len(devices)
    latent = model.config.latent_shape(image_size, image_size)

    item_ids: List[int] = []
    tokens: List[np.ndarray] = []
    skipped: List[Tuple[int, str]] = []
    batch: List[Tuple[int, np.ndarray]] = []
    seen = [0]

    def mine() -> Iterable[Tuple[int, Any]]:
        for position, item in enumerate(items):
            seen[0] = position + 1
            if position % count == process:
                yield position, item

    def run() -> None:
        pixels = np.stack([p for _, p in batch])
        out = model.encode(pixels, params=params) if replicated is None else pmap_encode(model, pixels, replicated)
        item_ids.extend(position for position, _ in batch)
        tokens.extend(np.asarray(out.indices).reshape(len(batch), *latent))
        batch.clear()

    for position, item in mine():
        try:
            batch.append((position, np.asarray(load(item), np.float32)))
        except Exception as err:  # the item's failure, not the run's
            if strict:
                raise ValueError(f"item {position} ({str(item)[:200]}): {type(err).__name__}: {err}") from err
            skipped.append((position, f"{type(err).__name__}: {err}"))
            continue
        if len(batch) == batch_size:
            run()
    if batch:
        run()

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, SHARD_PATTERN.format(process=process, count=count))
    arrays: Dict[str, Any] = {
        "item_ids": np.asarray(item_ids, np.int64),
        "indices": np.asarray(tokens, np.int32).reshape(-1, *latent),
        "num_items": np.asarray(seen[0]),
        "skipped_ids": np.asarray([i for i, _ in skipped], np.int64),
        "skipped_errors": np.asarray([m for _, m in skipped], dtype=str),
    }
    atomic_write(path, lambda f: np.savez(f, **arrays))
    if barrier and count > 1:
        try:
            multihost_utils.sync_global_devices("vqgan_flax.encode_dataset")
        except Exception as err:
            raise RuntimeError(
                f"process {process}: wrote {path}, but waiting for the other {count - 1} processes failed "
                f"(one of them stopped?): {type(err).__name__}: {err}"
            ) from None
    return path


def merge_token_shards(output_dir: str, return_ids: bool = False) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """All shard files of ``output_dir`` → indices (N, h, w) in input order.

    A token folder of ``vqgan-flax encode`` (parquet or JSONL parts of any number of processes,
    local or in object storage) is merged too, once ``verify_token_folder`` finds it whole: its
    rows ordered by key (its items are named, not numbered; the order does not depend on the
    process count), ``return_ids`` giving the keys. An item missing or present twice is an
    error, and so is an item a process skipped as unreadable (its reason is in the message)
    unless ``return_ids``: then the result is ``(item_ids, indices)`` of the items present, in
    input order.
    """
    paths = sorted(glob.glob(os.path.join(output_dir, "tokens-*-of-*.npz")))
    if not paths and (is_remote(os.fspath(output_dir)) or os.path.lexists(os.path.join(output_dir, METADATA_FILE))):
        return _merge_token_folder(os.fspath(output_dir), return_ids)
    if not paths:
        raise FileNotFoundError(f"{output_dir}: no tokens-*-of-*.npz shard files")
    shards = [dict(np.load(p)) for p in paths]
    counts = {int(s["num_items"]) for s in shards}
    if len(counts) != 1:
        raise ValueError(f"{output_dir}: shards disagree on the number of items: {sorted(counts)}")
    total = counts.pop()
    item_ids = np.concatenate([s["item_ids"] for s in shards]).astype(np.int64)
    indices = np.concatenate([s["indices"] for s in shards])
    skipped: Dict[int, str] = {}
    for shard in shards:  # files from before skipping was recorded have neither array
        ids, errors = shard.get("skipped_ids", np.zeros(0, np.int64)), shard.get("skipped_errors", np.zeros(0, str))
        skipped.update(zip(ids.tolist(), errors.tolist()))
    seen = np.bincount(item_ids, minlength=total)
    duplicated = np.flatnonzero(seen > 1)[:10].tolist()
    missing = [i for i in np.flatnonzero(seen[:total] == 0).tolist() if i not in skipped]
    if len(seen) > total or duplicated or missing:
        raise ValueError(
            f"{output_dir}: items missing {missing[:10]} / duplicated {duplicated} across {len(paths)} shards"
        )
    order = np.argsort(item_ids, kind="stable")
    if return_ids:
        return item_ids[order], indices[order]
    if skipped:
        first = min(skipped)
        raise ValueError(
            f"{output_dir}: {len(skipped)} item(s) were skipped as unreadable, e.g. item {first}: {skipped[first]} "
            "(merge_token_shards(..., return_ids=True) returns the others)"
        )
    return indices[order]


def _merge_token_folder(folder: str, return_ids: bool) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    from .readers import open_tokens
    from .verify import verify_token_folder

    report = verify_token_folder(folder)
    if not report.ok:
        raise ValueError("; ".join(line.strip() for line in report.lines()))
    rows = sorted(open_tokens(folder).rows(), key=lambda row: row[0])
    if not rows:
        raise ValueError(f"{folder}: no rows to merge")
    shapes = {tokens.shape for _, tokens in rows}
    if len(shapes) != 1:
        (key, tokens), (other, different) = rows[0], next(r for r in rows if r[1].shape != rows[0][1].shape)
        raise ValueError(
            f"{folder}: rows of several grids ({key}: {tokens.shape}, {other}: {different.shape}); "
            "read them one by one with data.readers.open_tokens"
        )
    indices = np.stack([tokens[0] if tokens.shape[0] == 1 else tokens for _, tokens in rows])
    if return_ids:
        return np.asarray([key for key, _ in rows]), indices
    if report.unreadable_items:
        raise ValueError(
            f"{folder}: {report.unreadable_items} item(s) were skipped as unreadable (listed in its "
            ".vqgan_flax/errors-*.jsonl; merge_token_shards(..., return_ids=True) returns the others)"
        )
    return indices
