"""How a dataset is split between processes: whole input shards, never items of one stream.

A sharded source (webdataset ``.tar`` files, a saved Hugging Face dataset cut into row ranges)
is a list of [`data.sources.InputShard`]s, and process ``i`` of ``n`` takes the shards at positions
``i, i + n, i + 2n, ...`` of that list (the inputs in the order given, brace patterns expanded):
it never opens another process's shard, and every process computes the same split from the same
command line. Items with no shards of their own (image files and folders) are split by a stable
hash of their key ([`key_owner`]), so listing a folder is all a process shares with the others.

``launcher_process`` reads a process's index and count from the environment a launcher sets
(torchrun, SLURM, Open MPI, Cloud TPU pods), for the CLI's defaults.

May import: ``data.sources``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .sources import InputShard


def shard_share(shards: Sequence[InputShard], index: int, count: int) -> List[InputShard]:
    """The shards process ``index`` of ``count`` reads: positions ``index, index + count, ...``.
    Shard names must be unique (each names one marker of completion)."""
    if not 0 <= index < count:
        raise ValueError(f"process index {index} is not in [0, {count})")
    seen: Dict[str, int] = {}
    for position, shard in enumerate(shards):
        if shard.name in seen:
            raise ValueError(f"input shards {seen[shard.name]} and {position} are both named {shard.name!r}")
        seen[shard.name] = position
    return list(shards[index::count])


def key_owner(key: str, count: int) -> int:
    """The process (of ``count``) that encodes the item ``key``: the first 8 bytes of its SHA-256,
    modulo ``count``. Stable across runs, machines and Python versions (``hash`` is salted)."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def shards_digest(names: Sequence[str]) -> str:
    """A digest of the job's shard names in order: processes of one job agree on it, and
    ``verify`` checks that every process worked on the same list."""
    hasher = hashlib.sha256()
    for name in names:
        hasher.update(name.encode("utf-8", "surrogateescape") + b"\0")
    return hasher.hexdigest()


# (index variable, count variable, launcher), in the order they are tried. torchrun's RANK is
# global (one process per device on many hosts); TPU_WORKER_HOSTNAMES is a comma-separated list.
LAUNCHER_VARIABLES: Tuple[Tuple[str, str, str], ...] = (
    ("VQGAN_FLAX_PROCESS_INDEX", "VQGAN_FLAX_PROCESS_COUNT", "vqgan-flax"),
    ("RANK", "WORLD_SIZE", "torchrun"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "Open MPI"),
    ("TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES", "Cloud TPU"),
)


def launcher_process(environ: Optional[Mapping[str, str]] = None) -> Tuple[int, int, str]:
    """``(index, count, launcher)`` from the first launcher whose variables are set (see
    ``LAUNCHER_VARIABLES``); ``(0, 1, "")`` where none is. A launcher whose variables are half set
    or not numbers is refused naming them, rather than every process doing all the work."""
    variables: Mapping[str, str] = os.environ if environ is None else environ
    for index_name, count_name, launcher in LAUNCHER_VARIABLES:
        index_text, count_text = variables.get(index_name), variables.get(count_name)
        if index_text is None and count_text is None:
            continue
        if index_text is None or count_text is None:
            given, missing = (count_name, index_name) if index_text is None else (index_name, count_name)
            raise ValueError(f"{launcher}: {given} is set but {missing} is not")
        if count_name == "TPU_WORKER_HOSTNAMES":
            count_text = str(len([host for host in count_text.split(",") if host.strip()]))
        try:
            index, count = int(index_text), int(count_text)
        except ValueError:
            values = f"{index_name}={index_text!r}, {count_name}={count_text!r}"
            raise ValueError(f"{launcher}: {values} are not numbers") from None
        if not 0 <= index < count:
            raise ValueError(f"{launcher}: {index_name}={index} is not in [0, {count_name}={count})")
        return index, count, launcher
    return 0, 1, ""


__all__ = ("LAUNCHER_VARIABLES", "key_owner", "launcher_process", "shard_share", "shards_digest")
