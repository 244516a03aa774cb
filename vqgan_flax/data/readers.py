"""Reading tokens back: an ``.npz`` from ``vqgan-flax encode``, or a folder of its parquet / JSONL
shards (local, or in object storage: ``s3://``, ``gs://``, any fsspec URL). Token files are
untrusted input, checked before they are used: keys must be relative paths of plain names (they
become output file names), grid sizes whole numbers matching their token
counts, tokens integers within int32 on the stored dtype (before any cast could wrap them), and
every size is bounded before it is allocated: a grid's tokens per frame, a row's tokens, a JSONL
line, an npz member's inflated size (read from its header, never by inflating it), the tokens a
parquet row group holds.
"""

from __future__ import annotations

import glob
import io
import json
import os
from dataclasses import dataclass
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..utils.files import read_json_object
from .image_io import check_key
from .manifest import read_record
from .storage import Folder, is_remote
from .writers import METADATA_FILE, NPZ_STRINGS, ROW_GROUP_TOKENS, SHARD_NAME

# A token grid larger than this (per frame) is no grid a VQGAN made: 4096² pixels at factor 4.
MAX_GRID_TOKENS = 1 << 20
MAX_FRAMES = 1 << 16
# Tokens in one row (all its frames): 64 MiB as int32, 4096 frames of 64 x 64.
MAX_ROW_TOKENS = 1 << 24
# A JSONL line of MAX_ROW_TOKENS tokens is about this long; a longer one is not ours.
MAX_JSONL_LINE_BYTES = 8 * MAX_ROW_TOKENS
# The tokens of one parquet row group, decoded at once by pyarrow (our writer keeps groups at
# ROW_GROUP_TOKENS; older shards of 10,000 rows hold up to 4096 tokens a row); and the inflated
# size of one npz member (use parquet shards for more).
MAX_ROW_GROUP_TOKENS = 4 * ROW_GROUP_TOKENS
MAX_NPZ_MEMBER_BYTES = 1 << 31
_INT32_MAX = np.iinfo(np.int32).max


@dataclass
class TokenSource:
    """What a token file or folder holds: its ``metadata`` (the model that made the tokens and how,
    as ``encode`` recorded it), the ``keys`` of its rows in order, and ``rows()``: ``(key, tokens
    (frames, height, width) int32)`` one at a time."""

    path: str
    metadata: Dict[str, Any]
    keys: List[str]
    rows: Callable[[], Iterator[Tuple[str, np.ndarray]]]


def _whole(value: Any, name: str, where: str) -> int:
    """A grid size as stored: an integer (not a bool, not a float like 4.9 or 1e400)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{where}: {name} must be an integer; got {type(value).__name__} {value!r:.40}")
    return int(value)


def _grid(where: str, tokens: Any, frames: Any, height: Any, width: Any) -> np.ndarray:
    frames, height, width = (_whole(v, n, where) for v, n in ((frames, "frames"), (height, "height"), (width, "width")))
    if min(frames, height, width) < 1 or height * width > MAX_GRID_TOKENS or frames > MAX_FRAMES:
        raise ValueError(f"{where}: grid {frames}x{height}x{width} is not a token grid")
    if frames * height * width > MAX_ROW_TOKENS:
        raise ValueError(f"{where}: {frames}x{height}x{width} tokens, more than a row's {MAX_ROW_TOKENS}")
    count = len(tokens) if isinstance(tokens, list) else np.size(tokens)
    if count != frames * height * width:
        raise ValueError(f"{where}: {count} tokens for a {frames}x{height}x{width} grid")
    try:
        array = np.asarray(tokens)
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"{where}: tokens must be a flat list of integers") from None
    if isinstance(tokens, list) and array.ndim != 1:
        raise ValueError(f"{where}: tokens must be a flat list of integers")
    if array.dtype.kind not in "iu":
        raise ValueError(f"{where}: tokens must be integers; got {array.dtype}")
    check_int32(array, where)
    return array.astype(np.int32).reshape(frames, height, width)


def check_int32(tokens: np.ndarray, where: str) -> None:
    """Tokens as stored must fit int32 (a cast would wrap 2**32 + 5 to a valid code 5)."""
    if tokens.size and (tokens.min() < 0 or tokens.max() > _INT32_MAX):
        bad = tokens.min() if tokens.min() < 0 else tokens.max()
        raise ValueError(f"{where}: token {int(bad)} is not a codebook index (0 to {_INT32_MAX})")


def read_npz(path: str) -> TokenSource:
    """A token file (``tokens`` (N, h, w) or (N, frames, h, w), ``keys``, ``model``, ...)."""
    record: Dict[str, Any] = _load_npz(path)
    tokens = record.get("tokens")
    if tokens is None or tokens.ndim not in (3, 4) or tokens.dtype.kind not in "iu":
        raise ValueError(f"{path}: expected an integer 'tokens' array of shape (N, h, w) or (N, frames, h, w)")
    check_int32(tokens, f"{path}: tokens")
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


def _load_npz(path: str) -> Dict[str, np.ndarray]:
    """The arrays of an ``.npz``, each member's shape and dtype read from its header and checked
    before its data is inflated (``np.load`` inflates a member whole before anything can look)."""
    import zipfile
    import zlib

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    record = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                if info.file_size > MAX_NPZ_MEMBER_BYTES:
                    raise ValueError(f"{path}: {name} inflates to {info.file_size} bytes, more than an npz token "
                                     f"file's {MAX_NPZ_MEMBER_BYTES} (write parquet shards for more)")  # fmt: skip
                with archive.open(info) as member:
                    record[name] = _npy_member(member, info.file_size, f"{path}: {name}")
    except ValueError as err:
        if str(err).startswith(path):
            raise
        raise ValueError(f"{path}: not a token file ({type(err).__name__}: {err})") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as err:
        raise ValueError(f"{path}: not a token file ({type(err).__name__}: {err})") from None
    return record


def _npy_member(member: Any, declared: int, where: str) -> np.ndarray:
    """One ``.npy`` member: header first (shape, dtype; no objects, token grids bounded), then
    exactly the bytes the header promises, never more than the zip entry declares."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(member)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(member)
    except ValueError as err:
        raise ValueError(f"{where}: not an array ({err})") from None
    if dtype.hasobject:
        raise ValueError(f"{where}: holds Python objects")
    if where.endswith(": tokens") and len(shape) in (3, 4):
        per_row = int(np.prod(shape[1:], dtype=np.int64))
        if shape[-1] * shape[-2] > MAX_GRID_TOKENS or per_row > MAX_ROW_TOKENS:
            raise ValueError(f"{where}: grids of shape {tuple(shape[1:])} are not token grids")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > declared:
        raise ValueError(f"{where}: its header promises {nbytes} bytes, the member holds at most {declared}")
    data = member.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"{where}: {len(data)} bytes of data, its header promises {nbytes}")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _version_1_keys(record: dict, count: int) -> List[str]:
    """Version 1 files have no keys: the input file names, or the index where those are missing
    or repeat."""
    names = [os.path.basename(str(f)) for f in record.get("files", [])]
    if len(names) == count and len(set(names)) == count and all(names):
        return names
    return [f"{i:06d}" for i in range(count)]


def read_folder(path: str) -> TokenSource:
    """A folder of ``part-*.parquet`` or ``part-*.jsonl`` shards; rows are read shard by shard."""
    store = Folder(path) if is_remote(path) else None
    if store is not None:
        shards = [name for name in store.listdir() if SHARD_NAME.match(name)]
    else:
        shards = sorted(p for p in glob.glob(os.path.join(path, "part-*")) if SHARD_NAME.match(os.path.basename(p)))
    if not shards:
        raise FileNotFoundError(f"{path}: no part-*.parquet or part-*.jsonl token shards")
    return _read_shards(store.root if store is not None else path, shards, store)


def read_shard(path: str) -> TokenSource:
    """One ``.parquet`` or ``.jsonl`` token shard; its metadata from its own parquet schema or, for
    JSONL, from the ``.vqgan_flax/metadata.json`` of the folder it is in."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    return _read_shards(os.path.dirname(path) or ".", [path])


def _read_shards(folder: str, shards: List[str], store: Optional[Folder] = None) -> TokenSource:
    """The rows of ``shards``: local paths, or with ``store`` (an object store) names in it, each
    streamed through one open file at a time."""
    kinds = {os.path.splitext(p)[1] for p in shards}
    if len(kinds) != 1:
        raise ValueError(f"{folder}: mixes parquet and jsonl shards")
    parquet = kinds == {".parquet"}
    rows = _parquet_rows if parquet else _jsonl_rows

    def shard_rows(shard: str, keys_only: bool = False) -> Iterator[Tuple[str, Any]]:
        if store is None:
            yield from rows(shard, keys_only)
            return
        with store.open(shard) as handle:
            yield from rows(store.path(shard), keys_only, handle)

    metadata: Dict[str, Any] = {}
    if parquet and len(shards) == 1:
        if store is None:
            metadata = _parquet_metadata(shards[0])
        else:
            with store.open(shards[0]) as handle:
                metadata = _parquet_metadata(store.path(shards[0]), handle)
    if not metadata and store is not None and store.exists(METADATA_FILE):
        metadata = read_record(store, METADATA_FILE, "the token folder's metadata")
    elif not metadata and store is None and os.path.lexists(os.path.join(folder, METADATA_FILE)):
        metadata = read_json_object(os.path.join(folder, METADATA_FILE), "the token folder's metadata")
    keys = [key for shard in shards for key, _ in shard_rows(shard, keys_only=True)]
    path = shards[0] if len(shards) == 1 and store is None and not os.path.isdir(folder) else folder
    return TokenSource(path, metadata, keys, lambda: (row for shard in shards for row in shard_rows(shard)))


def _parquet_metadata(shard: str, handle: Optional[IO[bytes]] = None) -> Dict[str, Any]:
    """What ``encode`` recorded in a parquet shard's schema (``{}`` where nothing)."""
    import pyarrow.parquet as pq

    try:
        recorded = (pq.read_schema(handle if handle is not None else shard).metadata or {}).get(b"vqgan_flax")
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


def _parquet_rows(shard: str, keys_only: bool = False, handle: Optional[IO[bytes]] = None) -> Iterator[Tuple[str, Any]]:
    import pyarrow.parquet as pq

    columns = ["key"] if keys_only else ["key", "tokens", "frames", "height", "width"]
    try:
        parquet = pq.ParquetFile(handle if handle is not None else shard)
        _check_row_groups(shard, parquet)
        row = 0
        for batch in parquet.iter_batches(batch_size=256, columns=columns):
            data = {name: batch.column(name) for name in columns}
            lengths: Any = None
            flat: Any = None
            offsets: Any = None
            if not keys_only:
                tokens = data["tokens"]
                offsets = tokens.offsets.to_numpy(zero_copy_only=False)
                lengths = np.diff(offsets)
                flat = tokens.values.to_numpy(zero_copy_only=False)
            for i in range(batch.num_rows):
                where = f"{shard}: row {row}"
                key = data["key"][i].as_py()
                key = check_key(key if isinstance(key, str) else "", where)
                if keys_only:
                    yield key, None
                else:
                    if lengths[i] > MAX_ROW_TOKENS:
                        raise ValueError(f"{where}: {lengths[i]} tokens, more than a row's {MAX_ROW_TOKENS}")
                    sizes = (data[name][i].as_py() for name in ("frames", "height", "width"))
                    yield key, _grid(where, flat[offsets[i] : offsets[i + 1]], *sizes)
                row += 1
    except (OSError, ValueError, KeyError, AttributeError) as err:
        if isinstance(err, ValueError) and str(err).startswith(shard):
            raise
        raise ValueError(f"{shard}: unreadable token shard ({type(err).__name__}: {err})") from None


def _check_row_groups(shard: str, parquet: Any) -> None:
    """pyarrow decodes a row group's column whole: refuse, from the file's metadata, a group whose
    tokens would be more than ``MAX_ROW_GROUP_TOKENS`` (a few kilobytes of repeated zeros can
    claim gigabytes)."""
    metadata = parquet.metadata
    names = [metadata.schema.column(j).path for j in range(metadata.num_columns)]
    column = next((j for j, name in enumerate(names) if name.split(".")[0] == "tokens"), None)
    for group in range(metadata.num_row_groups if column is not None else 0):
        values = metadata.row_group(group).column(column).num_values
        if values > MAX_ROW_GROUP_TOKENS:
            raise ValueError(f"{shard}: row group {group} holds {values} tokens, more than "
                             f"{MAX_ROW_GROUP_TOKENS} (re-encode with a smaller --shard-size)")  # fmt: skip


def _jsonl_rows(shard: str, keys_only: bool = False, handle: Optional[IO[bytes]] = None) -> Iterator[Tuple[str, Any]]:
    with io.TextIOWrapper(handle, encoding="utf-8") if handle is not None else open(shard, encoding="utf-8") as f:
        number = 0
        while True:
            try:
                line = f.readline(MAX_JSONL_LINE_BYTES + 1)
            except UnicodeDecodeError as err:
                raise ValueError(f"{shard}: line {number + 1}: not UTF-8 text ({err.reason})") from None
            if not line:
                return
            number += 1
            where = f"{shard}: line {number}"
            if len(line) > MAX_JSONL_LINE_BYTES:
                raise ValueError(f"{where}: longer than a token record's {MAX_JSONL_LINE_BYTES} characters")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = record["key"]
                grid = None if keys_only else (record["vision"], record["frames"], record["height"], record["width"])
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{where}: not a token record ({type(err).__name__}: {err})") from None
            key = check_key(key if isinstance(key, str) else "", where)
            if grid is not None and not isinstance(grid[0], list):
                raise ValueError(f"{where}: vision must be a list of tokens; got {type(grid[0]).__name__}")
            yield key, None if grid is None else _grid(where, *grid)


def open_tokens(path: str) -> TokenSource:
    """An ``.npz`` token file, one ``.parquet`` / ``.jsonl`` token shard, or a folder of shards; a
    URL (``s3://...``) is a folder of shards in object storage."""
    if is_remote(path):
        return read_folder(path)
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


def shard_keys(path: str, handle: Optional[IO[bytes]] = None) -> List[str]:
    """The keys of one parquet or JSONL token shard (read from ``handle`` where given: a remote
    one), checked as every reader checks them."""
    rows = _parquet_rows if path.endswith(".parquet") else _jsonl_rows
    return [key for key, _ in rows(path, True, handle)]


def shard_settings(path: str, handle: Optional[IO[bytes]] = None) -> Dict[str, Any]:
    """The settings a parquet shard records in its own schema (``{}`` for JSONL, which has none)."""
    return _parquet_metadata(path, handle) if path.endswith(".parquet") else {}
