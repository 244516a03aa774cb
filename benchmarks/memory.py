"""Peak memory of large decodes and of streaming encodes, each measured in its own process.

    python benchmarks/memory.py [--json memory.json]

1. Decoding one 1024x1024 image (64x64 tokens) with the f16-1024 architecture (random weights),
   in one piece: exact, no tiles, no seams.
2. ``vqgan-flax encode`` over N copies of the bundled photographs, N = 8 and 64, batch size 8:
   pixels are loaded one batch at a time, so peak memory should not grow with N (only the
   N x h x w int32 token array does, 1 KiB per 256x256 image with the default model).
Peak RSS is the process's ru_maxrss, model loading included.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import peak_rss_mb, run_in_fresh_process  # noqa: E402


def worker_decode(tokens_side: int) -> dict:
    import jax.numpy as jnp
    import numpy as np

    from vqgan_flax import FlaxVQGANModel, VQGANConfig

    model = FlaxVQGANModel(VQGANConfig.from_preset("f16-1024"), seed=0)
    after_load = peak_rss_mb()
    tokens = np.random.default_rng(0).integers(0, model.config.n_embed, (1, tokens_side, tokens_side))
    start = time.perf_counter()
    pixels = model.decode_code(jnp.asarray(tokens, jnp.int32)).block_until_ready()
    return {
        "case": f"decode {pixels.shape[1]}x{pixels.shape[2]} (f16-1024, {tokens_side}x{tokens_side} tokens)",
        "seconds": time.perf_counter() - start,
        "peak_rss_mb_after_load": after_load,
    }


def worker_encode(count: int) -> dict:
    from vqgan_flax.cli import main

    with tempfile.TemporaryDirectory() as folder:
        sources = sorted(os.listdir(os.path.join(ROOT, "examples", "images")))
        for i in range(count):
            name = sources[i % len(sources)]
            shutil.copy(os.path.join(ROOT, "examples", "images", name), os.path.join(folder, f"{i:04d}_{name}"))
        start = time.perf_counter()
        out = os.path.join(folder, "tokens.npz")
        code = main(["encode", folder, "--quiet", "--batch-size", "8", "--size", "256", "--out", out])
        if code:
            raise SystemExit(f"vqgan-flax encode failed with status {code}")
        return {"case": f"encode {count} images at 256x256 (default model, batch 8)",
                "seconds": time.perf_counter() - start}  # fmt: skip


def measure(case: str, value: int) -> dict:
    return run_in_fresh_process(__file__, [case, "--value", str(value)], f"memory {case} {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decode-tokens", type=int, default=64, help="token grid side of the large decode")
    parser.add_argument("--encode-counts", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--value", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker_decode(args.value) if args.worker == "decode" else worker_encode(args.value)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return
    rows = [measure("decode", args.decode_tokens)] + [measure("encode", n) for n in args.encode_counts]
    print(format_table(rows))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))


def format_table(rows: list) -> str:
    """Markdown table of the measurements (the README's performance section prints this)."""
    lines = ["| case | seconds | peak RSS MB |", "|---|---:|---:|"]
    return "\n".join(lines + [f"| {r['case']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |" for r in rows])


if __name__ == "__main__":
    main()
