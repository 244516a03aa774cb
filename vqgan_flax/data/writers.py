"""Where tokens go: parquet shards (the dataset format of DALL·E-mini's encoding notebook and of
``datasets.load_dataset("parquet", ...)``), LWM's vision-token JSONL, or one ``.npz`` for small
jobs.

Sharded outputs are folders of ``part-PPP-NNNNN.{parquet,jsonl}`` (process, shard number); the
run's metadata and the list of items that could not be read go in the hidden ``.vqgan_flax/``
subfolder, so that ``pandas.read_parquet(folder)`` and ``datasets.load_dataset("parquet",
data_dir=folder)`` see only the shards. A shard appears only complete (written under a hidden temporary name, then
renamed), so after an interruption every shard present is whole; a new run in the same folder
reads the keys they hold and encodes only the rest: each item ends up in exactly one shard.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from ..hub.identity import TOKEN_SETTINGS, check_same_tokens
from ..utils.files import atomic_write
from . import manifest
from .columns import check_names, checked_row, parquet_fields
from .manifest import INFO_DIR
from .storage import Folder

FORMATS = ("npz", "parquet", "jsonl")
METADATA_FILE = f"{INFO_DIR}/metadata.json"
# A shard's name: part-PROCESS-NUMBER.FORMAT (readers select shards by it too).
# The string fields of an .npz token file's metadata (0-d string arrays).
NPZ_STRINGS = ("model", "model_digest", "hub_id", "revision", "commit", "dtype")
SHARD_NAME = re.compile(r"^part-(\d{3,})-(\d{5,})\.(parquet|jsonl)$")
ROW_GROUP_TOKENS = 1 << 24


def parquet_schema(metadata: Dict[str, Any]) -> Any:
    import pyarrow as pa

    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("tokens", pa.list_(pa.int32()), nullable=False),
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("caption", pa.string()),
        *parquet_fields(metadata.get("kept_columns") or {}),
    ]
    return pa.schema(fields, metadata={"vqgan_flax": json.dumps(metadata)})


def lwm_record(
    key: str, tokens: np.ndarray, caption: Optional[str], kept: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """One line of LWM's ``json_vision`` data: ``vision`` is the flat token list (frames × h × w,
    row-major), ``fields`` the field order LWM's VisionTextProcessor reads (``fields_from_example
    ='fields'``): ``[caption],vision`` (caption as context, loss on the vision tokens) where there
    is a caption, else ``vision``."""
    frames, height, width = tokens.shape
    record = {"key": key, "vision": tokens.reshape(-1).tolist(), "frames": frames, "height": height, "width": width}
    if caption is not None:
        record["caption"] = caption
    record["fields"] = "[caption],vision" if caption is not None else "vision"
    record.update(kept or {})  # kept columns' names never collide with ours (columns.RESERVED)
    return record


def lock_token_folder(folder: str, process: int) -> Any:
    """Take the advisory lock of ``folder`` for process index ``process`` (``fcntl.flock`` on
    ``.vqgan_flax/lock-PPP``, released when the returned file is closed or the process ends, a
    SIGKILL included); a second run on the same folder and index is refused naming the holder's
    process id, instead of both writing and one losing its rows. Within one process the newest
    writer takes the lock over: an earlier one there was interrupted (a notebook cell stopped)."""
    import fcntl

    os.makedirs(os.path.join(folder, INFO_DIR), exist_ok=True)
    path = os.path.join(folder, INFO_DIR, f"lock-{process:03d}")
    earlier = _HELD.pop(os.path.realpath(path), None)
    if earlier is not None:
        earlier.close()
    handle = open(path, "a+", encoding="utf-8")  # held open: the open file is the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise RuntimeError(f"{folder}: another run (process id {holder}) is writing it as process "
                           f"index {process}; wait for it or give another --out") from None  # fmt: skip
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _HELD[os.path.realpath(path)] = handle
    return handle


_HELD: Dict[str, Any] = {}  # lock file -> the open file holding it, in this process


def _locked_by_another(folder: str) -> Optional[str]:
    """The lock file of ``folder`` that a running process holds, if any."""
    import fcntl

    for path in sorted(glob.glob(os.path.join(folder, INFO_DIR, "lock-*"))):
        earlier = _HELD.pop(os.path.realpath(path), None)  # this process's own: interrupted
        if earlier is not None:
            earlier.close()
        with open(path, "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return path
    return None


def remove_shards(folder: str) -> int:
    """Delete what a sharded run wrote in ``folder`` (its ``part-*`` shards and ``.vqgan_flax/``),
    nothing else; returns the number of shards removed. Refused while a run holds its lock."""
    store = Folder(folder)
    held = None if store.remote else _locked_by_another(folder)
    if held:
        raise RuntimeError(f"{folder}: a running encode holds {held}; not removing its shards")
    removed = 0
    for name in store.listdir():
        if SHARD_NAME.match(name) and (store.remote or os.path.isfile(store.path(name))):
            store.remove(name)
            removed += 1
    store.remove_tree(INFO_DIR)
    return removed


def check_token_folder(folder: Union[str, Folder]) -> None:
    """Refuse a folder that holds anything but a token dataset of ours: shards go only into a new or
    empty folder, or one whose ``.vqgan_flax/metadata.json`` says how its shards were made (so they
    are never mixed with a user's own files, nor with shards of unknown settings)."""
    store = folder if isinstance(folder, Folder) else Folder(folder)
    names = store.listdir()
    if not names or store.exists(METADATA_FILE):
        return
    # INFO_DIR alone: another process of the same run is about to write the metadata.
    foreign = [name for name in names if name != INFO_DIR]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise ValueError(
            f"{store.root}: holds {foreign[0]}{more} but is no token folder (no {METADATA_FILE}); "
            "give a new or empty folder"
        )


class ShardedTokenWriter:
    """Rows → ``folder/part-PPP-NNNNN.{parquet,jsonl}``, ``rows_per_shard`` rows each; ``folder``
    a local path or an object-store URL ([`data.storage.Folder`]).

    ``done`` holds the keys this process must not write again: those of its own parts that no
    input-shard marker accounts for ([`data.manifest`]); the caller skips them. ``finished`` names
    the markers of the input shards finished by any process. A folder holding other files is
    refused ([`check_token_folder`]); shards made with other settings (``metadata.json`` or a
    part's own schema disagrees on the model, image size, pixel range or grid) are refused rather
    than mixed, and so is another process count than the folder was started with. A local folder
    is locked per process index ([`lock_token_folder`]); an object store has no locks.
    """

    def __init__(
        self,
        folder: str,
        fmt: str,
        metadata: Dict[str, Any],
        rows_per_shard: int = 10_000,
        process: int = 0,
        process_count: int = 1,
        kept_columns: Optional[Dict[str, str]] = None,
    ) -> None:
        if fmt not in ("parquet", "jsonl"):
            raise ValueError(f"format {fmt!r} is not sharded; use one of parquet, jsonl")
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be positive; got {rows_per_shard}")
        if not 0 <= process < process_count:
            raise ValueError(f"process {process} is not in [0, {process_count})")
        self.folder, self.format, self.store = folder, fmt, Folder(folder)
        self.kept = dict(kept_columns or {})
        check_names(list(self.kept))
        self.metadata = dict(metadata, format=fmt, process_count=process_count)
        if self.kept:
            self.metadata["kept_columns"] = self.kept
        self.rows_per_shard, self.process, self.process_count = rows_per_shard, process, process_count
        self._rows: List[Dict[str, Any]] = []
        self.written = 0
        self._flushed: List[str] = []  # parts written since the last finished input shard
        self._shard_rows = 0
        check_token_folder(self.store)
        self._lock = None if self.store.remote else lock_token_folder(folder, process)
        try:
            self._start(fmt, process)
        except BaseException:
            self._unlock()
            raise

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()

    def _start(self, fmt: str, process: int) -> None:
        """Read what earlier runs of this process left: its own parts (other processes' are never
        opened), the markers of finished input shards, and the keys of the parts no marker names
        (the shard a killed run was in, or a run without input shards) as ``done``."""
        store = self.store
        self._check_metadata()
        self.finished = manifest.finished_shards(store)
        claimed = manifest.claimed_up_to(store, process)
        self._orphans: Dict[str, str] = {}  # key -> the unclaimed part holding it
        numbers = [-1]
        for name in store.listdir():
            match = SHARD_NAME.match(name)
            if not match or int(match.group(1)) != process:
                continue
            if match.group(3) != fmt:
                raise ValueError(f"{store.path(name)}: a {match.group(3)} shard in a folder being written as {fmt}")
            numbers.append(int(match.group(2)))
            if int(match.group(2)) <= claimed:
                continue
            self._check_shard(name)
            for key in self._keys(name):
                self._orphans[key] = name
        self.done: Set[str] = set(self._orphans)
        self._next = max(numbers) + 1
        # What a killed run of this process left half-written: never a shard, safe to remove.
        pattern = os.path.join(glob.escape(self.folder), f".part-{process:03d}-*.partial")
        for stale in [] if store.remote else glob.glob(pattern):
            os.unlink(stale)

    def _check_metadata(self) -> None:
        if self.store.exists(METADATA_FILE):
            existing = manifest.read_record(self.store, METADATA_FILE, "the token folder's metadata")
            # A resumed run must make the same tokens as the run that wrote the shards already there.
            check_same_tokens(existing, self.metadata, self.folder, (*TOKEN_SETTINGS, "format"))
            if (existing.get("kept_columns") or {}) != self.kept:
                raise ValueError(f"{self.folder}: its parts keep the columns {existing.get('kept_columns') or {}}, "
                                 f"this run {self.kept}; give the same --keep-columns or another --out")  # fmt: skip
            # ... and split the inputs as it did: each process reads only its own parts.
            recorded = existing.get("process_count", 1)
            if recorded != self.process_count:
                raise ValueError(
                    f"{self.folder}: was written by {recorded} process(es); resume it with --process-count "
                    f"{recorded}, or give another --out"
                )
        else:
            manifest.write_record(self.store, METADATA_FILE, self.metadata)

    def _check_shard(self, name: str) -> None:
        """A parquet shard carries the settings it was made with in its own schema: a resumed run
        checks each shard, not only ``metadata.json`` (shards copied in from another run would
        otherwise be counted as done with another model's codes)."""
        if self.format != "parquet":
            return
        import pyarrow.parquet as pq

        path = self.store.path(name)
        try:
            with self.store.open(name) as f:
                recorded = (pq.read_schema(f).metadata or {}).get(b"vqgan_flax")
            made_with = json.loads(recorded) if recorded is not None else None
        except Exception as err:
            raise ValueError(f"{path}: unreadable shard ({type(err).__name__}: {err}); move it away") from None
        if not isinstance(made_with, dict):
            raise ValueError(f"{path}: a shard without its settings (no vqgan_flax metadata); move it away")
        check_same_tokens(made_with, self.metadata, path, (*TOKEN_SETTINGS, "format"))

    def _keys(self, name: str) -> Iterable[str]:
        try:
            with self.store.open(name) as f:
                if self.format == "parquet":
                    import pyarrow.parquet as pq

                    return pq.read_table(f, columns=["key"]).column("key").to_pylist()
                return [json.loads(line)["key"] for line in f if line.strip()]
        except Exception as err:
            why = f"{type(err).__name__}: {err}"
            message = f"{self.store.path(name)}: unreadable shard ({why}); move it away to redo its items"
            raise ValueError(message) from None

    def add(
        self,
        key: str,
        tokens: np.ndarray,
        caption: Optional[str] = None,
        origin: str = "",
        extra: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Queue one item's tokens, (frames, height, width) integers, with its kept columns' values
        (``extra``; checked against their kinds, missing ones empty)."""
        tokens = np.asarray(tokens, np.int32)
        if tokens.ndim != 3:
            raise ValueError(f"{key}: tokens must be (frames, height, width); got shape {tokens.shape}")
        self._rows.append({"key": key, "tokens": tokens, "caption": caption, "kept": checked_row(self.kept, extra)})
        if len(self._rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows as one shard (nothing when none are queued)."""
        if not self._rows:
            return
        name = f"part-{self.process:03d}-{self._next:05d}.{self.format}"
        rows, self._rows = self._rows, []
        if self.format == "parquet":
            self.store.write(name, lambda f: self._write_parquet(f, rows))
        else:
            records = (lwm_record(r["key"], r["tokens"], r["caption"], r["kept"]) for r in rows)
            lines = "".join(json.dumps(record) + "\n" for record in records)
            self.store.write(name, lambda f: f.write(lines.encode()))
        self._next += 1
        self.written += len(rows)
        self._flushed.append(name)
        self._shard_rows += len(rows)

    def skipped(self, key: str) -> None:
        """``key`` (one of ``done``) was met again and skipped: its part belongs to the input shard
        being read, whose marker will name it."""
        part = self._orphans.get(key)
        if part is not None and part not in self._flushed:
            self._flushed.append(part)
        self._shard_rows += 1

    def finish_shard(self, name: str, errors: Sequence[Tuple[str, str]] = ()) -> None:
        """Input shard ``name`` is read to its end: write its rows, then its completion marker
        (the parts that hold them, their number, the items that could not be read). A rerun skips
        it without opening it."""
        self.flush()
        record = {"shard": name, "process": self.process, "outputs": sorted(self._flushed),
                  "rows": self._shard_rows, "errors": [list(e) for e in errors]}  # fmt: skip
        manifest.write_shard_marker(self.store, record)
        self.finished.add(manifest.marker_name(name))
        self._flushed, self._shard_rows = [], 0

    def finish_process(self, plan: Dict[str, Any]) -> None:
        """This process's share is done: write its marker (``plan``: what it was given, e.g. the
        number and digest of the job's input shards), and the job's once every process has one."""
        self.flush()
        mine = (SHARD_NAME.match(name) for name in self.store.listdir())
        parts = [m.group(0) for m in mine if m and int(m.group(1)) == self.process]
        record = {"process": self.process, "process_count": self.process_count, **plan, "outputs": parts}
        manifest.write_process_marker(self.store, record)

    def _write_parquet(self, f: Any, rows: List[Dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = parquet_schema(self.metadata)
        shapes = np.asarray([r["tokens"].shape for r in rows], np.int32).reshape(-1, 3)
        sizes = np.prod(shapes, axis=1, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
        flat = np.concatenate([r["tokens"].reshape(-1) for r in rows])
        columns = [
            pa.array([r["key"] for r in rows], pa.string()),
            pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, pa.int32())),
            pa.array(shapes[:, 0]),
            pa.array(shapes[:, 1]),
            pa.array(shapes[:, 2]),
            pa.array([r["caption"] for r in rows], pa.string()),
            *(pa.array([r["kept"][field.name] for r in rows], field.type) for field in parquet_fields(self.kept)),
        ]
        # Row groups of at most ROW_GROUP_TOKENS tokens: a reader decodes a group's column whole.
        rows_per_group = max(1, ROW_GROUP_TOKENS // max(1, int(sizes.max())))
        pq.write_table(pa.Table.from_arrays(columns, schema=schema), f, row_group_size=rows_per_group)

    def close(self) -> None:
        """Write what is queued and release the folder's lock."""
        try:
            self.flush()
        finally:
            self._unlock()


class NpzTokenWriter:
    """Everything in one ``.npz`` (``tokens`` (N, h, w) or (N, frames, h, w), ``keys``, the
    metadata as 0-d arrays), written at ``close``: for jobs that fit in memory. ``--out -``
    writes to standard output."""

    def __init__(self, path: str, metadata: Dict[str, Any]) -> None:
        self.path, self.metadata = path, metadata
        self.done: Set[str] = set()
        self.keys: List[str] = []
        self.tokens: List[np.ndarray] = []
        self.files: List[str] = []
        self.written = 0

    def add(
        self,
        key: str,
        tokens: np.ndarray,
        caption: Optional[str] = None,
        origin: str = "",
        extra: Optional[Dict[str, Any]] = None,
    ) -> None:
        if extra:
            raise ValueError(f"{key}: an npz token file keeps no columns ({sorted(extra)}); write parquet or jsonl")
        tokens = np.asarray(tokens, np.int32)
        if self.tokens and tokens.shape != self.tokens[0].shape:
            raise ValueError(f"{key}: token grid {tokens.shape} differs from the first item's {self.tokens[0].shape}")
        self.keys.append(key)
        self.tokens.append(tokens)
        self.files.append(origin)
        self.written += 1

    def record(self) -> Dict[str, np.ndarray]:
        grid = tuple(self.metadata["grid"])
        tokens = np.stack(self.tokens) if self.tokens else np.zeros((0, 1, *grid), np.int32)
        if tokens.shape[1] == 1:
            tokens = tokens[:, 0]  # images: (N, h, w), as version 1 files had them
        record = {
            "tokens": tokens,
            "keys": np.asarray(self.keys, dtype=str),
            "files": np.asarray(self.files, dtype=str),
            "grid_shape": np.asarray(grid),
            "image_size": np.asarray(self.metadata["image_size"]),
            "pixel_range": np.asarray(self.metadata["pixel_range"], np.float64),
            "version": np.asarray(self.metadata["token_file_version"]),
        }
        for name in NPZ_STRINGS:  # None (no Hub id, revision or commit) as ""
            record[name] = np.asarray(str(self.metadata.get(name) or ""))
        return record

    def close(self) -> None:
        import sys

        record: Dict[str, Any] = self.record()
        if self.path == "-":
            np.savez(sys.stdout.buffer, **record)
            sys.stdout.buffer.flush()
        else:
            atomic_write(self.path, lambda f: np.savez(f, **record))
