"""Mutation fuzzing of the checkpoint readers, run by ``test_hostile_inputs.py`` in its own process.

Starts from the real fixture files (taming's Lightning ``last.ckpt`` and LWM's params pickle) and
applies seeded mutations: byte flips in the pickle stream (tensor offsets, sizes, strides, storage
keys and types live there), byte flips anywhere in the file, truncation, a storage member cut
short or grown, a storage member dropped. Every load must either succeed with arrays that fit in
the bytes present, or raise ``CheckpointError`` naming the file. Prints a JSON summary; a crash
shows as the process dying, a memory blow-up in ``peak_rss_above_baseline_mb`` (with the C
unpickler one mutation took it to 19 GB).

    python tests/fuzz_checkpoints.py SECONDS SEED
"""

from __future__ import annotations

import collections
import io
import json
import os
import pathlib
import resource
import sys
import tempfile
import time
import zipfile

import numpy as np

from vqgan_flax.conversion import CheckpointError, load_pickle, load_torch_zip

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _flip(data: bytes, rng: np.random.Generator, count: int, start: int = 0) -> bytes:
    data = bytearray(data)
    for position in rng.integers(start, len(data), count):
        data[position] = int(rng.integers(0, 256))
    return bytes(data)


def _rezip(members: dict, path: str) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _mutate_ckpt(members: dict, raw: bytes, rng: np.random.Generator, path: str) -> str:
    kind = ("pickle", "file", "truncate", "storage-size", "drop-storage")[int(rng.integers(0, 5))]
    storages = [n for n in members if "/data/" in n]
    if kind == "pickle":
        pkl = next(n for n in members if n.endswith("data.pkl"))
        _rezip({**members, pkl: _flip(members[pkl], rng, int(rng.integers(1, 8)), start=2)}, path)
    elif kind == "file":
        pathlib.Path(path).write_bytes(_flip(raw, rng, int(rng.integers(1, 16))))
    elif kind == "truncate":
        pathlib.Path(path).write_bytes(raw[: int(rng.integers(0, len(raw)))])
    elif kind == "storage-size":
        name = storages[int(rng.integers(0, len(storages)))]
        data = members[name]
        cut = data[: int(rng.integers(0, len(data)))] if rng.random() < 0.5 else data + data[: int(rng.integers(1, 64))]
        _rezip({**members, name: cut}, path)
    else:
        name = storages[int(rng.integers(0, len(storages)))]
        _rezip({n: d for n, d in members.items() if n != name}, path)
    return kind


def _check(result: object, budget: int) -> None:
    """A successful load must hold only arrays that fit in the bytes the file had."""
    total = 0
    stack = [result]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            total += item.nbytes
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    if total > budget:
        raise AssertionError(f"loaded {total} bytes of arrays from a {budget}-byte file")


def main(seconds: float, seed: int) -> dict:
    ckpt_raw = (FIXTURES / "taming_vq" / "last.ckpt").read_bytes()
    with zipfile.ZipFile(io.BytesIO(ckpt_raw)) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    lwm_raw = (FIXTURES / "lwm" / "vqgan").read_bytes()
    # Imports (jax, transformers) and fixtures are most of the process; what fuzzing adds is the peak above this.
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(seed)
    outcomes: collections.Counter = collections.Counter()
    failures = []
    deadline = time.monotonic() + seconds
    iterations = 0
    with tempfile.TemporaryDirectory() as folder:
        while time.monotonic() < deadline:
            iterations += 1
            if rng.random() < 0.7:
                path = os.path.join(folder, f"m{iterations}.ckpt")
                kind = "ckpt-" + _mutate_ckpt(members, ckpt_raw, rng, path)
                loader = load_torch_zip
            else:
                path = os.path.join(folder, f"m{iterations}.pkl")
                data = lwm_raw[: int(rng.integers(0, len(lwm_raw)))] if rng.random() < 0.2 else lwm_raw
                pathlib.Path(path).write_bytes(_flip(data, rng, int(rng.integers(1, 8)), start=2))
                kind, loader = "lwm-pickle", load_pickle
            size = os.path.getsize(path)
            try:
                _check(loader(path), max(size, 1) * 2)
                outcomes[f"{kind}: loaded"] += 1
            except CheckpointError as error:
                outcomes[f"{kind}: CheckpointError"] += 1
                if path not in str(error):
                    failures.append(f"iteration {iterations} ({kind}): message lacks the file name: {error}")
            except Exception as error:  # anything else escaping is a bug
                failures.append(f"iteration {iterations} ({kind}): {type(error).__name__}: {error}")
            os.remove(path)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"iterations": iterations, "outcomes": dict(sorted(outcomes.items())), "failures": failures[:20],
            "peak_rss_mb": round(peak_mb, 1), "peak_rss_above_baseline_mb": round(peak_mb - baseline_mb, 1),
            "seed": seed}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(main(float(sys.argv[1]), int(sys.argv[2]))))
