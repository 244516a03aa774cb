"""Encode/decode speed of vqgan-flax and of PyTorch taming, side by side on this machine.

    python benchmarks/run.py                      # f16-1024 at 256x256, batch 1 and 8, all systems
    python benchmarks/run.py --batch-sizes 1 --json results.json

Each measurement runs in its own process (JAX's thread pool slows PyTorch ~4x in one process),
and the systems alternate. Times are the median of --repeats calls after a warm-up call; the
warm-up (compile) time of our first call is reported separately. FLOPs come from XLA's cost
analysis of the compiled programs. The roofline is measured here too: the best FLOP/s that XLA
reaches on this device, in that dtype and batch, for a standalone 3x3 convolution of each of the
model's levels or for the same work as one im2col matmul. The PyTorch side is taming-transformers'
own Encoder/Decoder/VectorQuantizer2 (the test extras): float32 NCHW, float32 channels_last and
bf16 autocast. Where a GPU is present both sides use it (same command); nothing else changes.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
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


def _jax_device_info(jax):
    device = jax.devices()[0]
    info = {"device": "cpu" if device.platform == "cpu" else f"{device.platform}: {device.device_kind}"}
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        info["peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
    return info


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
    # What an eager model.encode(pixels) runs: one compiled program, micro-batched on CPU.
    micro = model.default_micro_batch_size(pixels)
    encode = jax.jit(lambda p, x: model.encode(x, params=p, micro_batch_size=micro).indices)
    decode = jax.jit(lambda p, i: model.decode_code(i, params=p, micro_batch_size=micro))
    measured, arg = {"micro_batch_size": micro}, pixels
    for name, fn in (("encode", encode), ("decode", decode)):
        start = time.perf_counter()
        lowered = fn.lower(params, arg)
        compiled = lowered.compile()
        measured[f"compile_{name}_s"] = time.perf_counter() - start  # trace + lower + XLA compile, cold
        compiled(params, arg).block_until_ready()
        measured[f"first_{name}_s"] = time.perf_counter() - start  # what a user's first call costs
        measured[f"{name}_s"] = _timed(lambda: compiled(params, arg).block_until_ready(), repeats)  # noqa: B023
        arg = compiled(params, arg)  # the encoder's tokens are the decoder's input
    return {
        **measured,
        **program_gflop(model, params, pixels),
        "versions": {"jax": jax.__version__},
        **_jax_device_info(jax),
    }


def program_gflop(model, params, pixels):
    """GFLOP of encode and decode_code for this batch, from XLA's cost analysis of the lowered
    (not yet optimised) whole-batch programs: a GPU's compiled cost analysis omits cuDNN calls, and
    a micro-batched program's loop body is counted once, not once per image."""
    import jax

    whole = len(pixels)  # a micro-batch as large as the batch: no loop
    encode = jax.jit(lambda p, x: model.encode(x, params=p, micro_batch_size=whole).indices)
    decode = jax.jit(lambda p, i: model.decode_code(i, params=p, micro_batch_size=whole))
    indices = jax.eval_shape(encode, params, pixels)
    return {
        "encode_gflop": encode.lower(params, pixels).cost_analysis()["flops"] / 1e9,
        "decode_gflop": decode.lower(params, indices).cost_analysis()["flops"] / 1e9,
    }


def worker_roofline(dtype_name, batch, size, preset, repeats):
    """Best FLOP/s of a lone 3x3 conv (or the same work as one matmul) over the model's levels, at
    this batch size and at batch 1 (the batch can be run one image at a time, as on CPU we do)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vqgan_flax import VQGANConfig

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
    config = VQGANConfig.from_preset(preset)
    conv = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=jnp.float32,
        )
    )  # fmt: skip
    matmul = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    rng = np.random.default_rng(0)
    best = {"roofline_gflop_per_s": 0.0}
    for (level, mult), images in itertools.product(enumerate(config.ch_mult), sorted({1, batch})):
        side, channels = size >> level, config.ch * mult
        flop = 2 * images * side * side * 9 * channels * channels
        x = jnp.asarray(rng.standard_normal((images, side, side, channels)), dtype)
        w = jnp.asarray(rng.standard_normal((3, 3, channels, channels)), dtype)
        a = jnp.asarray(rng.standard_normal((images * side * side, 9 * channels)), dtype)
        for name, fn, args in (("conv", conv, (x, w)), ("matmul", matmul, (a, w.reshape(-1, channels)))):
            fn(*args).block_until_ready()
            rate = flop / _timed(lambda: fn(*args).block_until_ready(), repeats) / 1e9  # noqa: B023
            if rate > best["roofline_gflop_per_s"]:
                best = {"roofline_gflop_per_s": rate, "roofline_op": f"{name} {images}x{side}x{side}x{channels}"}
        del x, w, a
    return {**best, "versions": {"jax": jax.__version__}}


def worker_torch(variant, batch, size, preset, repeats):
    import numpy as np
    import torch

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from taming_reference import TamingVQGAN, randomize_  # the test extras' reference assembly

    from vqgan_flax import VQGANConfig

    torch.use_deterministic_algorithms(False)  # the tests want determinism; a benchmark wants cuDNN's best
    torch.set_num_threads(os.cpu_count())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    model = randomize_(TamingVQGAN(VQGANConfig.from_preset(preset)), seed=0).to(device)
    pixels = np.random.default_rng(0).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    pixels = torch.from_numpy(pixels).to(device)
    if variant == "float32-channels_last":
        model = model.to(memory_format=torch.channels_last)
        pixels = pixels.to(memory_format=torch.channels_last)
    autocast = variant == "bfloat16"

    def synced(fn):
        def call():
            with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                out = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        return call

    encode = synced(lambda: model.quantize(model.quant_conv(model.encoder(pixels))))
    quant = encode()[0]
    decode = synced(lambda: model.decode(quant))
    decode()
    result = {
        "encode_s": _timed(encode, repeats),
        "decode_s": _timed(decode, repeats),
        "versions": {"torch": torch.__version__},
        "device": f"gpu: {torch.cuda.get_device_name()}" if device == "cuda" else "cpu",
    }
    if device == "cuda":
        result["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def peak_rss_mb():
    """This process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_in_fresh_process(script, worker_args, label):
    """Run ``script --worker ...`` in a new Python process; return the JSON object it prints last."""
    proc = subprocess.run([sys.executable, os.path.abspath(script), "--worker", *worker_args],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"benchmark worker {label} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_worker(args):
    system = args.worker
    if system.startswith("roofline-"):
        result = worker_roofline(system[9:], args.batch, args.size, args.preset, args.repeats)
    elif system.startswith("jax-"):
        result = worker_jax(system[4:], args.batch, args.size, args.preset, args.repeats)
    else:
        result = worker_torch(system[6:], args.batch, args.size, args.preset, args.repeats)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def _measure(system, batch, args):
    worker_args = [system, "--batch", str(batch), "--size", str(args.size), "--preset", args.preset,
                   "--repeats", str(args.repeats)]  # fmt: skip
    result = run_in_fresh_process(__file__, worker_args, f"{system} (batch {batch})")
    print(f"measured {system} batch {batch}", file=sys.stderr, flush=True)
    return result


def add_ratios(rows, rooflines):
    """Derived columns: images/s, GFLOP/s, % of roofline, speed-ups over the PyTorch rows."""
    for row in rows:
        total = row["encode_s"] + row["decode_s"]
        row["images_per_s"] = row["batch"] / total
        if "encode_gflop" in row:
            row["gflop_per_s"] = (row["encode_gflop"] + row["decode_gflop"]) / total
            roof = rooflines.get((row["system"].split("-", 1)[1], row["batch"]))
            if roof:
                row["roofline_gflop_per_s"] = roof["roofline_gflop_per_s"]
                row["roofline_op"] = roof["roofline_op"]
                row["percent_of_roofline"] = 100 * row["gflop_per_s"] / roof["roofline_gflop_per_s"]
    for row in rows:
        if not row["system"].startswith("jax-"):
            continue
        same_batch = [r for r in rows if r["batch"] == row["batch"]]
        pairs = (("speedup_vs_best_torch_float32", "torch-float32"), ("speedup_vs_torch_bfloat16", "torch-bfloat16"))
        for key, prefix in pairs:
            torch_rows = [r for r in same_batch if r["system"].startswith(prefix)]
            if torch_rows:
                row[key] = min(r["encode_s"] + r["decode_s"] for r in torch_rows) / (row["encode_s"] + row["decode_s"])
    return rows


def format_table(rows):
    """Markdown table of the rows (the README's performance section prints this)."""

    def fmt(row, key, spec, suffix=""):
        return f"{row[key]:{spec}}{suffix}" if key in row else "-"

    lines = [
        "| system | batch | encode s | decode s | images/s | GFLOP/s | % of roofline | vs torch f32 | vs torch bf16 "
        "| compile s (enc / dec) | first call s (enc / dec) | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        first = f"{r['first_encode_s']:.1f} / {r['first_decode_s']:.1f}" if "first_encode_s" in r else "-"
        compiled = f"{r['compile_encode_s']:.1f} / {r['compile_decode_s']:.1f}" if "compile_encode_s" in r else "-"
        lines.append(
            f"| {r['system']} | {r['batch']} | {r['encode_s']:.3f} | {r['decode_s']:.3f} | {r['images_per_s']:.2f} "
            f"| {fmt(r, 'gflop_per_s', '.0f')} | {fmt(r, 'percent_of_roofline', '.0f', '%')} "
            f"| {fmt(r, 'speedup_vs_best_torch_float32', '.2f', 'x')} "
            f"| {fmt(r, 'speedup_vs_torch_bfloat16', '.2f', 'x')} "
            f"| {compiled} | {first} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def machine_description():
    """CPU model, core count and the vector ISA extensions that decide conv/matmul speed."""
    cpu, isa = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        isa = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores" + (f" ({' '.join(isa)})" if isa else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--preset", default="f16-1024")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-roofline", action="store_true", help="skip the roofline measurement")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)

    rows, rooflines = [], {}
    for batch in args.batch_sizes:
        for system in args.systems:  # alternating systems, each in a fresh process
            rows.append({"system": system, "batch": batch, **_measure(system, batch, args)})
            write_json(args, rows, rooflines)  # what is measured survives a run that is cut short
        if not args.no_roofline:
            for dtype in sorted({s.split("-", 1)[1] for s in args.systems if s.startswith("jax-")}):
                rooflines[(dtype, batch)] = _measure(f"roofline-{dtype}", batch, args)
    add_ratios(rows, rooflines)
    meta = write_json(args, rows, rooflines)
    print(format_table(rows))
    print(f"\n{summary_line(meta)}")


def summary_line(meta):
    """Date, machine, devices, workload and versions of a run, in one line."""
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    size = meta["image_size"]
    return (f"{meta['date']}, {meta['machine']}, {', '.join(meta['devices'])}, {meta['preset']} at {size}x{size}, "
            f"median of {meta['repeats']}, {versions}")  # fmt: skip


def write_json(args, rows, rooflines):
    """Write the rows measured so far (when --json is given); return the run's metadata."""
    devices = sorted({r["device"] for r in rows})
    versions = {k: v for r in rows for k, v in r["versions"].items()}
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "devices": devices,
        "python": platform.python_version(),
        "versions": versions,
        "preset": args.preset,
        "image_size": args.size,
        "repeats": args.repeats,
    }
    if args.json:
        roofs = [{"dtype": d, "batch": b, **v} for (d, b), v in rooflines.items()]
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows, "rooflines": roofs}, f, indent=2)
    return meta


if __name__ == "__main__":
    main()
