"""Where the time goes, per op class, in our encoder/decoder and in PyTorch's, at the model's shapes.

    python benchmarks/op_profile.py                       # f16-1024 at 256², batch 1, float32
    python benchmarks/op_profile.py --json benchmarks/results/op_profile.json
    python benchmarks/op_profile.py --precision bfloat16 --json benchmarks/results/op_profile_bf16.json

The model's convolutions and GroupNorms are listed by running ``encode`` and ``decode_code`` once
under ``flax.linen.intercept_methods`` (every ``blocks.Conv`` and ``blocks.GroupNorm`` call with its
input shape). Each distinct op is then timed alone, in its own process per framework: ours as
the model's own jitted blocks (``blocks._conv``, ``blocks.GroupNorm`` with swish: on CPU the
kernels of ``vqgan_flax/kernels/cpu.py`` unless ``VQGAN_FLAX_CPU_KERNELS=off``) on NHWC;
PyTorch's as ``Conv2d`` on a channels_last tensor (``torch.compile`` hands a lone convolution to
the same oneDNN kernel) and ``torch.compile``-d ``GroupNorm`` + SiLU (where inductor fuses), under
``torch.autocast(bfloat16)`` for ``--precision bfloat16`` (ours: bf16 operands, float32 norms).
Per class, the time of one encode or decode is the sum over its ops of count × median time;
"rest" is the whole call measured beside it (``run.py``'s way) minus the classes: attention
matmuls and softmax, upsampling copies, the quantizer, fusion boundaries. GroupNorms not
followed by swish (attention's) are timed with it, on both sides.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

from harness import compile_caches, run_in_fresh_process, timed

from vqgan_flax.evaluation import provenance

HERE = os.path.dirname(os.path.abspath(__file__))


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: compilation
    return timed(fn, repeats)


def op_census(preset: str, size: int) -> dict:
    """{"encode"|"decode": {op key: count}}; an op key is (kind, H, W, C_in, C_out, kernel, stride)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from vqgan_flax import FlaxVQGANModel, VQGANConfig
    from vqgan_flax.models.blocks import Conv, GroupNorm, UpsampleConv

    model = FlaxVQGANModel(VQGANConfig.from_preset(preset), seed=0)
    census = {}

    def record(counts):
        def interceptor(next_fun, args, kwargs, context):
            module = context.module
            if context.method_name == "__call__" and isinstance(module, (nn.Conv, Conv, GroupNorm, UpsampleConv)):
                _, h, w, c = args[0].shape
                if isinstance(module, UpsampleConv):  # h, w: before upsampling
                    key = ("upconv", h, w, c, module.features, 3, 1)
                elif isinstance(module, (nn.Conv, Conv)):
                    strides = module.strides or 1
                    stride = strides if isinstance(strides, int) else strides[0]
                    # A stride-2 conv pads bottom/right by one (blocks.Downsample; taming: F.pad first).
                    size = module.kernel_size
                    key = ("conv", h, w, c, module.features, size if isinstance(size, int) else size[0], stride)
                else:
                    key = ("groupnorm+swish", h, w, c, c, 0, 0)
                counts[key] += 1
            return next_fun(*args, **kwargs)

        return interceptor

    pixels = jnp.zeros((1, size, size, 3))
    variables = {"params": model.params}
    for call in ("encode", "decode"):
        counts = collections.Counter()
        with nn.intercept_methods(record(counts)):
            if call == "encode":
                indices = jax.eval_shape(
                    lambda p, x: model.module.apply(p, x, method="encode").indices, variables, pixels
                )
            else:
                grid = model.config.latent_shape(size, size)
                decode = lambda p, i, g=grid: model.module.apply(p, i, g, method="decode_code")  # noqa: E731
                jax.eval_shape(decode, variables, jnp.zeros(indices.shape, jnp.int32))
        census[call] = counts
    return census


def time_ops_jax(ops: list, repeats: int, precision: str) -> list:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vqgan_flax.models.blocks import GroupNorm, UpsampleConv, _conv

    dtype = jnp.dtype(precision)
    seconds = []
    for kind, h, w, c_in, c_out, kernel, stride in ops:
        x = jnp.asarray(np.random.default_rng(0).standard_normal((1, h, w, c_in)), dtype)
        if kind == "conv":
            pad = ((0, 1), (0, 1)) if stride == 2 else ((kernel // 2, kernel // 2),) * 2
            module = _conv(c_out, kernel, dtype=dtype, param_dtype=jnp.float32, strides=(stride, stride), padding=pad)
            params = module.init(jax.random.key(0), x)
            fn = jax.jit(lambda p, x, m=module: m.apply(p, x))
        elif kind == "upconv":
            module = UpsampleConv(c_out, dtype=dtype)
            params = module.init(jax.random.key(0), x)
            fn = jax.jit(lambda p, x, m=module: m.apply(p, x))
        else:
            module = GroupNorm()
            params = module.init(jax.random.key(0), x)
            fn = jax.jit(lambda p, x, m=module: m.apply(p, x, out_dtype=dtype, swish=True))
        seconds.append(_median_seconds(lambda: fn(params, x).block_until_ready(), repeats))  # noqa: B023
    return seconds


def time_ops_torch(ops: list, repeats: int, precision: str) -> list:
    import torch

    torch.set_num_threads(os.cpu_count())
    seconds = []
    with torch.no_grad():
        for kind, h, w, c_in, c_out, kernel, stride in ops:
            x = torch.randn(1, c_in, h, w).contiguous(memory_format=torch.channels_last)
            if kind == "conv":
                pad = 0 if stride == 2 else kernel // 2
                op = torch.nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=pad)
                op = op.to(memory_format=torch.channels_last)
                if stride == 2:  # taming's Downsample: F.pad(x, (0, 1, 0, 1)), then the conv
                    op = lambda x, conv=op: conv(torch.nn.functional.pad(x, (0, 1, 0, 1)))  # noqa: E731
            elif kind == "upconv":  # taming's Upsample: interpolate(nearest, x2), then the conv
                conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1).to(memory_format=torch.channels_last)
                op = lambda x, conv=conv: conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))  # noqa: E731
            else:
                norm = torch.nn.GroupNorm(32, c_in, eps=1e-6)
                op = torch.compile(lambda x, norm=norm: torch.nn.functional.silu(norm(x)))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                seconds.append(_median_seconds(lambda op=op, x=x: op(x), repeats))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="f16-1024")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--json", help="write the record here (needs a clean checkout)")
    parser.add_argument("--allow-dirty", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--worker", choices=("census", "jax", "torch", "whole-jax", "whole-torch"), help=argparse.SUPPRESS
    )
    parser.add_argument("--ops", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "census":
        census = op_census(args.preset, args.size)
        print(json.dumps({call: [[list(k), n] for k, n in counts.items()] for call, counts in census.items()}))
        return
    if args.worker in ("jax", "torch"):
        ops = [tuple(op) for op in json.loads(args.ops)]
        timer = time_ops_jax if args.worker == "jax" else time_ops_torch
        print(json.dumps(timer(ops, args.repeats, args.precision)))
        return

    provenance.check_can_record(args.json, args.allow_dirty)
    record = {**provenance.provenance(__file__, extra_harness=[os.path.join(HERE, "run.py")]),
              "benchmark": "op_profile", "preset": args.preset, "size": args.size, "repeats": args.repeats,
              "precision": args.precision}  # fmt: skip
    common = ["--preset", args.preset, "--size", str(args.size), "--repeats", str(args.repeats)]
    timings, whole = {}, {}
    ours, theirs = f"jax-{args.precision}", f"torch-compile-{args.precision}"
    # Compilation is excluded from every time (a warm-up call first), so a cache changes none of
    # them; it only spares a second compile of what run.py's workers compiled before.
    with tempfile.TemporaryDirectory() as cache:
        env, record["compile_caches_inherited"] = compile_caches(cache)
        census = run_in_fresh_process(__file__, ["census", *common], "census", env)
        ops = sorted({tuple(op) for counts in census.values() for op, _ in counts})
        for framework in ("jax", "torch"):
            worker = [framework, *common, "--precision", args.precision, "--ops", json.dumps(ops)]
            found = run_in_fresh_process(__file__, worker, f"{framework} ops", env)
            timings[framework] = dict(zip(ops, found))
        # The whole calls, batch 1, for the "rest": run.py's workers (ours; torch.compile channels_last).
        for system in (ours, theirs):
            row = run_in_fresh_process(os.path.join(HERE, "run.py"), [system, "--batch", "1", *common], system, env)
            whole[system] = {"encode": row["encode_s"], "decode": row["decode_s"]}
            record[f"{system}_kernels"] = row.get("kernels")
    classes = []
    for call in ("encode", "decode"):
        totals = collections.defaultdict(lambda: {"count": 0, "jax_s": 0.0, "torch_s": 0.0})
        for op, count in census[call]:
            op = tuple(op)
            name = {"conv": f"conv{op[5]}x{op[5]}" + (" stride 2" if op[6] == 2 else ""),
                    "upconv": "upsample+conv3x3"}.get(op[0], op[0])  # fmt: skip
            totals[name]["count"] += count
            totals[name]["jax_s"] += count * timings["jax"][op]
            totals[name]["torch_s"] += count * timings["torch"][op]
        ours_s, theirs_s = whole[ours][call], whole[theirs][call]
        totals["rest"] = {"count": None, "jax_s": ours_s - sum(t["jax_s"] for t in totals.values()),
                          "torch_s": theirs_s - sum(t["torch_s"] for t in totals.values())}  # fmt: skip
        totals["whole call"] = {"count": None, "jax_s": ours_s, "torch_s": theirs_s}
        classes += [{"call": call, "class": name, **values} for name, values in totals.items()]
    record.update(ops=[{"op": list(op), "jax_s": timings["jax"][op], "torch_s": timings["torch"][op]} for op in ops],
                  census={call: [[list(op), n] for op, n in counts] for call, counts in census.items()},
                  classes=classes)  # fmt: skip
    print(format_table(record))
    if args.json:
        provenance.write_record(args.json, record)


def format_table(record: dict) -> str:
    lines = ["| call | op class | count | ours ms | torch ms | ours − torch ms |", "|---|---|---:|---:|---:|---:|"]
    for c in record["classes"]:
        count = "" if c["count"] is None else str(c["count"])
        lines.append(f"| {c['call']} | {c['class']} | {count} | {1e3 * c['jax_s']:.0f} | {1e3 * c['torch_s']:.0f} "
                     f"| {1e3 * (c['jax_s'] - c['torch_s']):+.0f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
