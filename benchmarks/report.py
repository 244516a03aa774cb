"""The README's performance section, generated from the benchmark results in benchmarks/results/.

    python benchmarks/run.py --json benchmarks/results/cpu.json          # speed (this machine)
    python benchmarks/memory.py --json benchmarks/results/memory.json    # memory
    python benchmarks/bf16_agreement.py --json benchmarks/results/bf16_agreement.json
    python benchmarks/report.py --write-readme                           # README.md section

``benchmarks/results/gpu-h200.json`` came from ``run.py`` on a lent H200. The verdicts (met or
not) are computed from the numbers; the explanations of the gaps are the profiling findings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from memory import format_table as memory_table  # noqa: E402
from run import format_table, summary_line  # noqa: E402

RESULTS = os.path.join(HERE, "results")
README = os.path.join(os.path.dirname(HERE), "README.md")
START, END = "<!-- performance:start -->", "<!-- performance:end -->"


def _load(name):
    with open(os.path.join(RESULTS, name)) as f:
        return json.load(f)


def _row(rows, system, batch):
    return next(r for r in rows if r["system"] == system and r["batch"] == batch)


def _verdict(ok):
    return "**met**" if ok else "**not met**"


def targets(cpu, gpu, memory, agreement):
    """One line per target of the performance issue: the measurement and whether it is met."""
    rows, gpu_rows = cpu["rows"], gpu["rows"]
    batches = sorted({r["batch"] for r in rows})
    f32 = {b: _row(rows, "jax-float32", b) for b in batches}
    bf16 = {b: _row(rows, "jax-bfloat16", b) for b in batches}
    speedups = ", ".join(f"{f32[b]['speedup_vs_best_torch_float32']:.2f}x at batch {b}" for b in batches)
    roof = ", ".join(f"{f32[b]['percent_of_roofline']:.0f}% at batch {b}" for b in batches)
    bf16_gain = {b: f32[b]["encode_s"] + f32[b]["decode_s"] for b in batches}
    bf16_gain = {b: bf16_gain[b] / (bf16[b]["encode_s"] + bf16[b]["decode_s"]) for b in batches}
    torch_bf16 = {b: 1 / bf16[b]["speedup_vs_torch_bfloat16"] for b in batches}
    g32, g16 = _row(gpu_rows, "jax-float32", 16), _row(gpu_rows, "jax-bfloat16", 16)
    gpu_bf16_gain = g16["images_per_s"] / g32["images_per_s"]
    first = f32[1]
    compile_max = max(first["compile_encode_s"], first["compile_decode_s"])
    decode = next(r for r in memory if r["case"].startswith("decode"))
    encodes = [r for r in memory if r["case"].startswith("encode")]
    enc_rss = [r["peak_rss_mb"] for r in encodes]
    encode_rss = [f"{r['case'].split()[1]} images {r['peak_rss_mb']:.0f} MB" for r in encodes]
    worst_agreement = min(r["agreement"] for r in agreement)
    agree_text = "; ".join(f"{r['model']}: {100 * r['agreement']:.1f}% of {r['tokens']} tokens" for r in agreement)
    cpu_conv = {r["dtype"]: r for r in cpu["rooflines"] if r["batch"] == 1}
    lines = [
        f"- float32 ≥ 1.25× PyTorch (CPU, batch {' and '.join(map(str, batches))}): {speedups} — "
        f"{_verdict(all(f32[b]['speedup_vs_best_torch_float32'] >= 1.25 for b in batches))}. "
        "A profile (`jax.profiler` trace of encode and decode) puts 83–86% of the time in XLA's "
        "convolution kernels, which already run at the conv roofline measured beside them; the rest is "
        "GroupNorm + swish, memory-bound (a one-pass variance saved 2%, inside the noise, and was not "
        "kept). PyTorch's oneDNN kernels sit at the same FMA limit, so only fewer FLOPs could open a "
        "25% lead: a Winograd F(2,3) convolution written in XLA was 1.2–4.9x slower than the direct "
        "convolution at the model's shapes (XLA ran the 16 batched small-K matmuls at ~84 GFLOP/s; "
        "the tile transforms are memory-bound), and folding nearest-upsample + 3x3 conv into four 2x2 "
        "sub-pixel convs (2.25x fewer FLOPs, within 7e-6) was 1.2x faster on the two largest upsample "
        "convs but slower on the small ones, about 3% of a decode: not kept. What the profile did pay "
        "for: at batch 8 every image's activations fell out of cache (0.32 images/s vs 0.36 at batch "
        "1), so eager CPU calls now loop over single images inside one compiled program (0.38 images/s "
        f"at batch 8). On the H200 the same code is {g32['speedup_vs_best_torch_float32']:.2f}x PyTorch "
        "float32 at batch 16.",
        f"- ≥ 85% of the measured conv roofline (float32, CPU): {roof} — "
        f"{_verdict(all(f32[b]['percent_of_roofline'] >= 85 for b in batches))}. The roofline is the "
        f"best of a lone 3x3 conv and the same work as one matmul at each model level "
        f"({cpu_conv['float32']['roofline_gflop_per_s']:.0f} GFLOP/s, {cpu_conv['float32']['roofline_op']}, "
        "batch 1); the gap is the GroupNorm/swish/attention passes and the small low-resolution convs.",
        f"- bf16 ≥ 1.5× our float32: CPU {', '.join(f'{bf16_gain[b]:.2f}x at batch {b}' for b in batches)} — "
        f"{_verdict(all(v >= 1.5 for v in bf16_gain.values()))}; H200 {gpu_bf16_gain:.2f}x at batch 16 — "
        f"{_verdict(gpu_bf16_gain >= 1.5)}. XLA's CPU bf16 convolution is no faster than its float32 one "
        f"(harness roofline: bf16 {cpu_conv['bfloat16']['roofline_gflop_per_s']:.0f} GFLOP/s via "
        f"{cpu_conv['bfloat16']['roofline_op'].split()[0]} vs float32 "
        f"{cpu_conv['float32']['roofline_gflop_per_s']:.0f}); convolutions rewritten as bf16 matmuls "
        "(im2col, whole or in row strips) won at 64x64 pixels and below (up to 1.9x), broke even at "
        "128x128 and lost at 256x256, which holds over half of the encoder's FLOPs. "
        "Gap to PyTorch bf16 (oneDNN, avx512_bf16) on this CPU: PyTorch is "
        f"{', '.join(f'{torch_bf16[b]:.2f}x' for b in batches)} faster (batch {' and '.join(map(str, batches))}); "
        f"on the H200 we are {g16['speedup_vs_torch_bfloat16']:.2f}x faster than PyTorch bf16 autocast.",
        f"- bf16 tokens equal float32's on ≥ 99%: {agree_text} — {_verdict(worst_agreement >= 0.99)}. "
        "Flips are near-ties: on the default model bf16 moves the latents by 0.2% (median, relative), and "
        "a flipped token's two codes differ in squared distance by 5% (median) against 58% for tokens "
        "in general. Keeping the encoder's last conv and quant_conv in float32 raised agreement from 93% "
        "to 95%; bf16 stays opt-in (`--dtype bfloat16`, the fast path on GPUs), float32 the default.",
        f"- cold compile < 3 s (batch 1, 256²): encode {first['compile_encode_s']:.1f} s, decode "
        f"{first['compile_decode_s']:.1f} s (trace + lower + XLA compile, no cache) — "
        f"{_verdict(compile_max < 3)}; the first call including its run takes {first['first_encode_s']:.1f} / "
        f"{first['first_decode_s']:.1f} s. The CLI keeps a persistent compilation cache, so a second "
        "process skips compilation.",
        f"- 1024×1024 decode < 6 GB: {decode['peak_rss_mb']:.0f} MB peak RSS ({decode['seconds']:.0f} s) — "
        f"{_verdict(decode['peak_rss_mb'] < 6144)}, decoded whole (exact, no tiles, no seams).",
        f"- streaming encode, memory independent of N: "
        f"{', '.join(encode_rss)} — "
        f"{_verdict(max(enc_rss) < 1.1 * min(enc_rss))}.",
        f"- the same harness on a GPU: ran unchanged on an H200 — **met**; {g32['images_per_s']:.0f} / "
        f"{g16['images_per_s']:.0f} images/s (ours float32 / bf16) vs "
        f"{_row(gpu_rows, 'torch-float32', 16)['images_per_s']:.0f} / "
        f"{_row(gpu_rows, 'torch-bfloat16', 16)['images_per_s']:.0f} (PyTorch), batch 16.",
    ]
    return lines


def section():
    cpu, gpu = _load("cpu.json"), _load("gpu-h200.json")
    memory, agreement = _load("memory.json"), _load("bf16_agreement.json")
    parts = [
        START,
        "## Performance",
        "",
        "Generated by `python benchmarks/report.py --write-readme` from `benchmarks/results/*.json`, "
        "which `benchmarks/run.py`, `memory.py` and `bf16_agreement.py` wrote (see their docstrings). "
        "taming's f16 ImageNet architecture (f16-1024) with random weights at 256×256; each system in "
        "its own process, systems alternating; times are medians; GFLOP from XLA's cost analysis; "
        "'% of roofline' against the best lone conv/matmul rate the harness measured beside it; ratios "
        "are against the best PyTorch float32 row (NCHW or channels_last) and PyTorch bf16 autocast "
        "of the same batch.",
        "",
        f"**CPU** — {summary_line(cpu['meta'])}:",
        "",
        format_table(cpu["rows"]),
        "",
        f"**GPU** — {summary_line(gpu['meta'])}. {gpu['meta'].get('note', '')} On the GPU the lone-op "
        "'roofline' is not a ceiling (our fused bf16 program beats it); PyTorch and JAX both use TF32 "
        "for float32 convolutions there by default.",
        "",
        format_table(gpu["rows"]),
        "",
        "**Memory** (`benchmarks/memory.py`, peak RSS of a fresh process, model load included):",
        "",
        memory_table(memory),
        "",
        "**Targets**",
        "",
        *targets(cpu, gpu, memory, agreement),
        END,
    ]
    return "\n".join(parts)


def write_readme(text):
    with open(README) as f:
        readme = f.read()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"{README}: no {START} ... {END} markers to replace")
    with open(README, "w") as f:
        f.write(pattern.sub(lambda _: text, readme))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-readme", action="store_true", help=f"replace the section in {README}")
    args = parser.parse_args()
    text = section()
    if args.write_readme:
        write_readme(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
