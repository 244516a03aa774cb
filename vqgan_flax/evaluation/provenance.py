"""Where a published number came from: the commit, the harness, the command, the packages and
the machine, recorded in every results file by the harness that wrote it (``benchmarks/``, the
default model's evaluation and training scripts). It describes a checkout: run from an installed
wheel, git finds no tree and a record counts as dirty.

A results file is only written from a clean checkout (tracked files unchanged), so its commit
field names exactly the code that ran; ``--allow-dirty`` writes anyway and says so in the record,
and ``report.py`` refuses to publish such a file. The tree is read when the harness starts
(``check_can_record``) and again when it writes: files changed in between (an edit or a commit made
while it measured) are listed in the record as ``changed_during_run``, and ``report.py`` refuses a
record where any of them is more than documentation.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from typing import Iterable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
_STARTED: Optional[tuple] = None  # tree_state() when check_can_record ran: the code that is measured
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "transformers", "huggingface_hub", "torch", "pillow", "pyarrow")


def _git(*argv: str) -> str:
    proc = subprocess.run(["git", *argv], capture_output=True, text=True, cwd=ROOT)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def tree_state() -> tuple:
    """(commit, dirty): HEAD of the checkout and whether tracked files differ from it; a copy that
    git cannot read counts as dirty (nothing says which code it holds)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return "unknown", True
    return commit, bool(_git("status", "--porcelain", "--untracked-files=no"))


def cpu_description() -> dict:
    """CPU model, core count and the vector ISA flags that decide conv/matmul speed (and whether
    bf16 has hardware support: ``avx512_bf16`` or ``amx_bf16``)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        all_flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        flags = sorted(f for f in all_flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    except (OSError, StopIteration):
        pass
    return {"model": model, "cores": os.cpu_count(), "isa": flags}


def cpu_has_bf16_units(cpu: Optional[dict] = None) -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & set((cpu or cpu_description())["isa"]))


def gpu_description() -> Optional[str]:
    """The GPU's name from ``nvidia-smi`` (None without one)."""
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else None


def package_versions(names: Iterable[str] = PACKAGES) -> dict:
    """Installed versions (without importing anything), for the packages that are installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def harness_sha256(*paths: str) -> str:
    """One hash over the harness files (the script and the modules it measures with)."""
    digest = hashlib.sha256()
    for path in sorted(set(paths)):
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + f.read())
    return digest.hexdigest()[:16]


def provenance(script: str, argv: Optional[list] = None, extra_harness: Iterable[str] = ()) -> dict:
    """The record's header: commit (and whether the tree was dirty), harness hash, command line,
    Python and package versions, CPU (model, cores, ISA) and GPU, date and time (UTC). The commit
    and dirtiness are the tree's when ``check_can_record`` ran, where it did."""
    commit, dirty = _STARTED or tree_state()
    harness = [os.path.abspath(script), os.path.abspath(__file__), *extra_harness]
    return {
        "commit": commit,
        "dirty": dirty,
        "harness_sha256": harness_sha256(*harness),
        "command": shlex.join(["python", os.path.relpath(os.path.abspath(script), ROOT), *(argv or sys.argv[1:])]),
        "python": platform.python_version(),
        "versions": package_versions(),
        "cpu": cpu_description(),
        "gpu": gpu_description(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def check_can_record(json_path: Optional[str], allow_dirty: bool) -> None:
    """Refuse, before any measuring, to write results that would not name the code that ran; remember
    the tree's state, which the record then names (see ``provenance``, ``write_record``)."""
    global _STARTED
    _STARTED = tree_state()
    if json_path and _STARTED[1] and not allow_dirty:
        raise SystemExit(f"refusing to write {json_path}: tracked files differ from HEAD ({_STARTED[0][:12]}); "
                         "commit first (or pass --allow-dirty, which report.py will not publish)")  # fmt: skip


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """This process's resident memory now, in MiB (``/proc/self/statm``: pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def changed_since(commit: str) -> list:
    """Tracked files whose content now differs from ``commit`` (edited, or changed by later commits)."""
    return sorted(_git("diff", "--name-only", commit, "--").splitlines()) if commit != "unknown" else []


def write_record(path: str, record: dict) -> None:
    """Write a results file atomically (a run cut short leaves the previous file intact). A record
    from a clean tree gets ``changed_during_run``: the files that differ from its commit now, less
    the record itself (a harness that saves after every measurement has changed it already)."""
    if record.get("dirty") is False and record.get("commit"):
        itself = os.path.relpath(os.path.abspath(path), ROOT).replace(os.sep, "/")
        changed = [name for name in changed_since(record["commit"]) if name != itself]
        if changed:
            record = {**record, "changed_during_run": changed}
    tmp = f"{path}.partial"
    with open(tmp, "w") as f:
        f.write(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def isa_summary(flags: Iterable[str]) -> str:
    """The instruction sets that decide our kernels' speed, from a record's full flag list: AMX
    (bf16 matrix tiles), AVX-512 with or without bf16, else AVX2 (the full list stays in the record)."""
    present = set(flags)
    if "amx_bf16" in present:
        return "AMX, AVX-512 bf16"
    if "avx512_bf16" in present:
        return "AVX-512 bf16, no AMX"
    if "avx512f" in present:
        return "AVX-512, no bf16"
    return "AVX2" if "avx2" in present else "no AVX"


def describe(record: dict) -> str:
    """One line: date, commit, machine and the main package versions of a record."""
    cpu = record["cpu"]
    machine = record.get("gpu") or f"{cpu['model']}, {cpu['cores']} cores ({isa_summary(cpu['isa'])})"
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items() if k in ("jax", "flax", "torch"))
    return (f"{record['date'][:10]}, commit {record['commit'][:12]}{' (dirty)' if record['dirty'] else ''}, "
            f"{machine}, Python {record['python']}, {versions}")  # fmt: skip
