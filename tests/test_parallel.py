"""Many devices (8 CPU devices, see conftest) and many processes give single-device results."""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from utils import FIXTURES, assert_close

from vqgan_flax import FlaxVQGANModel, VQGANConfig, VQGANImageProcessor
from vqgan_flax.conversion import CheckpointError, config_from_lwm, load_lwm_checkpoint
from vqgan_flax.data import parallel as P
from vqgan_flax.data.distributed import encode_dataset, merge_token_shards
from vqgan_flax.data.image_io import load_image
from vqgan_flax.vqgan import VQGAN

BATCH_SIZES = [1, 7, 8, 13]


@pytest.fixture(scope="module")
def model():
    return FlaxVQGANModel.from_pretrained(FIXTURES / "vqganjax" / "checkpoint")


def _images(batch, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32)


def test_eight_devices_are_available():
    assert jax.device_count() == 8


@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_pmap_and_sharded_paths_equal_single_device(model, batch):
    x = _images(batch, seed=batch)
    single = model.encode(x)
    single_decoded = model.decode_code(single.indices)
    replicated = P.replicate_params(model.params)
    mesh = P.make_mesh()
    on_mesh = P.replicate_on_mesh(model.params, mesh)
    for name, encoded in (
        ("pmap", P.pmap_encode(model, x, replicated)),
        ("sharded", P.sharded_encode(model, x, params=on_mesh, mesh=mesh)),
    ):
        assert encoded.indices.shape == (batch, 64) and encoded.loss is None
        np.testing.assert_array_equal(encoded.indices, single.indices, err_msg=name)
        assert_close(encoded.quant_states, single.quant_states, name, atol=1e-5, rtol=1e-5)
        assert_close(encoded.latents, single.latents, name, atol=1e-5, rtol=1e-5)
    for name, decoded in (
        ("pmap", P.pmap_decode_code(model, single.indices, replicated)),
        ("sharded", P.sharded_decode_code(model, single.indices, params=on_mesh, mesh=mesh)),
        ("sharded grid", P.sharded_decode_code(model, single.indices.reshape(batch, 8, 8))),
        ("sharded decode", P.sharded_decode(model, single.quant_states)),
    ):
        assert_close(decoded, single_decoded, name, atol=1e-5, rtol=1e-5)


def test_a_sharded_input_stays_sharded(model):
    """A batch already sharded over a mesh (a pmap output too) runs sharded, the params following
    it; it is not gathered onto one device. A sharding without a mesh gets one message naming
    the ways forward."""
    from jax.sharding import NamedSharding, PartitionSpec

    x = _images(8, seed=3)
    single = model.encode(x)
    mesh = P.make_mesh()
    sharded_x = jax.device_put(x, NamedSharding(mesh, PartitionSpec(P.DATA_AXIS)))
    out = model.encode(sharded_x)
    assert len(out.indices.devices()) == 8  # computed where the batch lives
    np.testing.assert_array_equal(out.indices, single.indices)
    decoded = model.decode_code(jax.device_put(np.asarray(single.grid_indices), sharded_x.sharding))
    assert len(decoded.devices()) == 8
    assert_close(decoded, model.decode_code(single.grid_indices), "sharded decode_code", atol=1e-5, rtol=1e-5)
    pmapped = jax.pmap(lambda v: v)(x)  # current JAX: a NamedSharding over the pmap's devices
    np.testing.assert_array_equal(model.encode(pmapped).indices, single.indices)

    class OtherSharding:  # any multi-device sharding without a mesh to replicate the params onto
        pass

    class Spread:
        sharding = OtherSharding()

        def devices(self):
            return set(jax.devices())

    from vqgan_flax.hub.modeling import _params_beside

    with pytest.raises(ValueError, match=r"8 devices with OtherSharding, which has no mesh.*parallel.unshard"):
        _params_beside(Spread(), model.params)


def test_compiled_cache_is_bounded_and_shared_with_parallel(model):
    from vqgan_flax.hub.compiled import CompiledCache

    cache = CompiledCache(maxsize=2)
    built = []
    for key in ("a", "b", "a", "c"):  # "a" used again, so "b" is the least recent when "c" arrives
        cache.get_or_build(key, lambda key=key: built.append(key) or key.upper())
    assert built == ["a", "b", "c"] and list(cache) == ["a", "c"] and len(cache) == 2
    with pytest.raises(ValueError, match="maxsize=0 must be a positive integer"):
        CompiledCache(maxsize=0)
    P.pmap_encode(model, _images(2), P.replicate_params(model.params))
    assert ("pmap", "encode") in model.compiled  # parallel.py compiles into the model's cache


def test_shard_batch_and_unshard():
    sharded, pad = P.shard_batch(np.arange(13), 8)
    assert sharded.shape == (8, 2) and pad == 3
    np.testing.assert_array_equal(P.unshard(sharded, pad), np.arange(13))
    padded, pad = P.pad_batch(np.arange(16).reshape(8, 2), 4)
    assert pad == 0 and padded.shape == (8, 2)
    with pytest.raises(ValueError, match="empty batch"):
        P.shard_batch(np.zeros((0, 3)), 8)


@pytest.mark.parametrize("replicate", [False, True])
def test_lwm_fixtures_reproduced(replicate):
    vqgan = VQGAN(FIXTURES / "lwm" / "vqgan", replicate=replicate)
    assert vqgan.config.mid_block_attention is False and vqgan.config.ch_mult == [1, 2, 2]
    inputs = np.load(FIXTURES / "lwm" / "inputs.npz")
    expected = np.load(FIXTURES / "lwm" / "expected.npz")
    for kind in ("image", "video"):
        quantized, indices = vqgan.encode(inputs[kind])
        np.testing.assert_array_equal(indices, expected[f"{kind}_indices"])
        assert_close(quantized, expected[f"{kind}_quantized"], f"{kind} quantized")
        decoded = vqgan.decode(indices)
        assert_close(decoded, expected[f"{kind}_decoded"], f"{kind} decoded")
        assert float(np.abs(decoded).max()) <= 1.0


def test_vqgan_wrapper_on_a_folder_any_batch(model, tmp_path):
    model.save_pretrained(tmp_path)
    vqgan = VQGAN(str(tmp_path), replicate=True)
    x = _images(13, seed=5)
    _quantized, indices = vqgan.encode(x)
    np.testing.assert_array_equal(indices, np.asarray(model.encode(x).indices).reshape(13, 8, 8))
    assert_close(vqgan.decode(indices), np.clip(model.decode_code(indices), -1, 1), "decode", atol=1e-5)
    with pytest.raises(ValueError, match=r"images \(B, H, W, C\) or video"):
        vqgan.encode(x[0, 0])


def test_lwm_config_mapping_and_defaults(tmp_path):
    config = config_from_lwm()
    assert (config.ch, config.ch_mult, config.z_channels, config.n_embed, config.embed_dim) == (
        128,
        [1, 2, 2, 4, 6],
        64,
        8192,
        64,
    )
    assert config.mid_block_attention is False and config.attn_resolutions == []
    with pytest.raises(ValueError, match=r"unknown LWM config fields \['hidden_size'\]"):
        config_from_lwm({"hidden_size": 3})
    # Without a config.json beside the pickle, LWM's defaults apply: the tiny fixture then mismatches.
    (tmp_path / "vqgan").write_bytes((FIXTURES / "lwm" / "vqgan").read_bytes())
    with pytest.raises(Exception, match="does not match the architecture"):
        load_lwm_checkpoint(tmp_path / "vqgan")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_hostile_lwm_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    _, _params = load_lwm_checkpoint(FIXTURES / "lwm" / "vqgan")
    lwm = pickle.loads((FIXTURES / "lwm" / "vqgan").read_bytes())
    lwm["quant_conv"]["kernel"] = _RunsCode(marker)
    (tmp_path / "vqgan").write_bytes(pickle.dumps(lwm))
    (tmp_path / "config.json").write_bytes((FIXTURES / "lwm" / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match=r"not arrays: \['quant_conv/kernel \(system\)'\]"):
        VQGAN(tmp_path / "vqgan")
    assert not marker.exists()
    (tmp_path / "vqgan").write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(CheckpointError, match="not LWM's params dict"):
        load_lwm_checkpoint(tmp_path / "vqgan")
    assert not marker.exists()


def test_load_image(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255  # opaque red
    Image.fromarray(rgba).save(tmp_path / "wide.png")
    image = load_image(str(tmp_path / "wide.png"), 16)
    assert image.shape == (16, 16, 3) and image.dtype == np.float32
    assert_close(image[..., 0], np.ones((16, 16)), "red")
    assert_close(image[..., 1:], -np.ones((16, 16, 2)), "green and blue")
    rgba[..., 3] = 0  # fully transparent: composited on white
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    assert_close(load_image(str(tmp_path / "clear.png"), 16), np.ones((16, 16, 3)), "transparent → white")
    with pytest.raises(ValueError, match=r"shape \(8, 8, 3\), expected 16x16"):
        load_image(np.zeros((8, 8, 3), np.float32), 16)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_encode_like_one(tmp_path):
    model = FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=1)
    model.save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    (tmp_path / "items").mkdir()
    for i in range(11):  # 11 images: each process encodes its 5 or 6 on 4 local devices (batch 4)
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(tmp_path / "items" / f"{i:02d}.png")
    (tmp_path / "items" / "05.png").write_bytes((tmp_path / "items" / "05.png").read_bytes()[:60])  # truncated
    items = sorted(str(p) for p in (tmp_path / "items").iterdir())

    port = _free_port()
    root = FIXTURES.parent.parent
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(root / "tests" / "multiprocess_worker.py"),
                str(i),
                "2",
                str(port),
                str(tmp_path / "model"),
                str(tmp_path / "items"),
                str(tmp_path / "multi"),
            ],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        _out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    shards = sorted(os.listdir(tmp_path / "multi"))
    assert shards == ["tokens-00000-of-00002.npz", "tokens-00001-of-00002.npz"]
    first, second = (np.load(tmp_path / "multi" / s) for s in shards)
    assert first["item_ids"].tolist() == [0, 2, 4, 6, 8, 10] and second["item_ids"].tolist() == [1, 3, 7, 9]
    assert second["skipped_ids"].tolist() == [5] and "05.png" in str(second["skipped_errors"][0])
    with pytest.raises(ValueError, match=r"1 item\(s\) were skipped as unreadable, e.g. item 5: "):
        merge_token_shards(tmp_path / "multi")
    merged_ids, merged = merge_token_shards(tmp_path / "multi", return_ids=True)
    assert merged_ids.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]

    # One process, the items as a generator: the same tokens.
    single_shard = encode_dataset(iter(items), model, str(tmp_path / "single"), image_size=16, batch_size_per_device=1)
    assert os.path.basename(single_shard) == "tokens-00000-of-00001.npz"
    single_ids, single = merge_token_shards(tmp_path / "single", return_ids=True)
    assert single_ids.tolist() == merged_ids.tolist()
    readable = [p for i, p in enumerate(items) if i != 5]
    direct = np.asarray(model.encode(np.stack([load_image(p, 16) for p in readable])).indices).reshape(10, 8, 8)
    np.testing.assert_array_equal(single, direct)
    np.testing.assert_array_equal(merged, single)
    with pytest.raises(ValueError, match=r"item 5 \(.*05.png\): "):
        encode_dataset(items, model, str(tmp_path / "strict"), image_size=16, strict=True)


def test_encode_dataset_honours_a_zero_to_one_model(tiny, tmp_path):
    """The model folder owns the pixel range: a [0, 1] model (its preprocessor_config.json) gets
    [0, 1] pixels from encode_dataset, as from the processor itself, not taming's [-1, 1]."""
    folder = tmp_path / "zero_one"
    shutil.copytree(tiny, folder)
    processor = VQGANImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                    pixel_range=[0.0, 1.0])  # fmt: skip
    processor.save_pretrained(folder)
    model = FlaxVQGANModel.from_pretrained(folder)
    rng = np.random.default_rng(4)
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(paths[-1])
    encode_dataset(paths, model, str(tmp_path / "out"), barrier=False)
    tokens = merge_token_shards(tmp_path / "out")
    pixels = processor([Image.open(p) for p in paths], return_tensors="np")["pixel_values"]
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    grid = model.config.latent_shape(16, 16)
    np.testing.assert_array_equal(tokens, np.asarray(model.encode(pixels).indices).reshape(3, *grid))
    minus_one = np.asarray(model.encode(pixels * 2 - 1).indices).reshape(3, *grid)
    assert not np.array_equal(tokens, minus_one), "the test cannot tell the two ranges apart"


def test_merge_detects_missing_items(tmp_path):
    np.savez(
        tmp_path / "tokens-00000-of-00001.npz",
        item_ids=np.array([0, 2]),
        indices=np.zeros((2, 1, 1)),
        num_items=np.array(3),
    )
    with pytest.raises(ValueError, match=r"items missing \[1\] / duplicated \[\]"):
        merge_token_shards(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokens"):
        merge_token_shards(tmp_path / "empty")
