"""End-to-end dataset tokenization: how close the pipeline (decode JPEGs or tar shards, resize,
batch, encode, write parquet) comes to the model alone, and whether its memory stays flat in N.

    python benchmarks/dataset_tokenization.py                                # f16-1024 at 256², N = 64, 3 rounds
    python benchmarks/dataset_tokenization.py --preset tiny --size 64 --n 16 --rss-n 16 32   # a quick check
    python benchmarks/dataset_tokenization.py --json benchmarks/results/dataset_tokenization.json  # clean checkout

Modes, each in its own process, interleaved over ``--rounds`` rounds:
  (a) ``model``: the model alone on pre-decoded arrays (the CLI's runner, same batches);
  (b) ``files``: ``tokenize_items`` over JPEG files → parquet shards (what ``vqgan-flax encode``
      does), decoding threads overlapped with the model;
  (c) ``tar``: ``tokenize_shards`` over webdataset tar shards of the same JPEGs (whole shards, each
      marked finished, as ``vqgan-flax encode`` runs them);
  (d) ``s3``: the same shards read from a local S3 API server (moto's, started by the parent on
      127.0.0.1; needs ``moto[server]`` and ``s3fs``) and the parts written back to it;
  (e) ``ray``: (c) run inside a task of a local Ray cluster with the options ``--engine ray``
      gives its one task here (every CPU: Ray sets a task's ``OMP_NUM_THREADS`` to its CPUs), so
      what the engine's worker environment costs shows (needs ``ray``).
Throughput is images/s after a warm-up batch (compilation excluded); the ratio of (b)-(e)
to (a) is reported per round with min / median / max. Peak RSS of (b) is measured at each
``--rss-n`` (default 64 and 1024), with the resident memory after every batch (``trace``) so a
plateau can be told from a leak; ``--memory-env NAME=VALUE`` runs those in an altered environment
(e.g. ``MALLOC_ARENA_MAX=2``) and ``--rounds 0`` skips the throughput rounds. The synthetic photos
are smooth random fields saved as JPEG (quality 90) at 320x256, so decoding and resizing cost what
real photos cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

from vqgan_flax.evaluation import provenance
from vqgan_flax.evaluation.provenance import current_rss_mb, peak_rss_mb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODES = ("model", "files", "tar", "s3", "ray")


def make_photos(folder: str, n: int, seed: int = 0) -> list:
    """``n`` JPEGs of smooth random colour fields (320x256) and two tar shards of them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        coarse = rng.integers(0, 256, (8, 10, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((320, 256), Image.Resampling.BICUBIC)
        path = os.path.join(folder, f"{i:05d}.jpg")
        image.save(path, quality=90)
        paths.append(path)
    for shard, chunk in enumerate((paths[: n // 2], paths[n // 2 :])):
        with tarfile.open(os.path.join(folder, f"shard-{shard}.tar"), "w") as archive:
            for path in chunk:
                archive.add(path, arcname=os.path.basename(path))
    return paths


def worker(mode: str, folder: str, n: int, preset: str, size: int, batch: int) -> dict:
    if mode == "ray":
        import ray

        from vqgan_flax.cli.engine import default_task_cpus, task_options

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            cpus = default_task_cpus(ray.nodes(), 1)
            task = ray.remote(**task_options(gpus=None, retries=0, cpus=cpus))(worker)
            result = ray.get(task.remote("tar", folder, n, preset, size, batch))
        finally:
            ray.shutdown()
        return {**result, "mode": "ray", "peak_rss_mb_driver": peak_rss_mb()}
    import numpy as np

    from vqgan_flax import FlaxVQGANModel, VQGANConfig, VQGANImageProcessor
    from vqgan_flax.cli.common import Runner
    from vqgan_flax.data.sources import file_items, tar_shards
    from vqgan_flax.data.tokenize import tokenize_items, tokenize_shards
    from vqgan_flax.data.writers import ShardedTokenWriter

    model = FlaxVQGANModel(VQGANConfig.from_preset(preset), seed=0)
    processor = VQGANImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    runner = Runner(model, replicate=False, batch_size=batch, processor=processor)
    grid = model.config.latent_shape(size, size)
    warm = np.zeros((batch, size, size, 3), np.float32)
    runner.encode(warm, grid)  # compile outside the timing
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jpg"))
    assert len(paths) == n, (folder, len(paths), n)
    if mode == "model":
        from vqgan_flax.data.image_io import open_rgb

        pixels = processor.to_pixel_values(np.stack([np.asarray(processor.resize_crop(open_rgb(p))) for p in paths]))
        start = time.perf_counter()
        for i in range(0, n, batch):
            runner.encode(pixels[i : i + batch], grid)
        seconds = time.perf_counter() - start
    else:
        trace = []

        def encode(x):  # resident memory after each batch: a leak climbs, allocator growth levels off
            tokens = runner.encode(x, grid)
            trace.append([len(trace) * batch + len(x), round(current_rss_mb(), 1)])
            return tokens

        shards = sorted(f for f in os.listdir(folder) if f.endswith(".tar"))
        with tempfile.TemporaryDirectory() as local_out:
            out = f"s3://bench/out-{os.getpid()}" if mode == "s3" else local_out
            writer = ShardedTokenWriter(out, "parquet", {"model": preset, "grid": list(grid)}, rows_per_shard=256)
            start = time.perf_counter()
            if mode == "files":
                summary = tokenize_items(file_items([folder]), encode, writer, processor, batch)
            else:
                where = "s3://bench/shards" if mode == "s3" else folder
                inputs = tar_shards([f"{where}/{name}" for name in shards])
                summary = tokenize_shards(inputs, encode, writer, processor, batch)
            writer.close()
            seconds = time.perf_counter() - start
        assert summary.encoded == n and not summary.errors, summary
    result = {"mode": mode, "n": n, "seconds": seconds, "images_per_s": n / seconds, "peak_rss_mb": peak_rss_mb()}
    return result if mode == "model" else {**result, "trace": trace}


def _run(mode: str, folder: str, n: int, args: argparse.Namespace, env: dict | None = None) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--folder", folder, "--n", str(n),
            "--preset", args.preset, "--size", str(args.size), "--batch", str(args.batch)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"{mode} (n={n}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {mode:<6} n={n:<5} {result['images_per_s']:7.3f} img/s  peak RSS {result['peak_rss_mb']:.0f} MB",
          file=sys.stderr, flush=True)  # fmt: skip
    return result


def _s3_server(folder: str):
    """A local S3 API server (moto) holding ``folder``'s tar shards as ``s3://bench/shards/``; the
    workers find it through ``AWS_ENDPOINT_URL``, as a user's job would."""
    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("bench")
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".tar")):
        fs.put_file(os.path.join(folder, name), f"bench/shards/{name}")
    return server


def _name_value(item: str) -> tuple:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise SystemExit(f"--memory-env: expected NAME=VALUE, got {item!r}")
    return name, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="f16-1024")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--n", type=int, default=64, help="images per throughput run")
    parser.add_argument("--rss-n", type=int, nargs="+", default=[64, 1024], help="N values for the memory runs")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (0: memory runs only)")
    parser.add_argument("--memory-env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="environment of the memory runs, e.g. MALLOC_ARENA_MAX=2")  # fmt: skip
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="the modes of the throughput rounds (model is always run)")  # fmt: skip
    parser.add_argument("--json", help="write the record here (needs a clean checkout)")
    parser.add_argument("--allow-dirty", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.folder, args.n, args.preset, args.size, args.batch)))
        return

    provenance.check_can_record(args.json, args.allow_dirty)
    memory_env = dict(_name_value(item) for item in args.memory_env)
    header = provenance.provenance(__file__)
    with tempfile.TemporaryDirectory() as work:
        folders = {n: os.path.join(work, f"n{n}") for n in {args.n, *args.rss_n}}  # a folder holds N photos
        for n, folder in folders.items():
            make_photos(folder, n)
        modes = ["model", *(m for m in MODES[1:] if m in args.modes)]
        server = _s3_server(folders[args.n]) if args.rounds and "s3" in modes else None
        rounds = [{mode: _run(mode, folders[args.n], args.n, args) for mode in modes} for _ in range(args.rounds)]
        memory = [_run("files", folders[n], n, args, memory_env) for n in args.rss_n]
        if server is not None:
            server.stop()
    ratios = {mode: [r[mode]["images_per_s"] / r["model"]["images_per_s"] for r in rounds] for mode in modes[1:]}
    ratios = {mode: v for mode, v in ratios.items() if v}
    record = {
        **header,
        "benchmark": "dataset_tokenization",
        "preset": args.preset,
        "size": args.size,
        "batch": args.batch,
        "n": args.n,
        "rounds": rounds,
        "ratio_to_model": {
            mode: {"min": min(v), "median": statistics.median(v), "max": max(v)} for mode, v in ratios.items()
        },
        "memory_env": memory_env,
        "memory": [{k: m[k] for k in ("n", "peak_rss_mb", "images_per_s", "trace")} for m in memory],
    }
    print(json.dumps(record["ratio_to_model"], indent=1))
    print("peak RSS by N:", {m["n"]: round(m["peak_rss_mb"]) for m in record["memory"]})
    if args.json:
        provenance.write_record(args.json, record)


if __name__ == "__main__":
    main()
