"""The completion records of a sharded token folder, kept in its hidden ``.vqgan_flax/``.

- ``done/HASH.json``, one per finished input shard (``HASH``: of the shard's name): the shard's
  name, the process that read it, the parts holding its rows, its number of rows and the items
  that could not be read. A rerun lists ``done/`` once and skips those shards unopened.
- ``progress-PPP.json``: the highest part number of process ``PPP`` that a marker accounts for;
  the process's parts numbered above it (what a killed run wrote of the shard it was in) are the
  only ones whose keys a rerun reads.
- ``process-PPP.json``: process ``PPP`` finished its share (its process count, the number and
  digest of the job's input shards, its parts); ``complete.json`` once every process has one.

Each record is written whole (a temporary file renamed), after the parts it names.

May import: ``utils``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any, Dict, List, Set

from ..utils.files import atomic_write, read_json_object

INFO_DIR = ".vqgan_flax"
DONE_DIR = os.path.join(INFO_DIR, "done")
COMPLETE_FILE = os.path.join(INFO_DIR, "complete.json")


def marker_name(shard: str) -> str:
    """The file name of input shard ``shard``'s marker: shard names may hold any characters
    (slashes, ``..``), so the marker is named by their SHA-256."""
    return hashlib.sha256(shard.encode("utf-8", "surrogateescape")).hexdigest()[:32] + ".json"


def _write(path: str, record: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = json.dumps(record, indent=1) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def finished_shards(folder: str) -> Set[str]:
    """The marker names of every finished input shard, any process's (one folder listing)."""
    done = os.path.join(folder, DONE_DIR)
    return {name for name in os.listdir(done) if name.endswith(".json")} if os.path.isdir(done) else set()


def write_shard_marker(folder: str, record: Dict[str, Any]) -> None:
    """Record that input shard ``record["shard"]`` is finished, then advance its process's
    progress to the highest part the record names."""
    _write(os.path.join(folder, DONE_DIR, marker_name(record["shard"])), record)
    numbers = [int(name.split("-")[2].split(".")[0]) for name in record["outputs"]]
    process = record["process"]
    if numbers and max(numbers) > claimed_up_to(folder, process):
        _write(os.path.join(folder, INFO_DIR, f"progress-{process:03d}.json"), {"claimed_up_to": max(numbers)})


def claimed_up_to(folder: str, process: int) -> int:
    """The highest part number of ``process`` that a shard marker accounts for (-1: none)."""
    path = os.path.join(folder, INFO_DIR, f"progress-{process:03d}.json")
    if not os.path.lexists(path):
        return -1
    value = read_json_object(path, "a progress record").get("claimed_up_to")
    if not isinstance(value, int) or isinstance(value, bool) or value < -1:
        raise ValueError(f"{path}: claimed_up_to must be a part number; got {value!r}")
    return value


def write_process_marker(folder: str, record: Dict[str, Any]) -> None:
    """Record that process ``record["process"]`` finished its share; once every one of the
    ``record["process_count"]`` processes has, write ``complete.json`` (any of them may be the
    last; they write the same record)."""
    count = record["process_count"]
    _write(os.path.join(folder, INFO_DIR, f"process-{record['process']:03d}.json"), record)
    markers = process_markers(folder)
    if all(p in markers for p in range(count)):
        rows = {"process_count": count, "processes": list(range(count))}
        _write(os.path.join(folder, COMPLETE_FILE), rows)


def process_markers(folder: str) -> Dict[int, Dict[str, Any]]:
    """Every ``process-PPP.json`` of ``folder`` by process index."""
    found: Dict[int, Dict[str, Any]] = {}
    for path in sorted(glob.glob(os.path.join(folder, INFO_DIR, "process-*.json"))):
        number = os.path.basename(path)[len("process-") : -len(".json")]
        if number.isdigit():
            found[int(number)] = read_json_object(path, "a process record")
    return found


def shard_markers(folder: str) -> List[Dict[str, Any]]:
    """Every finished input shard's marker, checked to be named for the shard it records."""
    records = []
    done = os.path.join(folder, DONE_DIR)
    for name in sorted(finished_shards(folder)):
        record = read_json_object(os.path.join(done, name), "a shard marker")
        if not isinstance(record.get("shard"), str) or marker_name(record["shard"]) != name:
            raise ValueError(f"{os.path.join(done, name)}: the marker of another shard ({record.get('shard')!r})")
        records.append(record)
    return records


__all__ = ("claimed_up_to", "finished_shards", "marker_name", "process_markers", "shard_markers",
           "write_process_marker", "write_shard_marker")  # fmt: skip
