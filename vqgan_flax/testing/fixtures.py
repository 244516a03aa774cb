"""The rules behind ``tests/fixtures``: how their random Flax weights are drawn, how a remade case is
compared with the committed one, and how a reference checkout is named in a record.

The fixture generators in ``scripts/`` run other projects' code (taming, vqgan-jax, LWM) to make
the fixtures; what they share — the weight rule of ``tests/fixtures/README.md`` and the comparison
their ``--check`` applies, a one-case generator's ``--out``/``--check`` and how it imports a
reference file — lives here, so that a test can hold the committed weights to the rule
without the reference code. May import: numpy, jax (nothing of the package).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile
import types
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np

# The 1x1 convolutions next to the quantizer are drawn at N(0, 1) / sqrt(fan_in), not 0.05 N(0, 1),
# so that the latents spread over the codebook (see tests/fixtures/README.md).
NEAR_QUANTIZER = ("quant_conv", "post_quant_conv")


def draw_flax_params(shapes: Mapping[tuple, tuple], seed: int, codebook: str) -> dict:
    """Random weights for a Flax parameter tree given flat (``path tuple -> shape``): one
    ``jax.random`` key per leaf, split from ``PRNGKey(seed)`` in sorted path order, and the scale of
    ``tests/fixtures/README.md`` by the leaf's role (``codebook`` is the codebook leaf's name).
    Returns ``path tuple -> float32 numpy array``."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    drawn = {}
    for key, path in zip(keys, sorted(shapes)):
        unit = jax.random.normal(key, tuple(shapes[path]), jnp.float32)
        leaf, owner = path[-1], path[-2] if len(path) > 1 else ""
        if leaf == codebook:
            value = unit
        elif leaf == "scale":
            value = 1 + 0.1 * unit
        elif leaf == "bias" and "norm" in owner.lower():
            value = 0.1 * unit
        elif leaf == "bias":
            value = 0.02 * unit
        elif leaf == "kernel" and path[0] in NEAR_QUANTIZER:
            value = unit / np.sqrt(np.prod(shapes[path][:-1]))
        elif leaf == "kernel":
            value = 0.05 * unit
        else:
            raise ValueError(f"{'/'.join(path)}: no drawing rule for a leaf named {leaf!r}")
        drawn[path] = np.asarray(value, np.float32)
    return drawn


def uniform_inputs(seed: int, *shapes: tuple) -> list:
    """The fixtures' inputs: float32 arrays uniform in [-1, 1], drawn one after another from
    ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, shape).astype(np.float32) for shape in shapes]


def compare_case_arrays(made: pathlib.Path, committed: pathlib.Path, float_atol: float) -> tuple:
    """``(problems, largest float difference)`` between a remade case folder and the committed one:
    ``inputs.npz`` bit for bit, ``expected.npz`` as ``compare_arrays`` holds it."""
    problems, _ = compare_arrays(made / "inputs.npz", committed / "inputs.npz", float_atol=None)
    more, largest = compare_arrays(made / "expected.npz", committed / "expected.npz", float_atol)
    return problems + more, largest


def compare_arrays(made: pathlib.Path, committed: pathlib.Path, float_atol: Optional[float]) -> tuple:
    """``(problems, largest float difference)`` between two ``.npz`` files: the same array names,
    dtypes and shapes; integer arrays bit for bit, float arrays within ``float_atol`` (``None``:
    bit for bit too). Each problem names the file and the array."""
    problems, largest = [], 0.0
    mine, theirs = np.load(made), np.load(committed)
    if sorted(mine.files) != sorted(theirs.files):
        problems.append(f"{committed.name}: arrays {sorted(mine.files)} against {sorted(theirs.files)}")
    for key in [k for k in theirs.files if k in mine.files]:
        a, b = mine[key], theirs[key]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{committed.name}[{key}]: {a.dtype} {a.shape} against {b.dtype} {b.shape}")
        elif float_atol is None or a.dtype.kind != "f":
            if not np.array_equal(a, b):
                problems.append(f"{committed.name}[{key}] differs (bit for bit expected)")
        else:
            difference = float(np.abs(a.astype(np.float64) - b).max())
            largest = max(largest, difference)
            if difference > float_atol:
                problems.append(f"{committed.name}[{key}] differs by {difference:.2e} (> {float_atol:g})")
    return problems, largest


def compare_case_and_weights(
    made: pathlib.Path,
    committed: pathlib.Path,
    float_atol: float,
    checkpoint: str,
    weights: Callable[[pathlib.Path], Mapping[str, np.ndarray]],
) -> tuple:
    """``(problems, largest float difference)`` of a remade one-checkpoint case: the arrays as
    ``compare_case_arrays`` holds them and the weights ``weights(folder / checkpoint)`` reads
    (name -> tensor or array) bit for bit, none missing and none added."""
    problems, largest = compare_case_arrays(made, committed, float_atol)
    trees = [
        {(name,): np.asarray(v) for name, v in weights(folder / checkpoint).items()} for folder in (made, committed)
    ]
    return problems + compare_trees(trees[0], trees[1], checkpoint), largest


def compare_trees(made: Mapping[tuple, np.ndarray], committed: Mapping[tuple, np.ndarray], what: str) -> list:
    """Problems between two flat parameter trees that must agree bit for bit (names, shapes, values)."""
    problems = [f"{what}: {'/'.join(p)} missing" for p in sorted(set(committed) - set(made))]
    problems += [f"{what}: {'/'.join(p)} not in the committed tree" for p in sorted(set(made) - set(committed))]
    for path in sorted(set(made) & set(committed)):
        a, b = np.asarray(made[path]), np.asarray(committed[path])
        if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
            problems.append(f"{what}: {'/'.join(path)} differs ({a.dtype} {a.shape} against {b.dtype} {b.shape})")
    return problems


def reference_source(checkout: pathlib.Path, files: Iterable[pathlib.Path]) -> dict:
    """What names a reference run: its folder, its git commit (only when ``checkout`` is the top of
    a git work tree, not a folder inside another repository) and a hash of the files that ran."""
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(str(file.relative_to(checkout)).encode() + b"\0" + file.read_bytes())
    top = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    commit = None
    if top.returncode == 0 and pathlib.Path(top.stdout.strip()).resolve() == checkout.resolve():
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = head.stdout.strip() or None
    return {"path": str(checkout), "commit": commit, "sources_sha256": digest.hexdigest()[:16]}


def import_file(path: pathlib.Path, name: str) -> types.ModuleType:
    """The reference's Python file at ``path`` as module ``name``, imported from the file itself
    (the import path is left alone; no package of the checkout is imported)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_checkout_module(checkout: pathlib.Path, dotted: str) -> types.ModuleType:
    """Module ``dotted`` (``ldm.modules.diffusionmodules.model``) of a reference checkout whose
    files import each other by absolute name (``from ldm.util import ...``): its top package is
    registered from ``checkout/<top>`` (a namespace package where it has no ``__init__.py``), so
    those imports resolve inside the checkout; the import path is left alone."""
    top = dotted.split(".")[0]
    folder = checkout / top
    if not folder.is_dir():
        raise SystemExit(f"{checkout}: no {top}/ package folder there")
    loaded = sys.modules.get(top)
    if loaded is not None:
        if [str(folder)] != list(getattr(loaded, "__path__", [])):
            raise SystemExit(f"a package {top!r} is already imported from elsewhere: {loaded!r}")
        return importlib.import_module(dotted)
    init = folder / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(top, init, submodule_search_locations=[str(folder)])
    else:
        spec = importlib.machinery.ModuleSpec(top, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
    assert spec is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[top] = package
    if spec.loader is not None:
        spec.loader.exec_module(package)
    return importlib.import_module(dotted)


def case_outputs(suffix: str, z, quant, indices, reconstruction, decoded_from_indices) -> dict:
    """One input's arrays of a family case's ``expected.npz`` (``z``, ``quant``, ``indices`` as
    int64, ``reconstruction``, ``decoded_from_indices``; tensors or arrays), each named with the
    input's ``suffix`` (``""``, ``"_nonsquare"``)."""
    arrays = {"z": z, "quant": quant, "reconstruction": reconstruction, "decoded_from_indices": decoded_from_indices}
    named = {f"{name}{suffix}": np.asarray(value) for name, value in arrays.items()}
    named[f"indices{suffix}"] = np.asarray(indices).astype(np.int64)
    return named


def write_case(out: pathlib.Path, inputs: dict, expected: dict, gaps: list, min_gap: float, what: str) -> dict:
    """Write ``inputs.npz`` and ``expected.npz`` into ``out`` unless the quantizer's choice was
    near a tie (a gap in ``gaps`` under ``min_gap``: another CPU could pick the other code), which
    stops the generator naming ``what`` (the case and seed). Returns the facts for made_by.json."""
    if min(gaps) < min_gap:
        raise SystemExit(f"{what}: a near-tie (gap {min(gaps):.1e} < {min_gap}); choose another seed")
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "inputs.npz", **inputs)
    np.savez(out / "expected.npz", **expected)
    return {"smallest_gap": min(gaps), "distinct_indices": len(np.unique(expected["indices"]))}


def one_case_arguments(description: str, references: Mapping[str, str], case: str, argv: Optional[list]) -> Any:
    """A one-case generator's command line: a required ``--NAME PATH`` per reference
    (``references``: flag name -> help) and ``--out DIR`` (the case into ``DIR/case``) or
    ``--check``. Returns the parsed namespace."""
    parser = argparse.ArgumentParser(description=description)
    for name, help in references.items():
        parser.add_argument(f"--{name}", required=True, type=pathlib.Path, help=help)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=pathlib.Path, help=f"write {case} into OUT")
    what.add_argument("--check", action="store_true", help="remake it and compare with tests/fixtures")
    return parser.parse_args(argv)


def make_or_check_case(
    case: str,
    made_by: dict,
    make: Callable[[pathlib.Path], dict],
    compare: Callable[[pathlib.Path, pathlib.Path], tuple],
    out: Optional[pathlib.Path],
    committed: pathlib.Path,
) -> int:
    """A one-case generator's ``--out`` / ``--check``: ``make(folder)`` writes the case and returns
    facts for ``made_by.json``; with ``out`` the case goes to ``out/case``, otherwise it is remade
    in a scratch folder and ``compare(remade, committed/case)`` gives ``(problems, largest float
    difference)``, printed as one line. Returns the exit status."""
    print(json.dumps(made_by))
    if out is not None:
        facts = make(out / case)
        (out / case / "made_by.json").write_text(json.dumps({**made_by, **facts}, indent=2) + "\n")
        print(json.dumps(facts))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        make(pathlib.Path(scratch) / case)
        problems, largest = compare(pathlib.Path(scratch) / case, committed / case)
    print(f"{case}: " + ("; ".join(problems) if problems else f"bit for bit but floats, within {largest:.1e}"))
    return 1 if problems else 0
