"""``FlaxHubModel``, our transformers-independent base, on a two-layer toy model: the same files and
behaviour as transformers 4.x's ``FlaxPreTrainedModel`` (checked byte for byte where that exists),
Hub downloads from a faked cache (revisions, subfolders, offline mode) and uploads."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import save_file
from transformers import PretrainedConfig
from utils import fake_hub_cache

from vqgan_flax.hub.base import FlaxHubModel, _transformers_flax_base, on_host, read_checkpoint, strip_prefix
from vqgan_flax.utils.weights import shard_params

TRANSFORMERS_FLAX = _transformers_flax_base()


class ToyConfig(PretrainedConfig):
    model_type = "vqgan-flax-toy"

    def __init__(self, features: int = 4, **kwargs):
        self.features = features
        super().__init__(**kwargs)


class ToyModule(nn.Module):
    config: ToyConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="head")(nn.Dense(self.config.features, name="body")(x))


class ToyModelMixin:
    config_class = ToyConfig
    base_model_prefix = "toy"
    main_input_name = "inputs"

    def __init__(self, config, input_shape=(1, 2), seed=0, dtype=jnp.float32, _do_init=True, **kwargs):
        module = ToyModule(config=config, dtype=dtype)
        super().__init__(config, module, input_shape=input_shape, seed=seed, dtype=dtype, _do_init=_do_init)

    def init_weights(self, rng, input_shape, params=None):
        return self.module.init(rng, jnp.zeros(input_shape))["params"]


class FlaxToyModel(ToyModelMixin, FlaxHubModel):
    pass


def _tree_equal(a, b) -> None:
    flat_a, flat_b = flatten_dict(a), flatten_dict(b)
    assert set(flat_a) == set(flat_b)
    for key in flat_a:
        assert np.asarray(flat_a[key]).dtype == np.asarray(flat_b[key]).dtype, key
        np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg=str(key))


@pytest.fixture()
def toy():
    return FlaxToyModel(ToyConfig(features=5), seed=1)


@pytest.mark.parametrize("safe", [True, False])
def test_round_trip_is_bit_identical(toy, tmp_path, safe):
    toy.save_pretrained(tmp_path, safe_serialization=safe)
    names = sorted(os.listdir(tmp_path))
    assert names == ["config.json", "model.safetensors" if safe else "flax_model.msgpack"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["ToyModel"] and config["features"] == 5
    loaded = FlaxToyModel.from_pretrained(tmp_path)
    assert loaded.config.features == 5
    _tree_equal(loaded.params, toy.params)
    x = np.ones((2, 2), np.float32)
    np.testing.assert_array_equal(
        loaded.module.apply({"params": loaded.params}, x), toy.module.apply({"params": toy.params}, x)
    )


def test_saving_again_replaces_the_other_format(toy, tmp_path):
    """Loading prefers msgpack, so a stale msgpack beside new safetensors would win (transformers
    only removes files of the format being written): a save removes our other weight files, by
    name, and keeps everything else of the folder."""
    toy.save_pretrained(tmp_path, safe_serialization=False, max_shard_size=60)  # sharded msgpack
    (tmp_path / "README.md").write_text("my notes")
    (tmp_path / "model.ckpt").write_bytes(b"the user's checkpoint")  # transformers 4 deletes model*
    newer = jax.tree.map(lambda x: x + 1, toy.params)
    toy.save_pretrained(tmp_path, params=newer, safe_serialization=True)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "config.json", "model.ckpt", "model.safetensors"]
    assert (tmp_path / "model.ckpt").read_bytes() == b"the user's checkpoint"
    _tree_equal(FlaxToyModel.from_pretrained(tmp_path).params, newer)
    toy.save_pretrained(tmp_path, safe_serialization=False)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "config.json", "flax_model.msgpack", "model.ckpt"]
    _tree_equal(FlaxToyModel.from_pretrained(tmp_path).params, toy.params)


def test_sharded_msgpack(toy, tmp_path):
    shards, index = shard_params(toy.params, max_shard_size=60)
    assert index is not None and len(shards) > 1 and index["metadata"]["total_size"] == 4 * (2 * 5 + 5 + 5 * 3 + 3)
    toy.save_pretrained(tmp_path, max_shard_size=60)
    files = sorted(os.listdir(tmp_path))
    assert "flax_model.msgpack.index.json" in files and "flax_model-00003-of-00003.msgpack" in files
    _tree_equal(FlaxToyModel.from_pretrained(tmp_path).params, toy.params)
    assert shard_params(toy.params, "10GB")[1] is None
    with pytest.raises(ValueError, match="max_shard_size='10 furlongs'"):
        shard_params(toy.params, "10 furlongs")


def test_do_init_false(toy, tmp_path):
    toy.save_pretrained(tmp_path)
    model, params = FlaxToyModel.from_pretrained(tmp_path, _do_init=False)
    _tree_equal(params, toy.params)
    assert {leaf.devices().pop().platform for leaf in jax.tree.leaves(params)} == {"cpu"}
    with pytest.raises(ValueError, match="_do_init=False"):
        model.params  # noqa: B018
    assert model.required_params == set(flatten_dict(toy.params))
    assert {k: v.shape for k, v in flatten_dict(model.params_shape_tree).items()} == {
        k: v.shape for k, v in flatten_dict(toy.params).items()
    }


def test_params_setter_checks_completeness(toy):
    incomplete = {"body": toy.params["body"]}
    with pytest.raises(ValueError, match=r"params lack 2 required parameters, e.g. \[\('head', 'bias'\)"):
        toy.params = incomplete


def test_shape_mismatch_unexpected_and_missing_keys(toy, tmp_path, caplog):
    params = jax.tree.map(np.asarray, toy.params)
    params["head"]["kernel"] = np.zeros((7, 3), np.float32)
    toy.save_pretrained(tmp_path, params=params)
    with pytest.raises(ValueError, match=r"weight head/kernel has shape \(7, 3\) in the checkpoint but \(5, 3\)"):
        FlaxToyModel.from_pretrained(tmp_path)
    reinit = FlaxToyModel.from_pretrained(tmp_path, ignore_mismatched_sizes=True)
    assert reinit.params["head"]["kernel"].shape == (5, 3)

    extra = {**jax.tree.map(np.asarray, toy.params), "ghost": {"w": np.ones(2, np.float32)}}
    del extra["head"]["bias"]
    toy.save_pretrained(tmp_path, params=extra)
    with caplog.at_level("WARNING", logger="vqgan_flax.hub.base"):
        loaded = FlaxToyModel.from_pretrained(tmp_path)
    assert "1 checkpoint weights unused, e.g. [('ghost', 'w')]" in caplog.text
    assert "1 model weights not in the checkpoint, e.g. [('head', 'bias')]" in caplog.text
    assert "ghost" not in loaded.params and loaded.params["head"]["bias"].shape == (3,)


def test_base_model_prefix_is_added_or_dropped(toy, tmp_path):
    toy.save_pretrained(tmp_path, params={"toy": toy.params})  # e.g. written by a model with a head
    _tree_equal(FlaxToyModel.from_pretrained(tmp_path).params, toy.params)


def test_casts_with_mask(toy):
    params = toy.params
    bf16 = toy.to_bf16(params)
    assert {leaf.dtype for leaf in jax.tree.leaves(bf16)} == {jnp.dtype(jnp.bfloat16)}
    assert {leaf.dtype for leaf in jax.tree.leaves(toy.to_fp16(params))} == {jnp.dtype(jnp.float16)}
    _tree_equal(
        toy.to_fp32(toy.to_fp16(jax.tree.map(lambda x: x.astype(jnp.float16), params))),
        toy.to_fp32(toy.to_fp16(params)),
    )
    mask = {"body": {"bias": False, "kernel": True}, "head": {"bias": False, "kernel": False}}
    masked = flatten_dict(toy.to_bf16(params, mask))
    assert masked["body", "kernel"].dtype == jnp.bfloat16 and masked["body", "bias"].dtype == jnp.float32
    assert masked["head", "kernel"].dtype == jnp.float32


def test_errors_name_the_file(toy, tmp_path):
    with pytest.raises(
        OSError,
        match=r"folder .*empty has no model weights \(looked for flax_model.msgpack, flax_model.msgpack.index.json, "
        r"model.safetensors\)",
    ):
        (tmp_path / "empty").mkdir()
        toy.config.save_pretrained(tmp_path / "empty")
        FlaxToyModel.from_pretrained(tmp_path / "empty")
    pointer = tmp_path / "lfs"
    toy.save_pretrained(pointer)
    (pointer / "flax_model.msgpack").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    with pytest.raises(OSError, match=r"lfs/flax_model.msgpack is a git-lfs pointer"):
        FlaxToyModel.from_pretrained(pointer)
    torch_format = tmp_path / "pt"
    toy.config.save_pretrained(torch_format)
    save_file({"body.weight": np.zeros((5, 2), np.float32)}, str(torch_format / "model.safetensors"), {"format": "pt"})
    with pytest.raises(OSError, match=r"pt/model.safetensors: safetensors format 'pt', expected 'flax'"):
        FlaxToyModel.from_pretrained(torch_format)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file is a file"):
        toy.save_pretrained(tmp_path / "file")
    with pytest.raises(ValueError, match="from_pt=True needs PyTorch"):
        FlaxToyModel.from_pretrained(pointer, from_pt=True)


def test_hub_cache_revisions_subfolder_offline(tmp_path):
    first, second = FlaxToyModel(ToyConfig(), seed=1), FlaxToyModel(ToyConfig(), seed=2)
    first.save_pretrained(tmp_path / "main", safe_serialization=True)
    second.save_pretrained(tmp_path / "v2" / "weights")
    cache = fake_hub_cache(tmp_path / "cache", "acme/toy", {"main": tmp_path / "main", "v2": tmp_path / "v2"})
    loaded = FlaxToyModel.from_pretrained("acme/toy", cache_dir=cache, local_files_only=True)
    _tree_equal(loaded.params, first.params)
    other = FlaxToyModel.from_pretrained(
        "acme/toy", cache_dir=cache, local_files_only=True, revision="v2", subfolder="weights"
    )
    _tree_equal(other.params, second.params)
    with pytest.raises(OSError):
        FlaxToyModel.from_pretrained("acme/absent", cache_dir=cache, local_files_only=True)


def test_offline_environment_reads_only_the_cache(tmp_path):
    """HF_HUB_OFFLINE=1 (read when huggingface_hub is imported, hence a subprocess) needs no flag."""
    FlaxToyModel(ToyConfig(), seed=1).save_pretrained(tmp_path / "main", safe_serialization=True)
    cache = fake_hub_cache(tmp_path / "cache", "acme/toy", {"main": tmp_path / "main"})
    script = (
        "from test_hub_base import FlaxToyModel\n"
        f"print(FlaxToyModel.from_pretrained('acme/toy', cache_dir={str(cache)!r}).params['head']['kernel'].shape)\n"
    )
    root = pathlib.Path(__file__).parent.parent
    tests = os.pathsep.join([str(root / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "PYTHONPATH": tests}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("(4, 3)")


def test_push_to_hub_uploads_the_saved_folder(toy, monkeypatch):
    import huggingface_hub

    calls = {}

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        calls["create"] = (repo_id, private, exist_ok)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, create_pr=None, revision=None, **kwargs):
        calls["upload"] = (repo_id, sorted(os.listdir(folder_path)), commit_message, create_pr, revision)
        calls["params"] = FlaxToyModel.from_pretrained(folder_path).params
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert toy.push_to_hub("acme/toy", private=True, commit_message="first", create_pr=True) == "commit-info"
    assert calls["create"] == ("acme/toy", True, True)
    assert calls["upload"] == ("acme/toy", ["config.json", "model.safetensors"], "first", True, None)
    _tree_equal(calls["params"], toy.params)


@pytest.mark.skipif(TRANSFORMERS_FLAX is None, reason="this transformers has no FlaxPreTrainedModel to compare with")
@pytest.mark.parametrize("safe", [True, False])
def test_same_bytes_as_transformers(toy, tmp_path, safe):
    """Where transformers 4.x is installed, its base and ours write the same weight bytes and read
    each other's folders."""

    class FlaxToyModelTransformers(ToyModelMixin, TRANSFORMERS_FLAX):
        pass

    theirs = FlaxToyModelTransformers(ToyConfig(features=5), seed=1)
    theirs.params = toy.params
    theirs.save_pretrained(tmp_path / "theirs", safe_serialization=safe)
    toy.save_pretrained(tmp_path / "ours", safe_serialization=safe)
    name = "model.safetensors" if safe else "flax_model.msgpack"
    assert (tmp_path / "theirs" / name).read_bytes() == (tmp_path / "ours" / name).read_bytes()
    ours_config = json.loads((tmp_path / "ours" / "config.json").read_text())
    theirs_config = json.loads((tmp_path / "theirs" / "config.json").read_text())
    assert ours_config == {**theirs_config, "architectures": ["ToyModel"]}
    _tree_equal(FlaxToyModel.from_pretrained(tmp_path / "theirs").params, toy.params)
    _tree_equal(FlaxToyModelTransformers.from_pretrained(tmp_path / "ours").params, toy.params)


@pytest.mark.skipif(TRANSFORMERS_FLAX is None, reason="this transformers has no flax_shard_checkpoint to compare with")
def test_same_shards_as_transformers(toy):
    from transformers.modeling_flax_utils import flax_shard_checkpoint

    for limit in (60, 100, "10GB"):
        ours, theirs = shard_params(toy.params, limit), flax_shard_checkpoint(toy.params, limit)
        assert ours[1] == theirs[1] and list(ours[0]) == list(theirs[0])
    # One difference: when the first weight alone exceeds the limit, transformers writes an empty
    # first shard; we do not.
    ours, theirs = shard_params(toy.params, 20), flax_shard_checkpoint(toy.params, 20)
    assert len(ours[0]) == len(theirs[0]) - 1 and not next(iter(theirs[0].values()))


def test_read_checkpoint_returns_config_leftover_kwargs_and_the_stored_tree(toy, tmp_path):
    """What from_pretrained reads before building a model: config fields overridden by keyword,
    the keywords the config does not know left for the constructor, the tree as stored."""
    toy.save_pretrained(tmp_path, safe_serialization=True)
    checkpoint = read_checkpoint(FlaxToyModel, str(tmp_path), features=7, seed=3)
    assert isinstance(checkpoint.config, ToyConfig) and checkpoint.config.features == 7
    assert checkpoint.model_kwargs == {"seed": 3}
    assert checkpoint.source is not None and pathlib.Path(checkpoint.source.folder) == tmp_path
    _tree_equal(checkpoint.state, toy.params)
    # A weights file named directly: its folder's config, no source.
    direct = read_checkpoint(FlaxToyModel, str(tmp_path / "model.safetensors"), config=ToyConfig(features=5))
    assert direct.source is None and direct.config.features == 5
    _tree_equal(direct.state, toy.params)
    with pytest.raises(ValueError, match="from_pt=True needs PyTorch"):
        read_checkpoint(FlaxToyModel, str(tmp_path), from_pt=True)
    with pytest.raises(TypeError, match="use_auth_token was removed"):
        read_checkpoint(FlaxToyModel, str(tmp_path), use_auth_token="x")
    save_file({"head.kernel": np.zeros((5, 3), np.float32)}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(OSError, match=r"model\.safetensors: safetensors format 'pt', expected 'flax'"):
        read_checkpoint(FlaxToyModel, str(tmp_path))


def test_strip_prefix_reads_a_head_models_base_and_wraps_a_bare_one():
    inner = {"body": {"kernel": 1}, "head": {"kernel": 2}}
    assert strip_prefix({"toy": inner}, "toy", {"body", "head"}) is inner  # a base model reads the subtree
    assert strip_prefix(inner, "toy", {"toy", "lm_head"}) == {"toy": inner}  # a head model wraps a bare base
    assert strip_prefix(inner, "toy", {"body", "head"}) is inner  # already the model's own names
    assert strip_prefix({"toy": inner}, "", {"toy"}) == {"toy": inner}  # no prefix: nothing to do


def test_on_host_places_every_leaf_on_the_cpu_unchanged(toy):
    host = on_host(toy.params)
    leaves = jax.tree.leaves(host)
    assert leaves and all(leaf.devices() == {jax.local_devices(backend="cpu")[0]} for leaf in leaves)
    _tree_equal(host, toy.params)
