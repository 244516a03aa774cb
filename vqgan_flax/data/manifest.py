"""The completion records of a sharded token folder, kept in its hidden ``.vqgan_flax/``.

- ``done/HASH.json``, one per finished input shard (``HASH``: of the shard's name): the shard's
  name, the process that read it, the parts holding its rows, its number of rows and the items
  that could not be read. A rerun lists ``done/`` once and skips those shards unopened.
- ``progress-PPP.json``: the highest part number of process ``PPP`` that a marker accounts for;
  the process's parts numbered above it (what a killed run wrote of the shard it was in) are the
  only ones whose keys a rerun reads.
- ``process-PPP.json``: process ``PPP`` finished its share (its process count, the number and
  digest of the job's input shards, its parts); ``complete.json`` once every process has one.

Each record is written whole ([`data.storage.Folder`]), after the parts it names, so a folder in
an object store keeps them as a local one does.

May import: ``data.storage``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Set

from .storage import Folder

INFO_DIR = ".vqgan_flax"
DONE_DIR = f"{INFO_DIR}/done"
COMPLETE_FILE = f"{INFO_DIR}/complete.json"
# A record larger than this is refused unread (a process record lists its share's shard names).
MAX_RECORD_BYTES = 64 << 20


def marker_name(shard: str) -> str:
    """The file name of input shard ``shard``'s marker: shard names may hold any characters
    (slashes, ``..``), so the marker is named by their SHA-256."""
    return hashlib.sha256(shard.encode("utf-8", "surrogateescape")).hexdigest()[:32] + ".json"


def read_record(store: Folder, name: str, what: str) -> Dict[str, Any]:
    """The JSON object in ``name`` of ``store``, refused naming the file when it is not one."""
    where = store.path(name)
    try:
        data = store.read_bytes(name, MAX_RECORD_BYTES)
        record = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{where}: {what}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: {what}: not a JSON object")
    return record


def write_record(store: Folder, name: str, record: Dict[str, Any]) -> None:
    text = json.dumps(record, indent=1) + "\n"
    store.write(name, lambda f: f.write(text.encode()))


def finished_shards(store: Folder) -> Set[str]:
    """The marker names of every finished input shard, any process's (one folder listing)."""
    return {name for name in store.listdir(DONE_DIR) if name.endswith(".json")}


def write_shard_marker(store: Folder, record: Dict[str, Any]) -> None:
    """Record that input shard ``record["shard"]`` is finished, then advance its process's
    progress to the highest part the record names."""
    write_record(store, f"{DONE_DIR}/{marker_name(record['shard'])}", record)
    numbers = [int(name.split("-")[2].split(".")[0]) for name in record["outputs"]]
    process = record["process"]
    if numbers and max(numbers) > claimed_up_to(store, process):
        write_record(store, f"{INFO_DIR}/progress-{process:03d}.json", {"claimed_up_to": max(numbers)})


def claimed_up_to(store: Folder, process: int) -> int:
    """The highest part number of ``process`` that a shard marker accounts for (-1: none)."""
    name = f"{INFO_DIR}/progress-{process:03d}.json"
    if not store.exists(name):
        return -1
    value = read_record(store, name, "a progress record").get("claimed_up_to")
    if not isinstance(value, int) or isinstance(value, bool) or value < -1:
        raise ValueError(f"{store.path(name)}: claimed_up_to must be a part number; got {value!r}")
    return value


def write_process_marker(store: Folder, record: Dict[str, Any]) -> None:
    """Record that process ``record["process"]`` finished its share; once every one of the
    ``record["process_count"]`` processes has, write ``complete.json`` (any of them may be the
    last; they write the same record)."""
    count = record["process_count"]
    write_record(store, f"{INFO_DIR}/process-{record['process']:03d}.json", record)
    markers = process_markers(store)
    if all(p in markers for p in range(count)):
        write_record(store, COMPLETE_FILE, {"process_count": count, "processes": list(range(count))})


def process_markers(store: Folder) -> Dict[int, Dict[str, Any]]:
    """Every ``process-PPP.json`` of the folder by process index."""
    found: Dict[int, Dict[str, Any]] = {}
    for name in store.listdir(INFO_DIR):
        number = name[len("process-") : -len(".json")]
        if name.startswith("process-") and name.endswith(".json") and number.isdigit():
            found[int(number)] = read_record(store, f"{INFO_DIR}/{name}", "a process record")
    return found


def shard_markers(store: Folder) -> List[Dict[str, Any]]:
    """Every finished input shard's marker, checked to be named for the shard it records."""
    records = []
    for name in sorted(finished_shards(store)):
        record = read_record(store, f"{DONE_DIR}/{name}", "a shard marker")
        if not isinstance(record.get("shard"), str) or marker_name(record["shard"]) != name:
            raise ValueError(
                f"{store.path(DONE_DIR + '/' + name)}: the marker of another shard ({record.get('shard')!r})"
            )
        records.append(record)
    return records


__all__ = ("claimed_up_to", "finished_shards", "marker_name", "process_markers", "read_record", "shard_markers",
           "write_process_marker", "write_record", "write_shard_marker")  # fmt: skip
