"""The fixtures in tests/fixtures follow their generators: the weight and input rules (checked here
without the reference code), the comparison the generators' ``--check`` applies, and, where the
vqgan-jax and LWM checkouts are given, a full remake with those projects' code."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax.serialization import msgpack_restore
from flax.traverse_util import flatten_dict
from utils import FIXTURES, load_script

from vqgan_flax.testing.fixtures import (
    compare_arrays,
    compare_case_arrays,
    compare_trees,
    draw_flax_params,
    reference_source,
    uniform_inputs,
)

ROOT = FIXTURES.parent.parent
RECORD = ROOT / "benchmarks" / "results" / "fixture_check.json"
DRAWN_WITH_JAX = "0.10.2"  # the legacy stack's, which made the fixtures


def _committed_weights(case: str) -> dict:
    if case == "lwm":
        return flatten_dict(pickle.loads((FIXTURES / "lwm" / "vqgan").read_bytes()))  # our own committed file
    return flatten_dict(msgpack_restore((FIXTURES / case / "checkpoint" / "flax_model.msgpack").read_bytes()))


@pytest.mark.parametrize(("case", "seed", "codebook"), [("vqganjax", 3, "embedding"), ("lwm", 4, "embeddings")])
def test_flax_fixture_weights_are_the_documented_draw(case, seed, codebook):
    """Every committed weight is draw_flax_params' value bit for bit (one key per leaf in sorted
    order, the README's scale per role): change a scale or the key order and this fails."""
    committed = _committed_weights(case)
    drawn = draw_flax_params({path: value.shape for path, value in committed.items()}, seed, codebook)
    if jax.__version__ == DRAWN_WITH_JAX:
        assert compare_trees(drawn, committed, case) == []
    for path, value in committed.items():  # later jax rounds normal()'s inverse erf differently in the last bit
        np.testing.assert_allclose(drawn[path], value, rtol=1e-5, atol=0, err_msg="/".join(path))


def test_old_layout_holds_the_same_draw_with_groupnorm_reshaped():
    new, old = _committed_weights("vqganjax"), _committed_weights("vqganjax_old_layout")
    reshaped = [path for path in old if old[path].shape != new[path].shape]
    assert len(reshaped) == 66 and all(old[path].shape == (1, 1, 1, new[path].shape[0]) for path in reshaped)
    assert compare_trees({path: value.reshape(new[path].shape) for path, value in old.items()}, new, "old") == []


def test_fixture_inputs_are_the_documented_draw():
    (pixels,) = uniform_inputs(3, (2, 32, 32, 3))
    np.testing.assert_array_equal(pixels, np.load(FIXTURES / "vqganjax" / "inputs.npz")["pixel_values"])
    image, video = uniform_inputs(4, (2, 32, 32, 3), (1, 2, 32, 32, 3))  # one generator, one after the other
    lwm = np.load(FIXTURES / "lwm" / "inputs.npz")
    np.testing.assert_array_equal(image, lwm["image"])
    np.testing.assert_array_equal(video, lwm["video"])
    (taming,) = uniform_inputs(0, (2, 3, 32, 32))
    np.testing.assert_array_equal(taming, np.load(FIXTURES / "taming_vq" / "inputs.npz")["pixel_values"])


def test_draw_refuses_a_leaf_without_a_rule():
    with pytest.raises(ValueError, match=r"encoder/alpha: no drawing rule for a leaf named 'alpha'"):
        draw_flax_params({("encoder", "alpha"): (3,)}, 0, codebook="embedding")


def test_compare_case_arrays_names_what_differs(tmp_path):
    made = tmp_path / "made"
    shutil.copytree(FIXTURES / "vqganjax", made, ignore=shutil.ignore_patterns("checkpoint"))
    assert compare_case_arrays(made, FIXTURES / "vqganjax", 1e-5) == ([], 0.0)
    expected = dict(np.load(made / "expected.npz"))
    expected["decoded"] = expected["decoded"] + np.float32(2e-5)  # beyond the tolerance
    expected["reconstruction"] = expected["reconstruction"] + np.float32(5e-6)  # within it: reported, not refused
    expected["indices"] = expected["indices"].copy()
    expected["indices"][0, 0] += 1
    del expected["z"]
    np.savez(made / "expected.npz", **expected)
    pixels = np.load(made / "inputs.npz")["pixel_values"].copy()
    pixels[0, 0, 0, 0] = np.nextafter(pixels[0, 0, 0, 0], np.float32(2))  # one ulp: inputs must be exact
    np.savez(made / "inputs.npz", pixel_values=pixels)
    problems, largest = compare_case_arrays(made, FIXTURES / "vqganjax", 1e-5)
    assert problems[0] == "inputs.npz[pixel_values] differs (bit for bit expected)"
    assert any(p.startswith("expected.npz: arrays [") for p in problems)
    assert any(p.startswith("expected.npz[decoded] differs by 2.0") for p in problems)
    assert "expected.npz[indices] differs (bit for bit expected)" in problems
    assert not any(p.startswith("expected.npz[reconstruction]") for p in problems) and 4e-6 < largest < 2.5e-5
    np.savez(made / "inputs.npz", pixel_values=pixels.astype(np.float64))
    assert compare_arrays(made / "inputs.npz", FIXTURES / "vqganjax" / "inputs.npz", None)[0] == [
        "inputs.npz[pixel_values]: float64 (2, 32, 32, 3) against float32 (2, 32, 32, 3)"
    ]


def test_compare_trees_names_the_leaf():
    tree = {("a", "kernel"): np.zeros((2, 2), np.float32), ("a", "bias"): np.zeros(2, np.float32)}
    assert compare_trees(dict(tree), tree, "w") == []
    changed = {("a", "kernel"): np.ones((2, 2), np.float32), ("b", "bias"): np.zeros(2, np.float32)}
    assert compare_trees(changed, tree, "w") == [
        "w: a/bias missing",
        "w: b/bias not in the committed tree",
        "w: a/kernel differs (float32 (2, 2) against float32 (2, 2))",
    ]


def test_reference_source_names_a_checkout_commit_only_at_its_top(tmp_path):
    checkout = tmp_path / "reference"
    (checkout / "pkg").mkdir(parents=True)
    (checkout / "pkg" / "model.py").write_text("x = 1\n")
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "reference"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    source = reference_source(checkout, [checkout / "pkg" / "model.py"])
    assert source["commit"] == head and len(source["sources_sha256"]) == 16
    inside = reference_source(checkout / "pkg", [checkout / "pkg" / "model.py"])
    assert inside["commit"] is None and inside["sources_sha256"] != source["sources_sha256"]  # other relative name
    (checkout / "pkg" / "model.py").write_text("x = 2\n")
    assert reference_source(checkout, [checkout / "pkg" / "model.py"])["sources_sha256"] != source["sources_sha256"]


def test_flax_generator_refuses_a_folder_that_is_not_the_reference(tmp_path):
    script = load_script("make_flax_fixtures")
    with pytest.raises(SystemExit, match=r"--vqgan-jax .*: no vqgan_jax/modeling_flax_vqgan.py there"):
        script.import_vqgan_jax(tmp_path)
    with pytest.raises(SystemExit, match=r"--lwm .*: no lwm/vqgan.py there"):
        script.import_lwm(tmp_path)


def test_fixture_check_record_is_clean_and_names_the_references():
    """The committed --check record: from a clean tree, every case without a problem, and the
    reference commits the fixtures README names."""
    record = json.loads(RECORD.read_text())
    assert record["dirty"] is False and len(record["commit"]) == 40
    assert record["command"].startswith("python scripts/make_flax_fixtures.py")
    assert {case: result["problems"] for case, result in record["cases"].items()} == {
        "vqganjax": [],
        "vqganjax_old_layout": [],
        "lwm": [],
    }
    readme = (FIXTURES / "README.md").read_text()
    for reference in ("vqgan-jax", "lwm"):
        assert record["references"][reference]["commit"][:12] in readme, reference


@pytest.mark.skipif(
    not (os.environ.get("VQGAN_FLAX_VQGANJAX_CHECKOUT") and os.environ.get("VQGAN_FLAX_LWM_CHECKOUT")),
    reason="needs checkouts of vqgan-jax and LWM (VQGAN_FLAX_VQGANJAX_CHECKOUT, VQGAN_FLAX_LWM_CHECKOUT): "
    "neither project is on PyPI",
)
def test_flax_fixtures_come_from_the_committed_generator():
    """scripts/make_flax_fixtures.py --check remakes every vqgan-jax and LWM case with their code."""
    pytest.importorskip("ml_collections", reason="LWM's model file imports ml_collections")
    argv = ["--vqgan-jax", os.environ["VQGAN_FLAX_VQGANJAX_CHECKOUT"], "--lwm", os.environ["VQGAN_FLAX_LWM_CHECKOUT"]]
    result = subprocess.run([sys.executable, "scripts/make_flax_fixtures.py", *argv, "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.split(":")[0] in ("vqganjax", "vqganjax_old_layout",
                                                                                    "lwm")]  # fmt: skip
    assert len(lines) == 3 and all("bit for bit" in line for line in lines), lines


def test_flax_generator_check_fails_on_a_changed_fixture(tmp_path):
    """compare_case, the generator's own comparison, refuses a committed case whose weight, config or
    output changed (the remade case here is the committed one, so only the change can differ)."""
    script = load_script("make_flax_fixtures")
    for case in ("vqganjax", "lwm"):
        assert script.compare_case(case, FIXTURES / case, FIXTURES / case) == ([], 0.0)
    changed = tmp_path / "lwm"
    shutil.copytree(FIXTURES / "lwm", changed)
    tree = pickle.loads((changed / "vqgan").read_bytes())
    tree["quantize"]["embeddings"] = tree["quantize"]["embeddings"].copy()
    tree["quantize"]["embeddings"][0, 0] += 1
    (changed / "vqgan").write_bytes(pickle.dumps(tree))
    config = json.loads((changed / "config.json").read_text())
    (changed / "config.json").write_text(json.dumps({**config, "z_channels": 4}))
    problems, _ = script.compare_case("lwm", changed, FIXTURES / "lwm")
    assert problems == ["lwm/vqgan: quantize/embeddings differs (float32 (64, 8) against float32 (64, 8))",
                        "lwm/config.json says something else"]  # fmt: skip


def test_the_llamagen_fixture_names_the_commit_that_made_it():
    """llamagen_vq/made_by.json (written by scripts/make_llamagen_fixtures.py) names a LlamaGen
    commit and the hash of the file that ran; the fixtures README names the same commit."""
    made_by = json.loads((FIXTURES / "llamagen_vq" / "made_by.json").read_text())
    assert len(made_by["commit"]) == 40 and len(made_by["sources_sha256"]) == 16
    assert made_by["smallest_gap"] >= load_script("make_llamagen_fixtures").MIN_GAP
    assert made_by["commit"] in (FIXTURES / "README.md").read_text()


@pytest.mark.torch
@pytest.mark.skipif(
    not os.environ.get("VQGAN_FLAX_LLAMAGEN_CHECKOUT"),
    reason="needs a LlamaGen checkout (VQGAN_FLAX_LLAMAGEN_CHECKOUT): LlamaGen is not on PyPI",
)
def test_llamagen_fixture_comes_from_the_committed_generator():
    """scripts/make_llamagen_fixtures.py --check remakes the case with LlamaGen's own vq_model.py."""
    argv = ["--llamagen", os.environ["VQGAN_FLAX_LLAMAGEN_CHECKOUT"], "--check"]
    result = subprocess.run([sys.executable, "scripts/make_llamagen_fixtures.py", *argv], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "llamagen_vq: bit for bit but floats" in result.stdout


@pytest.mark.torch
@pytest.mark.skipif(
    not os.environ.get("VQGAN_FLAX_LDM_CHECKOUT"),
    reason="needs a latent-diffusion checkout (VQGAN_FLAX_LDM_CHECKOUT): latent-diffusion is not on PyPI",
)
def test_ldm_fixtures_come_from_the_committed_generator():
    """scripts/make_ldm_fixtures.py --check remakes both cases with latent-diffusion's model.py and
    the legacy stack's taming quantizer."""
    taming = pathlib.Path(importlib.util.find_spec("taming").origin).parent
    argv = ["--latent-diffusion", os.environ["VQGAN_FLAX_LDM_CHECKOUT"], "--taming", str(taming), "--check"]
    result = subprocess.run([sys.executable, "scripts/make_ldm_fixtures.py", *argv], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    for case in ("ldm_vq", "ldm_vq_noattn"):
        assert f"{case}: bit for bit but floats" in result.stdout


@pytest.mark.torch
@pytest.mark.parametrize(
    "script, module, cases",
    [("make_diffusers_fixtures.py", "diffusers", ("diffusers_vq", "diffusers_vq_noattn")),
     ("make_quantizer_fixtures.py", "vector_quantize_pytorch", ("fsq_lfq",))],
)  # fmt: skip
def test_pypi_reference_fixtures_come_from_the_committed_generator(script, module, cases):
    """The diffusers and vector-quantize-pytorch generators' --check remake their cases with the
    installed reference (the legacy stack pins the versions that made them)."""
    from utils import require_torch_reference

    require_torch_reference(module)
    result = subprocess.run([sys.executable, f"scripts/{script}", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    for case in cases:
        assert f"{case}: bit for bit but floats" in result.stdout


def test_a_checkout_module_resolves_its_absolute_imports_inside_the_checkout(tmp_path):
    """import_checkout_module: the checkout's top package (here a namespace package, no
    __init__.py) is registered from its folder, so ``from pkg.util import x`` inside a module finds
    the checkout's file; a package of that name from elsewhere is refused."""
    from vqgan_flax.testing.fixtures import import_checkout_module

    top = f"refpkg_{tmp_path.name.replace('-', '_')}"
    (tmp_path / top / "modules").mkdir(parents=True)
    (tmp_path / top / "util.py").write_text("VALUE = 41\n")
    (tmp_path / top / "modules" / "model.py").write_text(f"from {top}.util import VALUE\nANSWER = VALUE + 1\n")
    try:
        assert import_checkout_module(tmp_path, f"{top}.modules.model").ANSWER == 42
        assert import_checkout_module(tmp_path, f"{top}.util").VALUE == 41
        (tmp_path / "other" / top).mkdir(parents=True)
        with pytest.raises(SystemExit, match="already imported from elsewhere"):
            import_checkout_module(tmp_path / "other", f"{top}.util")
        with pytest.raises(SystemExit, match="no missing/ package folder"):
            import_checkout_module(tmp_path, "missing.model")
    finally:
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]


def test_a_one_case_generator_writes_its_case_or_fails_the_check(tmp_path, capsys):
    """make_or_check_case, the LlamaGen and IBQ generators' --out / --check: the case and its
    made_by.json written; a remade case that compares clean exits 0, one with problems exits 1
    naming them; import_file loads a reference file by its path."""
    from vqgan_flax.testing.fixtures import import_file, make_or_check_case

    def make(folder):
        folder.mkdir(parents=True)
        (folder / "x.npz").write_bytes(b"case")
        return {"smallest_gap": 0.5}

    made_by = {"commit": "c" * 40}
    assert make_or_check_case("case", made_by, make, None, tmp_path / "out", tmp_path) == 0
    assert json.loads((tmp_path / "out" / "case" / "made_by.json").read_text()) == {**made_by, "smallest_gap": 0.5}
    seen = []
    clean = lambda made, committed: seen.append((made.name, committed)) or ([], 2e-6)  # noqa: E731
    assert make_or_check_case("case", made_by, make, clean, None, tmp_path / "out") == 0
    assert seen == [("case", tmp_path / "out" / "case")]
    assert "case: bit for bit but floats, within 2.0e-06" in capsys.readouterr().out
    broken = lambda made, committed: (["x.npz differs"], 0.0)  # noqa: E731
    assert make_or_check_case("case", made_by, make, broken, None, tmp_path / "out") == 1
    assert "case: x.npz differs" in capsys.readouterr().out
    (tmp_path / "reference.py").write_text("VALUE = 3\n")
    assert import_file(tmp_path / "reference.py", "reference_module").VALUE == 3


def test_case_files_are_written_and_compared_as_the_family_generators_need(tmp_path, capsys):
    """case_outputs names one input's arrays (indices as int64); write_case refuses a near-tie and
    writes inputs.npz / expected.npz; compare_case_and_weights finds a changed, a missing and an
    added weight; one_case_arguments takes --REF PATH with --out or --check, not both."""
    from vqgan_flax.testing.fixtures import case_outputs, compare_case_and_weights, one_case_arguments, write_case

    ones = np.ones((1, 2, 2, 2), np.float32)
    arrays = case_outputs("_nonsquare", ones, ones, np.zeros((1, 2, 2), np.int32), ones, ones)
    assert sorted(arrays) == sorted(f"{k}_nonsquare" for k in ("z", "quant", "indices", "reconstruction",
                                                                  "decoded_from_indices"))  # fmt: skip
    assert arrays["indices_nonsquare"].dtype == np.int64
    inputs = {"pixel_values": ones}
    with pytest.raises(SystemExit, match=r"case x: a near-tie \(gap 1.0e-05 < 0.001\)"):
        write_case(
            tmp_path / "tie", inputs, case_outputs("", ones, ones, ones, ones, ones), [0.5, 1e-5], 1e-3, "case x"
        )
    assert not (tmp_path / "tie").exists()
    expected = case_outputs("", ones, ones, np.arange(4).reshape(1, 2, 2), ones, ones)
    for name in ("made", "committed"):
        assert write_case(tmp_path / name, inputs, expected, [0.5], 1e-3, "c") == {"smallest_gap": 0.5,
                                                                                   "distinct_indices": 4}  # fmt: skip
    weights = {"made": {"a": np.ones(2), "b": np.zeros(1), "new": np.ones(1)},
               "committed": {"a": np.ones(2), "b": np.ones(1), "gone": np.ones(1)}}  # fmt: skip
    load = lambda path: weights[path.parent.name]  # noqa: E731
    problems, largest = compare_case_and_weights(tmp_path / "made", tmp_path / "committed", 1e-5, "w.ckpt", load)
    assert largest == 0.0 and problems == ["w.ckpt: gone missing", "w.ckpt: new not in the committed tree",
                                           "w.ckpt: b differs (float64 (1,) against float64 (1,))"]  # fmt: skip
    args = one_case_arguments("d", {"my-ref": "a checkout"}, "the case", ["--my-ref", "/r", "--check"])
    assert (args.my_ref, args.check, args.out) == (pathlib.Path("/r"), True, None)
    with pytest.raises(SystemExit):
        one_case_arguments("d", {"my-ref": "a checkout"}, "the case", ["--my-ref", "/r", "--check", "--out", "o"])
    assert "not allowed with argument" in capsys.readouterr().err
