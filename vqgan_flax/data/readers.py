"""Reading tokens back: an ``.npz`` from ``vqgan-flax encode``, or a folder of its parquet / JSONL
shards. Everything read is checked before it is used: keys must be relative paths of plain names
(they become output file names), grids must match their token counts, tokens must be integers.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .image_io import check_key
from .writers import METADATA_FILE, NPZ_STRINGS, SHARD_NAME

# A token grid larger than this (per frame) is no grid a VQGAN made: 4096² pixels at factor 4.
MAX_GRID_TOKENS = 1 << 20


@dataclass
class TokenSource:
    """What a token file or folder holds: its ``metadata`` (the model that made the tokens and how,
    as ``encode`` recorded it), the ``keys`` of its rows in order, and ``rows()``: ``(key, tokens
    (frames, height, width) int32)`` one at a time."""

    path: str
    metadata: Dict[str, Any]
    keys: List[str]
    rows: Callable[[], Iterator[Tuple[str, np.ndarray]]]


def _grid(where: str, tokens: Any, frames: Any, height: Any, width: Any) -> np.ndarray:
    try:
        frames, height, width = int(frames), int(height), int(width)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: frames/height/width must be integers") from None
    if min(frames, height, width) < 1 or height * width > MAX_GRID_TOKENS or frames > 1 << 16:
        raise ValueError(f"{where}: grid {frames}x{height}x{width} is not a token grid")
    array = np.asarray(tokens)
    if array.dtype.kind not in "iu":
        raise ValueError(f"{where}: tokens must be integers; got {array.dtype}")
    if array.size != frames * height * width:
        raise ValueError(f"{where}: {array.size} tokens for a {frames}x{height}x{width} grid")
    return array.astype(np.int32).reshape(frames, height, width)


def read_npz(path: str) -> TokenSource:
    """A token file (``tokens`` (N, h, w) or (N, frames, h, w), ``keys``, ``model``, ...)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            record = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except Exception as err:
        raise ValueError(f"{path}: not a token file ({type(err).__name__}: {err})") from None
    tokens = record.get("tokens")
    if tokens is None or tokens.ndim not in (3, 4) or tokens.dtype.kind not in "iu":
        raise ValueError(f"{path}: expected an integer 'tokens' array of shape (N, h, w) or (N, frames, h, w)")
    for name in NPZ_STRINGS:
        if name in record and (record[name].shape != () or record[name].dtype.kind != "U"):
            raise ValueError(f"{path}: '{name}' must be one string; got {record[name].dtype} {record[name].shape}")
    if "keys" in record:
        keys = record["keys"]
        if keys.shape != (len(tokens),) or keys.dtype.kind != "U":
            raise ValueError(
                f"{path}: 'keys' must hold one string per token grid ({len(tokens)}); got {keys.dtype} {keys.shape}"
            )
        keys = [check_key(key, f"{path}: keys[{i}]") for i, key in enumerate(keys.tolist())]
    else:
        keys = _version_1_keys(record, len(tokens))
    metadata: Dict[str, Any] = {name: str(record[name]) or None for name in NPZ_STRINGS if name in record}
    if "pixel_range" in record:
        metadata["pixel_range"] = [float(v) for v in np.asarray(record["pixel_range"]).reshape(-1)[:2]]
    grids = tokens if tokens.ndim == 4 else tokens[:, None]
    return TokenSource(path, metadata, keys, lambda: iter(zip(keys, grids.astype(np.int32))))


def _version_1_keys(record: dict, count: int) -> List[str]:
    """Version 1 files have no keys: the input file names, or the index where those are missing
    or repeat."""
    names = [os.path.basename(str(f)) for f in record.get("files", [])]
    if len(names) == count and len(set(names)) == count and all(names):
        return names
    return [f"{i:06d}" for i in range(count)]


def read_folder(path: str) -> TokenSource:
    """A folder of ``part-*.parquet`` or ``part-*.jsonl`` shards; rows are read shard by shard."""
    shards = sorted(p for p in glob.glob(os.path.join(path, "part-*")) if SHARD_NAME.match(os.path.basename(p)))
    if not shards:
        raise FileNotFoundError(f"{path}: no part-*.parquet or part-*.jsonl token shards")
    return _read_shards(path, shards)


def read_shard(path: str) -> TokenSource:
    """One ``.parquet`` or ``.jsonl`` token shard; its metadata from its own parquet schema or, for
    JSONL, from the ``.vqgan_flax/metadata.json`` of the folder it is in."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    return _read_shards(os.path.dirname(path) or ".", [path])


def _read_shards(folder: str, shards: List[str]) -> TokenSource:
    kinds = {os.path.splitext(p)[1] for p in shards}
    if len(kinds) != 1:
        raise ValueError(f"{folder}: mixes parquet and jsonl shards")
    metadata: Dict[str, Any] = {}
    recorded = os.path.join(folder, METADATA_FILE)
    if kinds == {".parquet"} and len(shards) == 1:
        metadata = _parquet_metadata(shards[0])
    if not metadata and os.path.isfile(recorded):
        try:
            with open(recorded, encoding="utf-8") as f:
                metadata = json.load(f)
        except (OSError, ValueError) as err:
            raise ValueError(f"{recorded}: unreadable ({err})") from None
        if not isinstance(metadata, dict):
            raise ValueError(f"{recorded}: not a JSON object")
    rows = _parquet_rows if kinds == {".parquet"} else _jsonl_rows
    keys = [key for shard in shards for key, _ in rows(shard, keys_only=True)]
    path = shards[0] if len(shards) == 1 and not os.path.isdir(folder) else folder
    return TokenSource(path, metadata, keys, lambda: (row for shard in shards for row in rows(shard)))


def _parquet_metadata(shard: str) -> Dict[str, Any]:
    """What ``encode`` recorded in a parquet shard's schema (``{}`` where nothing)."""
    import pyarrow.parquet as pq

    try:
        recorded = (pq.read_schema(shard).metadata or {}).get(b"vqgan_flax")
    except Exception as err:
        raise ValueError(f"{shard}: not a parquet file ({type(err).__name__}: {err})") from None
    if recorded is None:
        return {}
    try:
        metadata = json.loads(recorded)
    except ValueError as err:
        raise ValueError(f"{shard}: unreadable vqgan_flax metadata ({err})") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{shard}: its vqgan_flax metadata is not a JSON object")
    return metadata


def _parquet_rows(shard: str, keys_only: bool = False) -> Iterator[Tuple[str, Any]]:
    import pyarrow.parquet as pq

    columns = ["key"] if keys_only else ["key", "tokens", "frames", "height", "width"]
    try:
        batches = pq.ParquetFile(shard).iter_batches(batch_size=256, columns=columns)
        row = 0
        for batch in batches:
            data = batch.to_pydict()
            for i, key in enumerate(data["key"]):
                where = f"{shard}: row {row}"
                key = check_key(key if isinstance(key, str) else "", where)
                if keys_only:
                    yield key, None
                else:
                    grid = (data["tokens"][i], data["frames"][i], data["height"][i], data["width"][i])
                    yield key, _grid(where, *grid)
                row += 1
    except (OSError, ValueError, KeyError) as err:
        if isinstance(err, ValueError) and str(err).startswith(shard):
            raise
        raise ValueError(f"{shard}: unreadable token shard ({type(err).__name__}: {err})") from None


def _jsonl_rows(shard: str, keys_only: bool = False) -> Iterator[Tuple[str, Any]]:
    with open(shard, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            where = f"{shard}: line {number}"
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = record["key"]
                grid = None if keys_only else (record["vision"], record["frames"], record["height"], record["width"])
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{where}: not a token record ({type(err).__name__}: {err})") from None
            key = check_key(key if isinstance(key, str) else "", where)
            yield key, None if grid is None else _grid(where, *grid)


def open_tokens(path: str) -> TokenSource:
    """An ``.npz`` token file, one ``.parquet`` / ``.jsonl`` token shard, or a folder of shards."""
    if os.path.isdir(path):
        return read_folder(path)
    if path.endswith((".parquet", ".jsonl")):
        return read_shard(path)
    return read_npz(path)


def recorded_model(source: TokenSource) -> Optional[Tuple[str, Optional[str]]]:
    """``(model, revision)`` the tokens were made with, where the source records them; for a Hub
    model the revision is the commit it resolved to (the exact weights), where recorded."""
    model = source.metadata.get("model")
    if not model:
        return None
    revision = source.metadata.get("commit") or source.metadata.get("revision")
    return str(model), (str(revision or "") or None)
