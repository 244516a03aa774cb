"""Both stacks: which base the model stands on, folders that travel between the legacy stack
(transformers 4.57, Flax classes) and the current one (transformers 5, our base) bit for bit, the
Auto classes, and a quiet stderr on import and in the CLI.

The cross-stack tests need the other stack's interpreter in ``VQGAN_FLAX_OTHER_PYTHON`` (``make
test`` sets it: each stack's suite checks against the other's venv); without it they are skipped.
"""

from __future__ import annotations

import inspect
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import vqgan_flax
from vqgan_flax import FlaxHubModel, FlaxVQGANModel, FlaxVQGANPreTrainedModel, VQGANConfig, VQGANImageProcessor
from vqgan_flax.hub.base import _transformers_flax_base, pretrained_base
from vqgan_flax.hub.modeling import FlaxVQGANMixin
from vqgan_flax.models.module import FlaxVQGANModule

ROOT = pathlib.Path(__file__).parent.parent
TRANSFORMERS_FLAX = _transformers_flax_base()
OTHER_PYTHON = os.environ.get("VQGAN_FLAX_OTHER_PYTHON")
CONFIG_FIELDS = [name for name in inspect.signature(VQGANConfig.__init__).parameters if name not in ("self", "kwargs")]

# Run by another interpreter (the other stack), with a JSON list of jobs: ["save", FOLDER, SEED,
# FORMAT] writes a random tiny model; ["dump", FOLDER, OUT.npz] loads a folder and records its
# parameters and its outputs on fixed inputs as that stack sees them; the config fields of each
# dumped folder are printed as JSON.
HELPER = r"""
import json, sys
import numpy as np
from flax.traverse_util import flatten_dict
from vqgan_flax import FlaxVQGANModel, VQGANConfig

jobs, fields = json.loads(sys.argv[1]), json.loads(sys.argv[2])
configs = {}
for job in jobs:
    if job[0] == "save":
        model = FlaxVQGANModel(VQGANConfig.from_preset("tiny", n_embed=48), seed=job[2])
        model.save_pretrained(job[1], safe_serialization=job[3] == "safetensors")
        continue
    model = FlaxVQGANModel.from_pretrained(job[1])
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    out = model(x)
    arrays = {"/".join(k): np.asarray(v) for k, v in flatten_dict(model.params).items()}
    arrays.update({"@reconstruction": np.asarray(out.reconstruction), "@indices": np.asarray(out.indices)})
    np.savez(job[2], **arrays)
    configs[job[1]] = {k: getattr(model.config, k) for k in fields}
print(json.dumps(configs))
"""


def _helper(python: str, jobs: list) -> dict:
    result = subprocess.run(
        [python, "-c", HELPER, json.dumps(jobs), json.dumps(CONFIG_FIELDS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{python} {jobs} failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_same_model(folder: pathlib.Path, there_npz: pathlib.Path, there_config: dict) -> None:
    model = FlaxVQGANModel.from_pretrained(folder)
    assert {k: getattr(model.config, k) for k in CONFIG_FIELDS} == there_config
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    out = model(x)
    arrays = {"/".join(k): np.asarray(v) for k, v in flatten_dict(model.params).items()}
    there = dict(np.load(there_npz))
    assert sorted(arrays) == sorted(k for k in there if not k.startswith("@"))
    for key in arrays:  # bit-identical weights
        assert arrays[key].dtype == there[key].dtype, key
        np.testing.assert_array_equal(arrays[key], there[key], err_msg=key)
    # Outputs of the same weights: equal up to the two XLA versions' float rounding.
    np.testing.assert_allclose(np.asarray(out.reconstruction), there["@reconstruction"], atol=1e-5, rtol=1e-5)
    assert np.mean(np.asarray(out.indices) == there["@indices"]) >= 0.99


def _round_trips(tmp_path: pathlib.Path, python: str) -> None:
    """Folders (safetensors and msgpack) written there load here bit-identically, and vice versa."""
    formats = ("safetensors", "msgpack")
    jobs = [["save", str(tmp_path / f"there-{fmt}"), 3, fmt] for fmt in formats]
    jobs += [["dump", str(tmp_path / f"there-{fmt}"), str(tmp_path / f"there-{fmt}.npz")] for fmt in formats]
    for fmt in formats:
        FlaxVQGANModel(VQGANConfig.from_preset("tiny", n_embed=48), seed=4).save_pretrained(
            tmp_path / f"here-{fmt}", safe_serialization=fmt == "safetensors"
        )
        jobs.append(["dump", str(tmp_path / f"here-{fmt}"), str(tmp_path / f"here-{fmt}.npz")])
    configs = _helper(python, jobs)
    for origin in ("there", "here"):
        for fmt in formats:
            folder = tmp_path / f"{origin}-{fmt}"
            _assert_same_model(folder, tmp_path / f"{origin}-{fmt}.npz", configs[str(folder)])


class HubVQGANModel(FlaxVQGANMixin, FlaxHubModel):
    """The VQGAN on our own base, wherever transformers' is installed too."""

    module_class = FlaxVQGANModule


def test_base_follows_the_installed_transformers():
    import transformers

    base = pretrained_base()
    assert FlaxVQGANPreTrainedModel.__mro__[1:3] == (FlaxVQGANMixin, base)
    if transformers.__version__.startswith("4."):
        assert base is TRANSFORMERS_FLAX and base.__module__ == "transformers.modeling_flax_utils"
    else:
        assert base is FlaxHubModel and TRANSFORMERS_FLAX is None
    # The same public surface on either base.
    surface = "from_pretrained save_pretrained push_to_hub params init_weights to_bf16 to_fp16 to_fp32"
    for cls in (FlaxVQGANModel, HubVQGANModel):
        for name in (surface + " num_parameters params_shape_tree required_params load_flax_weights").split():
            assert hasattr(cls, name), (cls, name)
    model = FlaxVQGANModel(VQGANConfig.from_preset("tiny"), _do_init=False)
    assert model.num_parameters() == sum(int(np.prod(s.shape)) for s in jax.tree.leaves(model.params_shape_tree))


@pytest.mark.parametrize("fmt", ["safetensors", "msgpack"])
def test_folders_travel_between_the_two_bases(tmp_path, fmt):
    """In one environment, the model on the installed base and the model on ours (the same class
    on the legacy stack is transformers' base) read each other's folders bit-identically."""
    config = VQGANConfig.from_preset("tiny", n_embed=48)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    for writer, reader in ((FlaxVQGANModel, HubVQGANModel), (HubVQGANModel, FlaxVQGANModel)):
        folder = tmp_path / f"{writer.__name__}-{fmt}"
        written = writer(config, seed=3)
        written.save_pretrained(folder, safe_serialization=fmt == "safetensors")
        read = reader.from_pretrained(folder)
        assert type(read) is reader and {k: getattr(read.config, k) for k in CONFIG_FIELDS} == {
            k: getattr(written.config, k) for k in CONFIG_FIELDS
        }
        ours, theirs = flatten_dict(read.params), flatten_dict(written.params)
        assert sorted(ours) == sorted(theirs)
        for key in ours:
            assert ours[key].dtype == theirs[key].dtype, key
            np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(theirs[key]), err_msg=str(key))
        np.testing.assert_array_equal(np.asarray(read(x).reconstruction), np.asarray(written(x).reconstruction))


@pytest.mark.one_stack
@pytest.mark.skipif(not OTHER_PYTHON, reason="VQGAN_FLAX_OTHER_PYTHON (the other stack's python) is not set")
def test_folders_travel_between_stacks(tmp_path):
    assert pathlib.Path(OTHER_PYTHON).is_file(), f"VQGAN_FLAX_OTHER_PYTHON={OTHER_PYTHON}: no such interpreter"
    here = subprocess.run(
        [sys.executable, "-c", "import transformers; print(transformers.__version__)"], capture_output=True, text=True
    ).stdout
    there = subprocess.run(
        [OTHER_PYTHON, "-c", "import transformers; print(transformers.__version__)"], capture_output=True, text=True
    ).stdout
    assert here.split(".")[0] != there.split(".")[0], f"both interpreters run transformers {here.strip()}"
    _round_trips(tmp_path, OTHER_PYTHON)


def test_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoImageProcessor

    FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=0).save_pretrained(tmp_path)
    VQGANImageProcessor(pixel_range=(0, 1), crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, VQGANConfig) and config.n_embed == 32
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, VQGANImageProcessor)
    assert processor.pixel_range == [0.0, 1.0] and processor.crop_size == {"height": 32, "width": 32}


def test_import_survives_an_auto_image_processor_that_needs_torch(monkeypatch):
    """transformers 5.17 without torch: AutoImageProcessor is a placeholder whose register raises
    ImportError; importing vqgan_flax must still register AutoConfig and succeed."""
    import transformers

    import vqgan_flax

    def needs_torch(*args, **kwargs):
        raise ImportError("AutoImageProcessor requires the PyTorch library")

    monkeypatch.setattr(transformers.AutoImageProcessor, "register", needs_torch)
    registered = []
    monkeypatch.setattr(transformers.AutoConfig, "register", lambda *a, **k: registered.append(a[0]))
    monkeypatch.setattr(vqgan_flax._auto, "_done", dict.fromkeys(vqgan_flax._auto._done, False))  # once more
    vqgan_flax._register_auto_classes()
    assert registered == ["vqgan"]


@pytest.mark.skipif(TRANSFORMERS_FLAX is None, reason="this transformers has no FlaxAutoModel (removed in 5.0)")
def test_flax_auto_model(tmp_path):
    from transformers import FlaxAutoModel

    reference = FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=0)
    reference.save_pretrained(tmp_path)
    model = FlaxAutoModel.from_pretrained(tmp_path)
    assert isinstance(model, FlaxVQGANModel)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x).indices, reference(x).indices)


def test_import_and_cli_keep_stderr_clean(tmp_path):
    """No transformers advisories ("PyTorch was not found") or deprecations ("TensorFlow and JAX
    classes are deprecated") on import, model loading or a CLI run, on either stack."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "TRANSFORMERS_VERBOSITY")
    }
    env["VQGAN_FLAX_CACHE_DIR"] = ""
    code = (
        "import os, vqgan_flax\n"
        "assert 'TRANSFORMERS_NO_ADVISORY_WARNINGS' not in os.environ  # the user's environment is left alone\n"
        "m = vqgan_flax.FlaxVQGANModel.from_pretrained(vqgan_flax.DEFAULT_MODEL)\n"
        "print(m.num_parameters())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert int(result.stdout) > 0
    cli = pathlib.Path(sys.executable).parent / "vqgan-flax"
    result = subprocess.run(
        [str(cli), "encode", str(ROOT / "examples" / "images" / "brick.png"), "--size", "32", "--quiet",
         "--out", str(tmp_path / "t.npz")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr
    side = 32 // vqgan_flax.VQGANConfig.from_pretrained(vqgan_flax.DEFAULT_MODEL).downsampling_factor
    assert f"wrote 1 x {side}x{side} tokens" in result.stdout


def test_version_is_the_package_metadata():
    from importlib.metadata import version

    assert version("vqgan-flax") == vqgan_flax.__version__
