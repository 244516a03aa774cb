"""Where the device time of one encode / decode goes, kernel by kernel, ours against PyTorch's.

    python benchmarks/kernel_trace.py --batch 16 --precision bfloat16 --json benchmarks/results/gpu_kernels.json

Ours: ``FlaxVQGANModel.encode`` / ``decode_code`` traced with ``jax.profiler`` (a Perfetto trace,
read back here); PyTorch: taming's modules (the test extras) in channels_last under ``torch.profiler``
(eager: the convolutions are the cuDNN calls ``torch.compile`` makes too; what inductor changes is
the normalisation and elementwise kernels between them). Each side is warmed up, then ``--repeats``
calls are traced; the record keeps device microseconds per call, by kernel and by class
(convolution, matmul, reduction fusion, elementwise fusion, copy/transpose, other). Made for a GPU
lease: one process, no compile cache, a couple of minutes. On a CPU the "kernels" are XLA's host ops.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import tempfile

from run import jax_calls, torch_calls

from vqgan_flax.evaluation import provenance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = (  # first match wins; names are cuDNN/cuBLAS kernels, XLA fusions, Triton/ATen kernels
    ("convolution", ("conv", "xmma", "implicit", "fprop", "dgrad", "winograd", "cudnn")),
    ("matmul", ("gemm", "cutlass", "matmul", "dot", "cublas")),
    ("copy/transpose", ("transpose", "copy", "memcpy", "memset", "pad", "concat")),
    ("reduction", ("reduce", "reduction", "norm", "welford", "softmax", "argmin")),
    ("elementwise", ("fusion", "elementwise", "vectorized", "triton", "loop", "add", "mul", "silu", "sigmoid")),
)


def kernel_class(name: str) -> str:
    lowered = name.lower()
    return next((label for label, keys in CLASSES if any(k in lowered for k in keys)), "other")


def summarize(durations: dict, calls: int, top: int = 25) -> dict:
    """Microseconds per call by class and for the ``top`` kernels (name → µs per call)."""
    classes = collections.Counter()
    for name, us in durations.items():
        classes[kernel_class(name)] += us / calls
    kernels = sorted(durations.items(), key=lambda item: -item[1])[:top]
    return {"total_us": sum(durations.values()) / calls, "classes": dict(classes.most_common()),
            "kernels": {name[:160]: us / calls for name, us in kernels}}  # fmt: skip


def _perfetto_device_time(folder: str) -> dict:
    """Kernel name → summed duration (µs) from jax.profiler's Perfetto trace: events of the GPU's
    process where there is one, else XLA's host ops (CPU)."""
    [path] = glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    devices = {pid for pid, name in names.items() if "gpu" in name.lower() or "device" in name.lower()}
    durations = collections.Counter()
    for e in events:
        if e.get("ph") != "X":
            continue
        on_device = (
            e["pid"] in devices if devices else not e["name"].startswith(("$", "Pjit", "PjRt", "Common", "Thunk"))
        )
        if on_device:
            durations[e["name"]] += e.get("dur", 0.0)
    return durations


def trace_jax(batch: int, size: int, preset: str, precision: str, repeats: int) -> dict:
    import jax

    _model, _pixels, encode, decode_indices = jax_calls(precision, batch, size, preset)
    indices = encode()
    decode = lambda: decode_indices(indices)  # noqa: E731
    out = {"device": str(jax.devices()[0].device_kind)}
    for part, fn in (("encode", encode), ("decode", decode)):
        fn(), fn()
        with tempfile.TemporaryDirectory() as folder:
            with jax.profiler.trace(folder, create_perfetto_trace=True):
                for _ in range(repeats):
                    fn()
            out[part] = summarize(_perfetto_device_time(folder), repeats)
    return out


def trace_torch(batch: int, size: int, preset: str, precision: str, repeats: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    system = f"torch-eager-{precision}-cl"  # channels_last, autocast in bf16; the whole batch at once
    device, _per_image, encode, decode_indices = torch_calls(system, batch, size, preset, tf32=False, per_image=False)
    indices = encode()
    decode = lambda: decode_indices(indices)  # noqa: E731
    activity = ProfilerActivity.CUDA if device == "cuda" else ProfilerActivity.CPU
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    for part, fn in (("encode", encode), ("decode", decode)):
        fn(), fn()
        with profile(activities=[activity]) as prof:
            for _ in range(repeats):
                fn()
        durations = collections.Counter()
        for event in prof.events():
            if device == "cuda" and event.device_type == torch.autograd.DeviceType.CUDA:
                durations[event.name] += event.device_time
            elif device == "cpu" and event.name.startswith("aten::") and not event.cpu_parent:
                durations[event.name] += event.cpu_time_total
        out[part] = summarize(durations, repeats)
    return out


def format_summary(record: dict) -> str:
    lines = []
    for side in ("jax", "torch"):
        if side not in record:
            continue
        for part in ("encode", "decode"):
            summary = record[side][part]
            classes = ", ".join(f"{k} {v / 1000:.2f}" for k, v in summary["classes"].items())
            lines.append(f"{side} {part}: {summary['total_us'] / 1000:.2f} ms of kernels per call ({classes})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--preset", default="f16-1024")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="trace ours only")
    parser.add_argument("--json", help="write the record here (needs a clean checkout)")
    parser.add_argument("--allow-dirty", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    provenance.check_can_record(args.json, args.allow_dirty)
    record = provenance.provenance(
        __file__,
        extra_harness=[
            os.path.join(ROOT, "vqgan_flax", "testing", "taming_reference.py"),
            os.path.join(ROOT, "benchmarks", "run.py"),
        ],
    )
    record.update(benchmark="kernel_trace", batch=args.batch, precision=args.precision, size=args.size,
                  preset=args.preset, repeats=args.repeats)  # fmt: skip
    record["jax"] = trace_jax(args.batch, args.size, args.preset, args.precision, args.repeats)
    if args.json:
        provenance.write_record(args.json, record)
    if not args.no_torch:
        record["torch"] = trace_torch(args.batch, args.size, args.preset, args.precision, args.repeats)
    if args.json:
        provenance.write_record(args.json, record)
    print(format_summary(record))


if __name__ == "__main__":
    main()
