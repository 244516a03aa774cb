"""Encode/decode speed of vqgan-flax against PyTorch as its users run it, side by side on this machine.

    python benchmarks/run.py                                    # f16-1024 at 256², batch 1 and 8, all systems, 3 rounds
    python benchmarks/run.py --systems jax-float32 torch-compile-float32 --batch-sizes 1
    python benchmarks/run.py --json benchmarks/results/cpu.json # from a clean checkout (see evaluation/provenance.py)

Systems, each measurement in a fresh process (JAX's thread pool slows PyTorch in one process):
  jax-float32, jax-bfloat16     ``FlaxVQGANModel.encode`` / ``decode_code`` as a user calls them
                                (on CPU: oneDNN convolutions, fused GroupNorm; the default where they build)
  jax-xla-float32, -bfloat16    the same with XLA's own ops (``VQGAN_FLAX_CPU_KERNELS=off``)
  torch-eager-float32           taming's Encoder / VectorQuantizer2 / Decoder (the test extras), NCHW
  torch-eager-float32-cl        the same in channels_last
  torch-eager-bfloat16          NCHW under ``torch.autocast(bfloat16)`` (GroupNorm stays float32, as ours)
  torch-eager-bfloat16-cl       channels_last under autocast
  torch-compile-float32         ``torch.compile`` (inductor) of the channels_last model
  torch-compile-bfloat16        ``torch.compile`` of the channels_last model under autocast
Decode is code indices → pixels on both sides (codebook lookup included).

Fairness: at batch > 1 both sides loop over single images where ours does (CPU, where a whole
batch's activations fall out of cache) and neither does elsewhere. On a GPU cuDNN's autotuner is
on and TF32 is off on both sides unless ``--tf32`` (then on for both). bf16 rows on a CPU
without bf16 units (avx512_bf16 / amx_bf16) are skipped and the record says so.

On a GPU the jax-xla-* rows are skipped (the CPU kernels are CPU-only, so jax-* already runs XLA's
ops there). ``--deadline-s`` stops starting measurements that would end past it (a device lease
is short): the record keeps every measurement made and says where it stopped.

Rounds: every round runs every (batch, system) once, systems alternating; a process compiles
(time recorded), warms up until three images have run, then times ``--repeats`` calls and
keeps the median. One inductor and one JAX compile cache serve the whole run, so round 0 pays the
cold compile and later rounds start warm; ``TORCHINDUCTOR_CACHE_DIR`` / ``JAX_COMPILATION_CACHE_DIR``
set by the caller are used instead (the record lists them). The record keeps every
round; ``report.py`` prints min / median / max over rounds and the ratios of ours to the fastest
PyTorch row of the same precision, batch and round, flagging a ratio whose range crosses 1.0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from typing import Optional

from harness import SYSTEMS, TORCH_SYSTEMS, compile_caches, precision, run_in_fresh_process, timed

from vqgan_flax.evaluation import provenance
from vqgan_flax.evaluation.provenance import peak_rss_mb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _measure_pair(encode, decode, repeats: int, batch: int) -> dict:
    """The first call (compilation) timed alone, then warm-up calls until three images have run
    (torch.compile's and oneDNN's second and third calls were still slower than eager in an earlier
    run of this harness), then ``repeats`` timed calls."""
    out = {"warmup_calls": max(1, math.ceil(3 / batch))}
    start = time.perf_counter()
    indices = encode()
    out["first_encode_s"] = time.perf_counter() - start
    start = time.perf_counter()
    decode(indices)
    out["first_decode_s"] = time.perf_counter() - start
    for _ in range(out["warmup_calls"] - 1):
        encode(), decode(indices)
    out["encode_s"] = timed(encode, repeats)
    out["decode_s"] = timed(lambda: decode(indices), repeats)
    return out


def jax_calls(precision: str, batch: int, size: int, preset: str) -> tuple:
    """Ours as a user calls it, on random weights and pixels: ``(model, pixels, encode, decode)``
    with ``encode() -> indices`` and ``decode(indices) -> pixels``, each blocking until done."""
    import jax.numpy as jnp
    import numpy as np

    from vqgan_flax import FlaxVQGANModel, VQGANConfig

    dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
    model = FlaxVQGANModel(VQGANConfig.from_preset(preset), dtype=dtype, seed=0)
    pixels = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32))
    grid = model.config.latent_shape(size, size)
    encode = lambda: model.encode(pixels).indices.block_until_ready()  # noqa: E731
    decode = lambda i: model.decode_code(i, latent_shape=grid).block_until_ready()  # noqa: E731
    return model, pixels, encode, decode


def torch_calls(system: str, batch: int, size: int, preset: str, tf32: bool, per_image: Optional[bool] = None) -> tuple:
    """taming's model (the test extras' reference assembly) as ``system`` runs it, on the same
    random weights and pixels: ``(device, per_image, encode, decode)`` with ``encode() -> indices
    (B, N)`` and ``decode(indices) -> pixels``, each synchronised. ``per_image`` defaults to the
    fairness rule of the module docstring (a per-image loop on CPU at batch > 1)."""
    import numpy as np
    import torch

    from vqgan_flax import VQGANConfig
    from vqgan_flax.testing.taming_reference import TamingVQGAN, randomize_  # needs the test extras

    compiled, channels_last, autocast = TORCH_SYSTEMS[system]
    torch.use_deterministic_algorithms(False)  # the tests want determinism; a benchmark wants the fastest kernels
    torch.set_num_threads(os.cpu_count())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    config = VQGANConfig.from_preset(preset)
    model = randomize_(TamingVQGAN(config), seed=0).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    pixels = np.random.default_rng(0).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    pixels = torch.from_numpy(pixels).to(device).contiguous(memory_format=memory_format)
    grid = config.latent_shape(size, size)
    per_image = device == "cpu" and batch > 1 if per_image is None else per_image

    def encode_fn(x):
        return model.quantize(model.quant_conv(model.encoder(x)))[2][2]

    def decode_fn(indices):
        quant = model.quantize.get_codebook_entry(indices.reshape(-1), (len(indices), *grid, config.embed_dim))
        return model.decode(quant.contiguous(memory_format=memory_format))

    if compiled:
        encode_fn, decode_fn = torch.compile(encode_fn), torch.compile(decode_fn)

    def run(fn, x):
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            out = torch.cat([fn(x[i : i + 1]) for i in range(len(x))]) if per_image else fn(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    encode = lambda: run(encode_fn, pixels).reshape(batch, -1)  # noqa: E731
    return device, per_image, encode, lambda indices: run(decode_fn, indices)


def worker_jax(system: str, batch: int, size: int, preset: str, repeats: int, tf32: bool) -> dict:
    import jax

    from vqgan_flax.kernels.cpu import KERNELS_ENV, kernel_backend

    if system.startswith("jax-xla-"):
        os.environ[KERNELS_ENV] = "off"
    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "highest")
    model, pixels, encode, decode = jax_calls(precision(system), batch, size, preset)
    result = _measure_pair(encode, decode, repeats, batch)
    device = jax.devices()[0]
    result["device"] = "cpu" if device.platform == "cpu" else f"gpu: {device.device_kind}"
    result["per_image_loop"] = model.default_micro_batch_size(pixels) == 1 and batch > 1
    result["kernels"] = kernel_backend() if device.platform == "cpu" else "xla"
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        result["peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
    return result


def worker_torch(system: str, batch: int, size: int, preset: str, repeats: int, tf32: bool) -> dict:
    import torch

    device, per_image, encode, decode = torch_calls(system, batch, size, preset, tf32)
    result = _measure_pair(encode, decode, repeats, batch)
    result["device"] = f"gpu: {torch.cuda.get_device_name()}" if device == "cuda" else "cpu"
    result["per_image_loop"] = per_image
    if device == "cuda":
        result["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--preset", default="f16-1024")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process (median kept)")
    parser.add_argument("--tf32", action="store_true", help="GPU: TF32 for float32 convs/matmuls on both sides")
    parser.add_argument(
        "--deadline-s",
        type=float,
        help="start no measurement predicted to end after this many "
        "seconds (prediction: the fastest earlier run of that system and batch)",
    )
    parser.add_argument("--json", help="write the record here (needs a clean checkout)")
    parser.add_argument("--allow-dirty", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker = worker_jax if args.worker.startswith("jax-") else worker_torch
        result = worker(args.worker, args.batch, args.size, args.preset, args.repeats, args.tf32)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return
    provenance.check_can_record(args.json, args.allow_dirty)
    record = provenance.provenance(
        __file__, extra_harness=[os.path.join(ROOT, "vqgan_flax", "testing", "taming_reference.py")]
    )
    gpu = record["gpu"] is not None
    skipped = {}
    if not gpu and not provenance.cpu_has_bf16_units(record["cpu"]):
        skipped = {s: "this CPU has no bf16 units (avx512_bf16 / amx_bf16)" for s in args.systems if "bfloat16" in s}
    if gpu:
        skipped.update({s: "the CPU kernels are CPU-only: on a GPU jax-* runs XLA's ops already"
                        for s in args.systems if s.startswith("jax-xla-")})  # fmt: skip
    systems = [s for s in args.systems if s not in skipped]
    record.update(benchmark="speed", preset=args.preset, size=args.size, repeats=args.repeats, rounds=args.rounds,
                  tf32=args.tf32 if gpu else None, skipped=skipped, failed={}, measurements=[])  # fmt: skip
    started, process_s = time.perf_counter(), {}
    # One compile cache per side for the whole run: round 0 pays the cold compile, later rounds
    # start warm (both recorded: first_*_s per round).
    with tempfile.TemporaryDirectory() as cache:
        env, record["compile_caches_inherited"] = compile_caches(cache)
        for round_index, batch, system in ((r, b, s) for r in range(args.rounds) for b in args.batch_sizes
                                           for s in systems):  # fmt: skip
            if f"{system} batch {batch}" in record["failed"]:
                continue
            predicted = process_s.get((system, batch), 0.0)
            if args.deadline_s and time.perf_counter() - started + predicted > args.deadline_s:
                record["stopped"] = (f"--deadline-s {args.deadline_s:g}: stopped before round {round_index} "
                                     f"batch {batch} {system} (predicted to take {predicted:.0f} s)")  # fmt: skip
                print(record["stopped"], file=sys.stderr)
                break
            process_start = time.perf_counter()
            worker_args = [system, "--batch", str(batch), "--size", str(args.size), "--preset", args.preset,
                           "--repeats", str(args.repeats), *(["--tf32"] if args.tf32 else [])]  # fmt: skip
            try:
                row = run_in_fresh_process(__file__, worker_args, f"{system} batch {batch}", env)
            except SystemExit as error:  # one broken system (a compiler crash, out of memory) ends only its rows
                print(error, file=sys.stderr, flush=True)
                record["failed"][f"{system} batch {batch}"] = (
                    f"round {round_index}: {str(error).strip().splitlines()[-1]}"
                )
                if args.json:
                    provenance.write_record(args.json, record)
                continue
            wall = time.perf_counter() - process_start
            process_s[(system, batch)] = min(wall, process_s.get((system, batch), wall))
            record["measurements"].append({"round": round_index, "system": system, "batch": batch, **row,
                                           "process_s": wall})  # fmt: skip
            total = row["encode_s"] + row["decode_s"]
            print(
                f"round {round_index} batch {batch} {system:<26} encode {row['encode_s']:.3f} s  decode "
                f"{row['decode_s']:.3f} s  {batch / total:.3f} img/s",
                file=sys.stderr,
                flush=True,
            )
            if args.json:  # what is measured survives a run that is cut short
                provenance.write_record(args.json, record)
    if args.json:
        provenance.write_record(args.json, record)
    from report import speed_table

    print(speed_table(record))


if __name__ == "__main__":
    main()
