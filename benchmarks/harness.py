"""What the speed harnesses share: the systems they measure, the timing loop and the fresh worker
process each measurement runs in (``run.py``, ``op_profile.py``, ``memory.py``). Imports no other
benchmark, so the harnesses and ``report.py`` import it without a cycle."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_SYSTEMS = {  # name: (compiled, channels_last, autocast bf16)
    "torch-eager-float32": (False, False, False),
    "torch-eager-float32-cl": (False, True, False),
    "torch-eager-bfloat16": (False, False, True),
    "torch-eager-bfloat16-cl": (False, True, True),
    "torch-compile-float32": (True, True, False),
    "torch-compile-bfloat16": (True, True, True),
}
# jax-*: on CPU the kernels of vqgan_flax/kernels/cpu.py where they build, as users get by
# default; jax-xla-*: XLA's own ops (VQGAN_FLAX_CPU_KERNELS=off), what other CPUs get.
SYSTEMS = ("jax-float32", "jax-bfloat16", "jax-xla-float32", "jax-xla-bfloat16", *TORCH_SYSTEMS)


def precision(system: str) -> str:
    """The float type a system computes in, from its name."""
    return "bfloat16" if "bfloat16" in system else "float32"


def timed(fn, repeats: int) -> float:
    """The median of ``repeats`` timed calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compile_caches(scratch: str) -> tuple:
    """``(env, inherited)``: the environment for a run's worker processes, with one inductor and one
    JAX compilation cache for the whole run under ``scratch`` (the first worker of a system pays
    the cold compile, later ones start warm, as a user's second process would). Cache folders the
    caller names (``TORCHINDUCTOR_CACHE_DIR``, ``JAX_COMPILATION_CACHE_DIR``) are kept, and listed in
    ``inherited`` for the record, since then even the first worker may start warm."""
    env, inherited = dict(os.environ), []
    for name, folder in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("JAX_COMPILATION_CACHE_DIR", "jax")):
        if env.get(name):
            inherited.append(name)
        else:
            env[name] = os.path.join(scratch, folder)
    return env, inherited


def run_in_fresh_process(script: str, worker_args: list, label: str, env: dict | None = None) -> dict:
    """Run ``script --worker ...`` in a new Python process; return the JSON object it prints last."""
    proc = subprocess.run([sys.executable, os.path.abspath(script), "--worker", *worker_args],
                          capture_output=True, text=True, cwd=ROOT, env=env)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"benchmark worker {label} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
