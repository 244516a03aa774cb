"""Peak memory of large decodes and of streaming encodes, each measured in its own process.

    python benchmarks/memory.py [--json memory.json]

1. Decoding one 1024x1024 image (64x64 tokens) with the f16-1024 architecture (random weights),
   in one piece: exact, no tiles, no seams.
2. ``vqgan-flax encode`` over N copies of the bundled photographs, N = 8 and 512, batch size 8,
   JAX's persistent compilation cache off (a cache hit in one run and a miss in the other would
   move peak RSS by more than the effect measured): pixels are loaded one batch at a time, so
   peak memory should not grow with N; only the tokens do (1 KiB per 256x256 image with the
   default model, 0.001 MB). The record gives the growth in MB per extra image; an encoder that
   held the pixels (0.75 MB per image in float32) shows ~0.75.
Peak RSS is the process's ru_maxrss, model loading included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from harness import run_in_fresh_process

from vqgan_flax.evaluation import provenance
from vqgan_flax.evaluation.provenance import peak_rss_mb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        return {"case": f"encode {count} images at 256x256 (default model, batch 8)", "images": count,
                "seconds": time.perf_counter() - start}  # fmt: skip


def measure(case: str, value: int) -> dict:
    env = {**os.environ, "VQGAN_FLAX_CACHE_DIR": ""}  # compile in every process (see the docstring)
    return run_in_fresh_process(__file__, [case, "--value", str(value)], f"memory {case} {value}", env)


def streaming(rows: list) -> dict:
    """Peak-RSS growth per extra image between the smallest and the largest encode."""
    encodes = sorted((r for r in rows if r["case"].startswith("encode")), key=lambda r: r["images"])
    low, high = encodes[0], encodes[-1]
    growth = (high["peak_rss_mb"] - low["peak_rss_mb"]) / (high["images"] - low["images"])
    return {"from_images": low["images"], "to_images": high["images"], "mb_per_extra_image": growth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decode-tokens", type=int, default=64, help="token grid side of the large decode")
    parser.add_argument("--encode-counts", type=int, nargs="+", default=[8, 512])
    parser.add_argument("--json", help="write the record here (needs a clean checkout)")
    parser.add_argument("--allow-dirty", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--value", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker_decode(args.value) if args.worker == "decode" else worker_encode(args.value)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return
    if len(args.encode_counts) < 2:
        parser.error("--encode-counts needs two or more counts (the growth between them is the result)")
    provenance.check_can_record(args.json, args.allow_dirty)
    record = {**provenance.provenance(__file__), "benchmark": "memory"}
    rows = [measure("decode", args.decode_tokens)] + [measure("encode", n) for n in args.encode_counts]
    record.update(rows=rows, streaming=streaming(rows))
    print(format_table(rows))
    print(f"streaming encode: {record['streaming']['mb_per_extra_image']:.4f} MB per extra image")
    if args.json:
        provenance.write_record(args.json, record)


def format_table(rows: list) -> str:
    """Markdown table of the measurements (the README's performance section prints this)."""
    lines = ["| case | seconds | peak RSS MB |", "|---|---:|---:|"]
    return "\n".join(lines + [f"| {r['case']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |" for r in rows])


if __name__ == "__main__":
    main()
