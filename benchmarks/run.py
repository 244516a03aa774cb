"""Encode/decode speed of vqgan-flax and of PyTorch taming, side by side on this machine.

    python benchmarks/run.py                      # f16-1024 at 256x256, batch 1 and 8, all systems
    python benchmarks/run.py --batch-sizes 1 --json results.json

Each measurement runs in its own process (JAX's thread pool slows PyTorch ~4x in one process),
and the systems alternate. Times are the median of --repeats calls after a warm-up call; the
warm-up (compile) time of our first call is reported separately. FLOPs come from XLA's cost
analysis of the compiled programs. The PyTorch side is taming-transformers' own Encoder/Decoder/
VectorQuantizer2 (the test extras), float32 NCHW, float32 channels_last and bf16 autocast.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEMS = ("jax-float32", "jax-bfloat16", "torch-float32", "torch-float32-channels_last", "torch-bfloat16")


def _timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker_jax(dtype_name, batch, size, preset, repeats):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vqgan_flax import FlaxVQGANModel, VQGANConfig

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
    config = VQGANConfig.from_preset(preset)
    model = FlaxVQGANModel(config, dtype=dtype, seed=0)
    params = model.params
    pixels = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32))
    encode = jax.jit(lambda p, x: model.encode(x, params=p).indices)
    decode = jax.jit(lambda p, i: model.decode_code(i, params=p))
    start = time.perf_counter()
    indices = encode(params, pixels).block_until_ready()
    compile_encode = time.perf_counter() - start
    start = time.perf_counter()
    decode(params, indices).block_until_ready()
    compile_decode = time.perf_counter() - start
    flops = [
        fn.lower(params, arg).compile().cost_analysis().get("flops", float("nan"))
        for fn, arg in ((encode, pixels), (decode, indices))
    ]
    return {
        "encode_s": _timed(lambda: encode(params, pixels).block_until_ready(), repeats),
        "decode_s": _timed(lambda: decode(params, indices).block_until_ready(), repeats),
        "first_call_s": compile_encode + compile_decode,
        "encode_gflop": flops[0] / 1e9,
        "decode_gflop": flops[1] / 1e9,
        "versions": {"jax": jax.__version__},
    }


def worker_torch(variant, batch, size, preset, repeats):
    import numpy as np
    import torch

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from taming_reference import TamingVQGAN, randomize_  # the test extras' reference assembly

    from vqgan_flax import VQGANConfig

    torch.set_num_threads(os.cpu_count())
    model = randomize_(TamingVQGAN(VQGANConfig.from_preset(preset)), seed=0)
    pixels = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32))
    if variant == "float32-channels_last":
        model = model.to(memory_format=torch.channels_last)
        pixels = pixels.to(memory_format=torch.channels_last)
    autocast = variant == "bfloat16"

    def encode():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model.quantize(model.quant_conv(model.encoder(pixels)))

    quant = encode()[0]

    def decode():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model.decode(quant)

    decode()
    return {
        "encode_s": _timed(encode, repeats),
        "decode_s": _timed(decode, repeats),
        "versions": {"torch": torch.__version__},
    }


def run_worker(args):
    system = args.worker
    if system.startswith("jax-"):
        result = worker_jax(system[4:], args.batch, args.size, args.preset, args.repeats)
    else:
        result = worker_torch(system[6:], args.batch, args.size, args.preset, args.repeats)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--preset", default="f16-1024")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)

    rows = []
    for batch in args.batch_sizes:
        for system in args.systems:  # alternating systems, each in a fresh process
            cmd = [sys.executable, __file__, "--worker", system, "--batch", str(batch), "--size", str(args.size),
                   "--preset", args.preset, "--repeats", str(args.repeats)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
            row = {"system": system, "batch": batch, **json.loads(out.strip().splitlines()[-1])}
            row["images_per_s"] = batch / (row["encode_s"] + row["decode_s"])
            if "encode_gflop" in row:
                row["gflop_per_s"] = (row["encode_gflop"] + row["decode_gflop"]) / (row["encode_s"] + row["decode_s"])
            rows.append(row)
            print(f"measured {system} batch {batch}", file=sys.stderr, flush=True)

    for row in rows:
        torch_rows = [r for r in rows if r["batch"] == row["batch"] and r["system"].startswith("torch-float32")]
        if torch_rows and row["system"].startswith("jax-"):
            best = min(r["encode_s"] + r["decode_s"] for r in torch_rows)
            row["speedup_vs_best_torch_float32"] = best / (row["encode_s"] + row["decode_s"])

    header = f"{'system':<30}{'batch':>6}{'encode s':>10}{'decode s':>10}{'img/s':>8}{'GFLOP/s':>9}{'vs torch':>9}"
    print(f"{header}{'1st call s':>11}{'peak RSS MB':>12}")
    for r in rows:
        gflops = f"{r['gflop_per_s']:.0f}" if "gflop_per_s" in r else "-"
        ratio = f"{r['speedup_vs_best_torch_float32']:.2f}x" if "speedup_vs_best_torch_float32" in r else "-"
        first = f"{r['first_call_s']:.1f}" if "first_call_s" in r else "-"
        print(f"{r['system']:<30}{r['batch']:>6}{r['encode_s']:>10.3f}{r['decode_s']:>10.3f}{r['images_per_s']:>8.2f}"
              f"{gflops:>9}{ratio:>9}{first:>11}{r['peak_rss_mb']:>12.0f}")  # fmt: skip
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "preset": args.preset,
        "image_size": args.size,
    }
    print(f"\n{meta['date']}, {meta['machine']}, {args.preset} at {args.size}x{args.size}, median of {args.repeats}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
