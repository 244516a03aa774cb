"""Checking a sharded token folder after a many-process run (``vqgan-flax verify``): every
process finished its share, every input shard was finished exactly once and its rows are all in
the parts its marker names, no part is unaccounted for, no key appears twice, and every part was
made with the folder's one model and one set of settings.

May import: ``data.manifest``, ``data.readers``, ``data.writers``, ``data.shards``, ``data.storage``,
``hub.identity``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..hub.identity import TOKEN_SETTINGS, check_same_tokens
from . import manifest
from .readers import shard_keys, shard_settings
from .shards import key_owner, shards_digest
from .storage import Folder
from .writers import METADATA_FILE, SHARD_NAME

# Problems listed in full up to this many; the rest are counted.
MAX_LISTED = 20


@dataclass
class FolderReport:
    """What ``verify_token_folder`` found: the counts, and ``problems`` (empty: the folder is
    whole). ``input_shards`` is ``None`` for a job split by key hash (image files)."""

    folder: str
    format: str = "?"
    process_count: int = 0
    processes_finished: int = 0
    input_shards: Optional[int] = None
    shards_finished: int = 0
    parts: int = 0
    rows: int = 0
    unreadable_items: int = 0
    settings: Dict[str, Any] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> List[str]:
        """A summary line, then one line per problem."""
        shards = "" if self.input_shards is None else f", {self.shards_finished} of {self.input_shards} input shards"
        model = self.settings.get("hub_id") or self.settings.get("model") or "?"
        grid = "x".join(map(str, self.settings.get("grid") or ["?"]))
        summary = (
            f"{self.folder}: {self.format}, {self.processes_finished} of {self.process_count} processes finished"
            f"{shards}, {self.rows} rows in {self.parts} parts, {self.unreadable_items} unreadable items; "
            f"model {model}, grid {grid}: " + ("complete" if self.ok else f"{len(self.problems)} problem(s)")
        )
        shown = [f"  {p}" for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            shown.append(f"  ... and {len(self.problems) - MAX_LISTED} more")
        return [summary, *shown]


def verify_token_folder(folder: str) -> FolderReport:
    """Check ``folder`` (written by ``vqgan-flax encode`` with parquet or JSONL output) and report;
    reads every part's keys and settings, every marker, never the tokens themselves."""
    report = FolderReport(folder)
    store = Folder(folder)
    if not store.exists(METADATA_FILE):
        report.problems.append(
            f"{store.path(METADATA_FILE)}: missing (not a token folder written by vqgan-flax encode?)"
        )
        return report
    try:
        metadata = manifest.read_record(store, METADATA_FILE, "the token folder's metadata")
    except ValueError as err:
        report.problems.append(f"{err} (not a token folder written by vqgan-flax encode?)")
        return report
    report.settings, report.format = metadata, str(metadata.get("format", "?"))
    count = metadata.get("process_count", 1)
    report.process_count = count if isinstance(count, int) and count > 0 else 0
    problems = report.problems
    processes = _processes(store, report)
    rows_of = _parts(store, report, metadata)
    if manifest.finished_shards(store) or any(r.get("split") == "shards" for r in processes.values()):
        _shards(store, report, processes, rows_of)
    else:
        for part in rows_of:  # a key-hash split: each key in the part of the process it hashes to
            process = int(SHARD_NAME.match(part).group(1))  # type: ignore[union-attr]
            wrong = [k for k in rows_of[part] if key_owner(k, report.process_count or 1) != process]
            if wrong:
                problems.append(f"{part}: {len(wrong)} key(s) of another process, e.g. {wrong[0]} (mixed runs?)")
        report.unreadable_items = sum(int(r.get("errors", 0)) for r in processes.values())
    return report


def _processes(store: Folder, report: FolderReport) -> Dict[int, Dict[str, Any]]:
    try:
        processes = manifest.process_markers(store)
    except ValueError as err:
        report.problems.append(str(err))
        return {}
    for process in range(report.process_count):
        record = processes.get(process)
        if record is None:
            report.problems.append(f"process {process} has not finished its share (no process-{process:03d}.json)")
        elif record.get("process_count") != report.process_count:
            report.problems.append(
                f"process {process} ran as one of {record.get('process_count')}, the folder has {report.process_count}"
            )
    extra = sorted(set(processes) - set(range(report.process_count)))
    if extra:
        report.problems.append(f"records of processes {extra} beyond the folder's {report.process_count}")
    report.processes_finished = len(set(processes) & set(range(report.process_count)))
    return processes


def _parts(store: Folder, report: FolderReport, metadata: Dict[str, Any]) -> Dict[str, List[str]]:
    """Every part's keys by part name, with duplicates, foreign formats and settings reported."""
    rows_of: Dict[str, List[str]] = {}
    first_part: Dict[str, str] = {}
    duplicates = 0
    for name in store.listdir():
        match = SHARD_NAME.match(name)
        if not match:
            continue
        path = store.path(name)
        if match.group(3) != report.format:
            report.problems.append(f"{name}: a {match.group(3)} part in a {report.format} folder")
            continue
        if int(match.group(1)) >= report.process_count:
            report.problems.append(f"{name}: written by process {int(match.group(1))} of {report.process_count}")
        try:
            with store.open(name) as handle:
                settings = shard_settings(path, handle)
            if settings:
                check_same_tokens(metadata, settings, name, (*TOKEN_SETTINGS, "format"))
            elif report.format == "parquet":
                report.problems.append(f"{name}: a part without its settings (no vqgan_flax metadata)")
            with store.open(name) as handle:
                keys = shard_keys(path, handle)
        except (OSError, ValueError) as err:
            report.problems.append(str(err))
            continue
        rows_of[name] = keys
        for key in keys:
            if key in first_part:
                duplicates += 1
                if duplicates <= 3:
                    report.problems.append(f"key {key} is in both {first_part[key]} and {name}")
            else:
                first_part[key] = name
    if duplicates > 3:
        report.problems.append(f"... {duplicates} keys in all appear twice")
    report.parts, report.rows = len(rows_of), sum(map(len, rows_of.values()))
    return rows_of


def _shards(store: Folder, report: FolderReport, processes: Dict[int, Dict[str, Any]], rows_of: Dict[str, Any]) -> None:
    """A job of input shards: the shares add up to the job's list, each shard finished once, its
    rows in the parts its marker names, every part named by one marker."""
    problems = report.problems
    plans = {(r.get("input_shards"), r.get("shards_digest")) for r in processes.values()}
    if len(plans) > 1:
        problems.append(f"the processes worked on different lists of input shards: {sorted(map(str, plans))}")
    report.input_shards = next(iter(plans))[0] if len(plans) == 1 else None
    try:
        markers = manifest.shard_markers(store)
    except ValueError as err:
        problems.append(str(err))
        return
    report.shards_finished = len(markers)
    shares = {name for r in processes.values() for name in r.get("shard_names", [])}
    job = _job_order(processes, report.process_count, report.input_shards)
    if job is not None and shards_digest(job) != next(iter(plans))[1]:
        problems.append("the processes' shares do not make up the job's list of input shards")
    named: Dict[str, str] = {}
    for marker in markers:
        shard = marker["shard"]
        if shares and shard not in shares:
            problems.append(f"input shard {shard} is finished but in no process's share")
        report.unreadable_items += len(marker.get("errors", []))
        outputs = [str(o) for o in marker.get("outputs", [])]
        held = 0
        for part in outputs:
            if part in named:
                problems.append(f"{part} is named by the markers of {named[part]} and {shard}")
            named[part] = shard
            if part not in rows_of:
                problems.append(f"input shard {shard}: its part {part} is missing or unreadable")
            else:
                held += len(rows_of[part])
        if all(part in rows_of for part in outputs) and held != marker.get("rows"):
            problems.append(f"input shard {shard}: its parts hold {held} rows, its marker says {marker.get('rows')}")
    if isinstance(report.input_shards, int) and report.shards_finished < report.input_shards:
        unfinished = sorted(shares - {m["shard"] for m in markers})
        example = f", e.g. {unfinished[0]}" if unfinished else ""
        problems.append(f"{report.input_shards - report.shards_finished} input shard(s) not finished{example}")
    for part in sorted(set(rows_of) - set(named)):
        problems.append(f"{part}: rows of no finished input shard (a run stopped inside a shard; rerun it)")


def _job_order(processes: Dict[int, Dict[str, Any]], count: int, total: Any) -> Optional[List[str]]:
    """The job's shard list rebuilt from the shares (process p held positions p, p + n, ...), or
    ``None`` where a share is missing."""
    if not isinstance(total, int) or any(p not in processes for p in range(count)):
        return None
    job: List[Any] = [None] * total
    for process in range(count):
        names = processes[process].get("shard_names", [])
        positions = range(process, total, count)
        if len(names) != len(positions):
            return []  # a share of the wrong size: no list matches
        for position, name in zip(positions, names):
            job[position] = name
    return job


__all__ = ("FolderReport", "verify_token_folder")
