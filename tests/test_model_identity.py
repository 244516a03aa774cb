"""Models are identified by content: token folders accept the same weights from any path and
refuse other weights or another dtype, naming the field and both values."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from utils import run_cli

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.hub.identity import check_same_tokens, model_digest, params_digest


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("identity-images")
    rng = np.random.default_rng(5)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_digest_depends_on_weights_and_architecture_not_on_file_format(tiny, tmp_path):
    model = FlaxVQGANModel.from_pretrained(tiny)
    model.save_pretrained(tmp_path / "safetensors", safe_serialization=True)
    model.save_pretrained(tmp_path / "msgpack", safe_serialization=False)
    digest = model_digest(model)
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    assert model_digest(FlaxVQGANModel.from_pretrained(tmp_path / "safetensors")) == digest
    assert model_digest(FlaxVQGANModel.from_pretrained(tmp_path / "msgpack")) == digest
    assert model_digest(FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=1)) != digest
    other_beta = VQGANConfig.from_preset("tiny", beta=0.5)
    assert params_digest(other_beta, model.params) != digest
    one = model.params["quantize"]["embedding"]["embedding"]
    changed = {**model.params, "quantize": {"embedding": {"embedding": one.at[0, 0].add(1e-7)}}}
    assert params_digest(model.config, changed) != digest  # one codebook entry, in its last bits


def test_digest_is_cached_while_params_stay_the_same_object(tiny):
    model = FlaxVQGANModel.from_pretrained(tiny)
    first = model_digest(model)
    assert model._digest[0] is model.params and model_digest(model) == first
    model.params = FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=3).params
    assert model_digest(model) != first


def test_resume_accepts_the_same_weights_elsewhere_and_refuses_others(tiny, images, tmp_path, capsys):
    out = tmp_path / "tokens"
    staged = tmp_path / "node-2" / "model"  # the same model staged at another path (another install, node)
    shutil.copytree(tiny, staged)
    other = tmp_path / "other"
    FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=1).save_pretrained(other)
    code, _, err = run_cli(capsys, "encode", images / "img0.png", images / "img1.png", "--model", tiny, "--out", out,
                        "--format", "parquet", "--quiet")  # fmt: skip
    assert code == 0, err
    metadata = json.loads((out / ".vqgan_flax" / "metadata.json").read_text())
    assert metadata["model_digest"] == model_digest(FlaxVQGANModel.from_pretrained(tiny))
    assert metadata["dtype"] == "float32" and metadata["token_file_version"] == 3
    before = sorted(os.listdir(out)), (out / ".vqgan_flax" / "metadata.json").read_bytes()

    code, stdout, err = run_cli(capsys, "encode", images, "--model", staged, "--out", out, "--format", "parquet", "-q")
    assert code == 0 and "wrote 1 x" in stdout and "(2 already there" in stdout, err

    after_resume = sorted(os.listdir(out))
    code, _, err = run_cli(capsys, "encode", images, "--model", other, "--out", out, "--format", "parquet", "--quiet")
    assert code == 1 and err.count("\n") == 1
    assert f"model_digest={metadata['model_digest']!r}, this run has 'sha256:" in err and "other weights" in err
    code, _, err = run_cli(capsys, "encode", images, "--model", staged, "--out", out, "--format", "parquet",
                        "--dtype", "bfloat16", "--quiet")  # fmt: skip
    assert code == 1 and "dtype='float32', this run has 'bfloat16'" in err, err
    code, _, err = run_cli(capsys, "encode", images, "--model", staged, "--out", out, "--format", "parquet",
                        "--size", "32", "--quiet")  # fmt: skip
    assert code == 1 and "image_size=16, this run has 32" in err, err
    assert sorted(os.listdir(out)) == after_resume and len(after_resume) == len(before[0]) + 1
    assert (out / ".vqgan_flax" / "metadata.json").read_bytes() == before[1]  # refused runs touch no file


def test_records_without_a_digest_are_compared_as_they_were_written():
    version_2 = {"model": "/a/model", "revision": None, "image_size": 16, "pixel_range": [-1.0, 1.0],
                 "n_embed": 32, "grid": [4, 4]}  # fmt: skip
    current = {**version_2, "model_digest": "sha256:00", "dtype": "bfloat16", "resize": 16, "crop": True}
    check_same_tokens(version_2, current, "old")  # dtype, resize and crop were not recorded then
    with pytest.raises(ValueError, match=r"old holds tokens made with model='/a/model', this run has '/b/model'"):
        check_same_tokens(version_2, {**current, "model": "/b/model"}, "old")
    recorded = {**current, "commit": "c" * 40, "hub_id": "org/a"}
    with pytest.raises(ValueError, match=r"\(tokens: org/a@cccccccccccc; this run: /b/model\): other weights"):
        check_same_tokens(recorded, {**current, "model": "/b/model", "model_digest": "sha256:01"}, "new")
    check_same_tokens(recorded, {**current, "model": "/b/model", "commit": None, "hub_id": None}, "new")
