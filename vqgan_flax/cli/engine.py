"""``vqgan-flax encode --engine ray``: the same job as the local engine, its processes run as Ray
tasks. Task ``i`` of ``n`` runs exactly ``vqgan-flax encode ... --process-index i --process-count
n`` inside a Ray worker, so the output has the local engine's parts, metadata and completion
records (and the same tokens); a task that fails is retried by Ray, and a retry resumes where the
failed attempt stopped (finished shards are skipped unopened). Paths are made absolute first (a
worker's working folder is not the driver's); on a cluster of many machines, ``--out`` and the
inputs must be reachable from every machine (object storage or a shared file system).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional

from ..utils.extras import require

# The options of `encode` that only the driver reads.
DRIVER_ONLY = ("engine", "ray_address", "ray_cpus", "ray_gpus", "ray_retries", "process_index", "process_count",
               "encode_parser")  # fmt: skip


def _absolute(value: str) -> str:
    from ..data.storage import is_remote

    return value if value == "-" or is_remote(value) else os.path.abspath(value)


def task_argv(args: argparse.Namespace, parser: argparse.ArgumentParser, index: int, count: int) -> List[str]:
    """The command line of process ``index`` of ``count``, rebuilt from the parsed ``args`` (local
    paths made absolute, a local ``--model`` folder too)."""
    argv: List[str] = ["encode"]
    for action in parser._actions:
        if action.dest in DRIVER_ONLY or action.dest in ("help", "func") or not action.option_strings:
            continue
        value = getattr(args, action.dest, None)
        if value is None or value is False or (action.default == value and not isinstance(value, list)):
            continue
        flag = action.option_strings[-1]
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            text = str(value)
            if action.dest in ("out", "model") and (action.dest == "out" or os.path.exists(text)):
                text = _absolute(text)
            argv += [flag, text]
    argv += ["--process-index", str(index), "--process-count", str(count)]
    return [*argv, "--", *(_absolute(p) for p in args.inputs)]


def task_options(gpus: Optional[float], retries: int, cpus: Optional[float] = None) -> Dict[str, Any]:
    """The ``ray.remote`` options of the engine's tasks: ``cpus`` CPUs and ``gpus`` GPUs each (none
    when None), ``retries`` retries, on exceptions too. The CPUs matter beyond scheduling: Ray sets
    a task's ``OMP_NUM_THREADS`` to its CPU count, and with Ray's default of one CPU the CPU
    kernels' convolutions ran on one thread (``benchmarks/dataset_tokenization.py``'s ``ray`` mode
    measures what the engine's tasks get)."""
    options: Dict[str, Any] = {"max_retries": retries, "retry_exceptions": True, "num_gpus": gpus}
    if cpus is not None:
        options["num_cpus"] = cpus
    return options


def default_task_cpus(nodes: List[Dict[str, Any]], count: int) -> float:
    """CPUs per task when ``--ray-cpus`` is not given: the live nodes' CPUs shared by the ``count``
    tasks, at least 1 and at most what the largest node has (so every task can be placed)."""
    cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in nodes if n.get("Alive", True)]
    if not cpus or max(cpus) < 1:
        return 1.0
    return float(max(1, min(int(sum(cpus) // max(count, 1)), int(max(cpus)))))


def run_on_ray(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Run ``args`` (an ``encode`` command) as ``--process-count`` Ray tasks; raises naming the first
    process that still failed after its retries."""
    require("ray")
    import ray

    if args.process_index is not None:
        raise ValueError("--engine ray runs every process itself; give --process-count only")
    started = not ray.is_initialized()  # a notebook's or a test's own cluster is used, and kept
    if started:
        ray.init(address=args.ray_address, log_to_driver=True, configure_logging=False)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        count = args.process_count or (max(1, int(gpus // args.ray_gpus)) if args.ray_gpus and gpus else 1)
        cpus = args.ray_cpus or default_task_cpus(ray.nodes(), count)
        remote = ray.remote(**task_options(args.ray_gpus, args.ray_retries, cpus))(_task)
        calls = [remote.remote(task_argv(args, parser, index, count)) for index in range(count)]
        for index, call in enumerate(calls):
            try:
                ray.get(call)
            except Exception as err:
                cause = getattr(err, "cause", None) or err
                raise RuntimeError(f"--engine ray: process {index} of {count} failed: {cause}") from None
    finally:
        if started:
            ray.shutdown()


def _task(argv: List[str]) -> None:
    """One process of the job, in a Ray worker: the local engine, exactly."""
    import contextlib
    import io
    import sys

    from . import main

    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = main(argv)
    sys.stderr.write(errors.getvalue())  # Ray forwards it to the driver, prefixed with the worker
    if code != 0:
        raise RuntimeError(errors.getvalue().strip().splitlines()[-1] if errors.getvalue().strip() else f"exit {code}")


__all__ = ("DRIVER_ONLY", "default_task_cpus", "run_on_ray", "task_argv", "task_options")
