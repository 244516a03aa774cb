"""Do the tests that guard the performance and precision claims fail when the code they guard breaks?

    pip install -e ".[test]" && python scripts/mutation_check.py [--only NAME]

Each mutation below is one deliberate break of the library (a bf16 GroupNorm, a compiled call that
ignores ``params=``, an SSIM constant, a crop offset, a colour channel, LPIPS's input shift, a
weight cache that copies). In a throw-away ``git worktree`` of HEAD, the script runs the named test
once unbroken (it must pass) and once broken (it must fail), puts the file back, and prints one
Markdown row per run. Exit status 1 when a test passes broken or fails unbroken.

These tests once could not fail (a chained ``and``, an ``is not None``, a tolerance wider than the
effect, a reference rebuilt from our own rounding); this is how a reader checks they now can.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from typing import NamedTuple, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Mutation(NamedTuple):
    name: str
    path: str  # file of the library, relative to the repository
    old: str  # text that must occur exactly once in it
    new: str
    test: str  # pytest node id, relative to the repository


MUTATIONS = (
    Mutation(
        "quantizer's nearest code ignores the codebook norms",
        "vqgan_flax/models/quantizers.py",
        "        + jnp.sum(codebook**2, axis=1)[None, :]",
        "        + 0.0 * jnp.sum(codebook**2, axis=1)[None, :]",
        "tests/test_fixture_parity.py::test_taming_fixture_parity",
    ),
    Mutation(
        "taming key mapping leaves block indices unmapped",
        "vqgan_flax/conversion/taming.py",
        '            parts[i] = _LEVEL_ITEM.sub(r"\\1.\\2", part)',
        "            parts[i] = part",
        "tests/test_convert_checkpoint.py::test_key_mapping_both_ways",
    ),
    Mutation(
        "decoder runs its levels lowest resolution last",
        "vqgan_flax/models/blocks.py",
        "        for level in reversed(self.up):",
        "        for level in self.up:",
        "tests/test_fixture_parity.py::test_taming_fixture_parity",
    ),
    Mutation(
        "C++ GroupNorm divides the variance by N - 1",
        "vqgan_flax/kernels/csrc/group_norm.cc",
        "      const float rstd = 1.0f / std::sqrt(float(s / double(rows * per_group)) + epsilon);",
        "      const float rstd = 1.0f / std::sqrt(float(s / double(rows * per_group - 1)) + epsilon);",
        "tests/test_cpu_kernels.py::test_group_norm_matches_flax",
    ),
    Mutation(
        "GroupNorm arithmetic in bf16 (XLA path)",
        "vqgan_flax/kernels/cpu.py",
        "grouped = x.astype(jnp.float32).reshape(n, h, w, groups, c // groups)",
        "grouped = x.reshape(n, h, w, groups, c // groups)",
        "tests/test_cpu_kernels.py::test_group_norm_bfloat16_in_and_out",
    ),
    Mutation(
        "encoder.conv_out in bf16 (dropped from the declared float32 convs)",
        "vqgan_flax/models/blocks.py",
        'FLOAT32_CONVS = frozenset({("encoder", "conv_out"), ("quant_conv",)})',
        'FLOAT32_CONVS = frozenset({("quant_conv",)})',
        "tests/test_modeling.py::test_bf16_program_keeps_convs_in_bf16_and_statistics_in_float32",
    ),
    Mutation(
        "compiled call ignores params=",
        "vqgan_flax/hub/modeling.py",
        "params = self._params_in_compute_dtype() if params is None else params",
        "params = self._params_in_compute_dtype()",
        "tests/test_modeling.py::test_jit_matches_eager",
    ),
    Mutation(
        "float32 model hands out a copy of its params",
        "vqgan_flax/hub/modeling.py",
        "        if jnp.dtype(self.dtype) == jnp.float32 or params is None:\n            return params",
        "        if jnp.dtype(self.dtype) == jnp.float32 or params is None:\n"
        "            return jax.tree.map(lambda a: a, params)",
        "tests/test_modeling.py::test_bf16_model_casts_its_conv_weights_once_with_the_same_results",
    ),
    Mutation(
        "SSIM's K2 0.03 -> 0.031",
        "vqgan_flax/evaluation/metrics.py",
        "c1, c2 = 0.01**2, 0.03**2",
        "c1, c2 = 0.01**2, 0.031**2",
        "tests/test_cli.py::test_metrics_match_skimage",
    ),
    Mutation(
        "center-crop offset rounded up",
        "vqgan_flax/data/image_io.py",
        "left, top = (resized[0] - width) // 2, (resized[1] - height) // 2",
        "left, top = (resized[0] - width + 1) // 2, (resized[1] - height + 1) // 2",
        "tests/test_image_processing.py",
    ),
    Mutation(
        "load_image negates the blue channel only",
        "vqgan_flax/data/image_io.py",
        "        return array.astype(np.float32) / 127.5 - 1.0",
        "        return (array.astype(np.float32) / 127.5 - 1.0) * np.array([1, 1, -1], np.float32)",
        "tests/test_parallel.py::test_load_image",
    ),
    Mutation(
        "LPIPS input shift: the red channel's sign flipped",
        "vqgan_flax/train/lpips.py",
        "_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)",
        "_SHIFT = np.array([0.030, -0.088, -0.188], np.float32)",
        "tests/test_live_parity.py::test_lpips_matches_taming",
    ),
)


def check_applies(mutation: Mutation, root: str = ROOT) -> None:
    """Raise ValueError naming the mutation unless its text occurs once and its test exists."""
    with open(os.path.join(root, mutation.path)) as f:
        count = f.read().count(mutation.old)
    if count != 1:
        raise ValueError(f"{mutation.name}: {mutation.path} holds its text {count} times, not once")
    test_file, _, test_name = mutation.test.partition("::")
    with open(os.path.join(root, test_file)) as f:
        if test_name and f"def {test_name}(" not in f.read():
            raise ValueError(f"{mutation.name}: {test_file} has no {test_name}")


def _run_test(worktree: str, test: str) -> tuple:
    """(passed, last line of pytest's summary) for one test, importing the worktree's package."""
    env = {**os.environ, "PYTHONPATH": worktree}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", test],
                          cwd=worktree, env=env, capture_output=True, text=True)  # fmt: skip
    lines = proc.stdout.strip().splitlines() or [proc.stderr.strip()[-200:]]
    return proc.returncode == 0, lines[-1].strip("= ")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only the mutations whose name contains this text")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or args.only in m.name]
    if not chosen:
        raise SystemExit(f"--only {args.only!r}: no mutation's name contains it")
    for mutation in chosen:
        check_applies(mutation)
    ok = True
    print("| deliberate break | test | unbroken | broken |\n|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        # git names a worktree after its folder: a unique name keeps two runs at once apart.
        worktree = os.path.join(scratch, os.path.basename(scratch))
        subprocess.run(["git", "worktree", "add", "--detach", "-q", worktree, "HEAD"], cwd=ROOT, check=True)
        try:
            for mutation in chosen:
                clean, clean_line = _run_test(worktree, mutation.test)
                target = os.path.join(worktree, mutation.path)
                with open(target) as f:
                    original = f.read()
                with open(target, "w") as f:
                    f.write(original.replace(mutation.old, mutation.new))
                try:
                    broken, broken_line = _run_test(worktree, mutation.test)
                finally:
                    with open(target, "w") as f:
                        f.write(original)
                ok &= clean and not broken
                verdict = ["FAILED", "passed"]
                print(f"| {mutation.name} | `{mutation.test}` | {verdict[clean]} ({clean_line}) | "
                      f"{verdict[broken]} ({broken_line}) |", flush=True)  # fmt: skip
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", worktree], cwd=ROOT, check=False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
