"""Crafted checkpoints: tensor metadata that lies about its storage, pickles that hand the tensor
rebuilder their own buffers, corrupt or oversized zip members. Each must give a ``CheckpointError``
naming the file and the storage, never a crash, an out-of-bounds read or a huge allocation.

The files are written opcode by opcode (no torch needed), as an attacker would.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from crafted_pickles import PickleWriter
from crafted_pickles import write_zip as _write_zip

from vqgan_flax.conversion import CheckpointError, load_pickle, load_state_dict, load_torch_zip


def _one_tensor(tmp_path, offset, size, stride, numel=64, storage_bytes=None, name="evil.ckpt"):
    storage = np.arange(64, dtype=np.float32).tobytes() if storage_bytes is None else storage_bytes
    pickle_bytes = PickleWriter().state_dict({"w": lambda p: p.tensor("0", offset, size, stride, numel)})
    return _write_zip(tmp_path / name, pickle_bytes, {"0": storage})


def test_honest_crafted_tensor_honours_offset_and_strides(tmp_path):
    loaded = load_state_dict(_one_tensor(tmp_path, offset=2, size=(2, 3), stride=(1, 2)))
    expected = np.arange(64, dtype=np.float32)[2:][np.arange(2)[:, None] + 2 * np.arange(3)]
    np.testing.assert_array_equal(loaded["w"], expected)
    scalar = load_state_dict(_one_tensor(tmp_path, offset=63, size=(), stride=(), name="scalar.ckpt"))
    assert scalar["w"].shape == () and float(scalar["w"]) == 63.0


@pytest.mark.parametrize(
    "offset,size,stride,message",
    [
        (0, (10**7,), (1,), r"size \(10000000,\) has 10000000 elements, its storage holds 64"),
        (0, (2048,), (1,), r"size \(2048,\) has 2048 elements, its storage holds 64"),
        (60, (8,), (1,), r"offset 60, size \(8,\) and stride \(1,\) reach element 67, past the storage's 64 elements"),
        (0, (8, 8), (8, 2), r"reach element 70, past the storage's 64"),
        (64, (), (), r"reach element 64, past the storage's 64"),
        (-4, (4,), (1,), r"offset is negative \(-4\)"),
        (0, (4,), (-1,), r"stride is negative \(-1\)"),
        (0, (10**9, 10**9), (0, 0), r"has 1000000000000000000 elements, its storage holds 64"),
        (0, (4, 4), (1,), r"size \(4, 4\) and stride \(1,\) must be sequences of one length"),
    ],
)
def test_tensor_metadata_outside_its_storage_is_refused(tmp_path, offset, size, stride, message):
    path = _one_tensor(tmp_path, offset, size, stride)
    with pytest.raises(CheckpointError, match=r"evil.ckpt: tensor on storage 0: .*" + message):
        load_torch_zip(path)


def test_storage_bytes_must_match_the_element_count(tmp_path):
    short = _one_tensor(tmp_path, 0, (64,), (1,), storage_bytes=b"\0" * 100)
    with pytest.raises(CheckpointError, match=r"evil.ckpt: storage 0 declares 100 bytes, the pickle expects 64 x 4"):
        load_torch_zip(short)
    ragged = _one_tensor(tmp_path, 0, (2,), (1,), numel=None, storage_bytes=b"\0" * 10, name="ragged.ckpt")
    with pytest.raises(CheckpointError, match=r"ragged.ckpt: storage 0 holds 10 bytes, expected a multiple of 4"):
        load_torch_zip(ragged)


def test_storage_types_and_references(tmp_path):
    writer = PickleWriter()
    pickle_bytes = writer.state_dict({"w": lambda p: p.tensor("0", 0, (2,), (1,), 2, storage="ComplexFloatStorage")})
    path = _write_zip(tmp_path / "complex.ckpt", pickle_bytes, {"0": b"\0" * 16})
    with pytest.raises(CheckpointError, match=r"complex.ckpt: unsupported tensor storage type torch.Complex"):
        load_torch_zip(path)
    pickle_bytes = PickleWriter().state_dict({"w": lambda p: p.tensor("7", 0, (2,), (1,), 2)})
    missing = _write_zip(tmp_path / "missing.ckpt", pickle_bytes, {"0": b"\0" * 8})
    with pytest.raises(CheckpointError, match=r"missing.ckpt: storage 7 referenced by the pickle is missing"):
        load_torch_zip(missing)


def test_a_buffer_made_by_the_pickle_is_not_a_storage(tmp_path):
    """The rebuilder only takes storages read from the archive: an array the pickle builds itself
    (numpy's own reconstruct path) cannot be viewed past its end."""

    def own_buffer(p: PickleWriter) -> None:
        p.global_("torch._utils", "_rebuild_tensor_v2").raw(b"(")
        p.global_("builtins", "frozenset").raw(b")R")  # any object the allow-list builds
        p.int_(0).ints([10**7]).ints([1]).raw(b"\x89").global_("collections", "OrderedDict").raw(b")R").raw(b"tR")

    path = _write_zip(tmp_path / "own.ckpt", PickleWriter().state_dict({"w": own_buffer}), {})
    with pytest.raises(CheckpointError, match=r"own.ckpt: a tensor's storage is a frozenset, not a storage of"):
        load_torch_zip(path)
    # The same in a plain (LWM-style) pickle, which has no storages at all.
    plain = tmp_path / "lwm.pkl"
    plain.write_bytes(PickleWriter().state_dict({"w": lambda p: p.tensor("0", 0, (10**7,), (1,), 64)}))
    with pytest.raises(CheckpointError, match=r"lwm.pkl: storage 0: a plain pickle cannot reference tensor storages"):
        load_pickle(plain)


def test_numpy_arrays_in_a_plain_pickle_cannot_preallocate(tmp_path):
    def big_array(p: PickleWriter) -> None:
        p.global_("numpy.core.multiarray", "_reconstruct").raw(b"(").global_("numpy", "ndarray")
        p.ints([10**7]).raw(b"X\x01\x00\x00\x00b").raw(b"tR")

    plain = tmp_path / "lwm.pkl"
    plain.write_bytes(PickleWriter().state_dict({"w": big_array}))
    with pytest.raises(CheckpointError, match=r"lwm.pkl: refusing to rebuild an array of initial shape \(10000000,\)"):
        load_pickle(plain)
    # Real numpy pickles (initial shape (0,), data in __setstate__) still load.
    import pickle

    good = tmp_path / "good.pkl"
    for protocol in (2, 4):  # protocol 2 spells bytes as _codecs.encode(text, "latin1")
        good.write_bytes(pickle.dumps({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, protocol=protocol))
        np.testing.assert_array_equal(load_pickle(good)["w"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_unreferenced_members_are_never_read(tmp_path):
    """A 64 MB member the pickle never references (deflated to kilobytes) costs nothing; only the
    referenced storages count against max_bytes."""
    zeros = b"\0" * (64 << 20)
    pickle_bytes = PickleWriter().state_dict({"w": lambda p: p.tensor("0", 0, (64,), (1,), 64)})
    extra = {"archive/data/99": (zeros, zipfile.ZIP_DEFLATED)}
    path = _write_zip(tmp_path / "bomb.ckpt", pickle_bytes, {"0": np.ones(64, np.float32).tobytes()}, extra)
    assert path.stat().st_size < 1 << 20
    state = load_state_dict(path, max_bytes=1 << 20)
    np.testing.assert_array_equal(state["w"], np.ones(64, np.float32))
    pickle_bytes = PickleWriter().state_dict({"w": lambda p: p.tensor("99", 0, (16,), (1,), None)})
    referenced = _write_zip(tmp_path / "bomb2.ckpt", pickle_bytes, {}, extra)
    with pytest.raises(CheckpointError, match=r"bomb2.ckpt: archive/data/99 declares 67108864 bytes, more than the"):
        load_state_dict(referenced, max_bytes=1 << 20)


def test_corrupt_members_and_byteorder(tmp_path):
    pickle_bytes = PickleWriter().state_dict({"w": lambda p: p.tensor("0", 0, (64,), (1,), 64)})
    path = tmp_path / "corrupt.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/data/0", np.arange(64, dtype=np.float32).tobytes(), zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    start = data.index(b"archive/data/0") + len("archive/data/0")  # the first local header's payload
    for i in range(start + 10, start + 40):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt.ckpt: (archive/data/0 is corrupt|corrupt zip archive)"):
        load_torch_zip(path)
    odd = _write_zip(tmp_path / "odd.ckpt", pickle_bytes, {"0": b"\0" * 256}, byteorder=b"middle")
    with pytest.raises(CheckpointError, match=r"odd.ckpt: byteorder is 'middle', not 'little' or 'big'"):
        load_torch_zip(odd)


def test_truncated_safetensors_names_the_file(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": np.ones(1000, np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"w.safetensors: unreadable safetensors file"):
        load_state_dict(path)


def test_fuzzed_fixture_checkpoints_never_crash_or_blow_up():
    """Seeded mutations of the real taming and LWM files for a fixed time (see fuzz_checkpoints.py):
    no crash, nothing but CheckpointError naming the file, no array larger than the file, memory
    bounded. The seed is fixed so CI is reproducible; ``VQGAN_FLAX_FUZZ_SEED`` explores others."""
    import os

    seed = int(os.environ.get("VQGAN_FLAX_FUZZ_SEED", "0"))
    script = pathlib.Path(__file__).parent / "fuzz_checkpoints.py"
    result = subprocess.run([sys.executable, str(script), "20", str(seed)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"fuzzing (seed {seed}) died with {result.returncode}: {result.stderr[-2000:]}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(summary))  # iterations and outcomes, visible with -s
    assert summary["failures"] == [], summary
    assert summary["iterations"] >= 100, summary
    assert summary["peak_rss_above_baseline_mb"] < 256, summary
    # Both readers and every mutation kind were exercised, and some mutants still load.
    kinds = {key.split(":")[0] for key in summary["outcomes"]}
    assert {"lwm-pickle", "ckpt-pickle", "ckpt-file", "ckpt-truncate", "ckpt-storage-size"} <= kinds, summary


@pytest.mark.parametrize("bad", ["int8", "bool", "nan", "inf"])
def test_weights_that_would_compute_garbage_are_refused(tmp_path, bad):
    """Non-floating or non-finite weights: refused by from_pretrained, the taming converter and
    the LWM loader alike, naming the file and the tensor."""
    import jax
    from flax.traverse_util import flatten_dict, unflatten_dict
    from safetensors.numpy import save_file

    from vqgan_flax import FlaxVQGANModel, VQGANConfig
    from vqgan_flax.conversion import ConversionError, flax_to_taming, taming_to_flax

    config = VQGANConfig.from_preset("tiny")
    params = flatten_dict(jax.tree.map(np.asarray, FlaxVQGANModel(config, seed=0).params))
    key = ("decoder", "conv_out", "kernel")
    if bad in ("int8", "bool"):
        params[key] = params[key].astype(bad)
    else:
        params[key] = params[key].copy()
        params[key][0, 0, 0, 0] = np.nan if bad == "nan" else np.inf
    message = "has dtype" if bad in ("int8", "bool") else "holds 1 non-finite values"
    folder = tmp_path / "model"
    FlaxVQGANModel(config, _do_init=False).save_pretrained(folder, params=unflatten_dict(params))
    with pytest.raises(ValueError, match=rf"model: weight decoder/conv_out/kernel {message}"):
        FlaxVQGANModel.from_pretrained(folder)
    state = flax_to_taming(unflatten_dict(params))  # float32 copies: put the bad dtype back
    if bad in ("int8", "bool"):
        state["decoder.conv_out.weight"] = state["decoder.conv_out.weight"].astype(bad)
    save_file(state, str(tmp_path / "taming.safetensors"))
    source = str(tmp_path / "taming.safetensors")
    with pytest.raises(ConversionError, match=rf"taming.safetensors: weight decoder.conv_out.weight {message}"):
        taming_to_flax(load_state_dict(source), config, source=source)


def test_bad_pixels_and_tokens_get_one_clear_message():
    from vqgan_flax import FlaxVQGANModel, VQGANConfig
    from vqgan_flax.vqgan import VQGAN

    model = FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=0)
    good = np.zeros((3, 16, 16, 3), np.float32)
    nan = good.copy()
    nan[1, 2, 3, 0] = np.nan
    cases = {
        r"pixel_values\[1\] holds non-finite values": nan,
        r"dtype uint8; the model takes floats in \[-1, 1\]": good.astype(np.uint8),
        r"pixel_values\[0\] reaches 255; the model takes \[-1, 1\] \(0..255 values\?": good + 255,
        r"pixel_values is an empty batch": good[:0],
        r"pixel_values has 4 channels .* the model takes 3": np.zeros((1, 16, 16, 4), np.float32),
        r"pixel_values has 1 channels": np.zeros((1, 16, 16, 1), np.float32),
    }
    for message, pixels in cases.items():
        for method in (model.encode, model):
            with pytest.raises(ValueError, match=message):
                method(pixels)
    tokens = np.zeros((2, 8, 8), np.int32)
    tokens[1, 3, 4] = 32
    with pytest.raises(ValueError, match=r"indices\[1, 3, 4\] = 32 is outside the codebook \[0, 32\)"):
        model.decode_code(tokens)
    with pytest.raises(ValueError, match=r"indices\[0, 0\] = -1 is outside the codebook"):
        model.decode_code(np.full((1, 64), -1))
    with pytest.raises(ValueError, match=r"indices have dtype float32"):
        model.decode_code(np.zeros((1, 64), np.float32))
    # The same through the LWM-style wrapper (which jit-compiles, so the checks must come first).
    wrapper = VQGAN.__new__(VQGAN)
    wrapper.model = model
    with pytest.raises(ValueError, match=r"outside the codebook"):
        wrapper.decode(tokens)
    with pytest.raises(ValueError, match=r"pixel_values\[1\] holds non-finite values"):
        wrapper.encode(nan[None].repeat(2, 0)[:1].reshape(1, 3, 16, 16, 3))


def test_pixel_checks_on_the_device_path_say_the_same(monkeypatch):
    """Arrays on a GPU/TPU are scanned where they live (per_image_abs_max); forced here on CPU
    arrays, the device path refuses the same images with the same messages."""
    import jax.numpy as jnp

    from vqgan_flax.models import input_checks

    pixels = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    pixels[1, 0, 0, 0], pixels[2, 3, 3, 2], pixels[3, 7, 7, 1] = np.nan, -np.inf, 12.5
    got = np.asarray(input_checks.per_image_abs_max(jnp.asarray(pixels)))
    expected = np.abs(pixels).reshape(4, -1).max(axis=1)
    np.testing.assert_array_equal(got, np.where(np.isfinite(expected), expected, np.nan))
    bf16 = np.asarray(input_checks.per_image_abs_max(jnp.asarray(pixels[[0, 3]], jnp.bfloat16)))
    assert bf16[1] == 12.5 and abs(bf16[0] - expected[0]) < 1e-2

    monkeypatch.setattr(input_checks, "_on_accelerator", lambda array: True)
    for index, message in ((1, r"pixel_values\[1\] holds non-finite"), (2, r"pixel_values\[1\] holds non-finite"),
                           (3, r"pixel_values\[1\] reaches 12.5")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            input_checks.check_pixels(jnp.asarray(pixels[[0, index]]), 3)
    input_checks.check_pixels(jnp.asarray(pixels[:1]), 3)  # a good image passes


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("n_embed", 0, r"n_embed=0 must be an integer in \[1, 16777216\]"),
        ("n_embed", -5, r"n_embed=-5 must be an integer"),
        ("embed_dim", 10**9, r"embed_dim=1000000000 must be an integer in \[1, 16384\]"),
        ("ch", "128", r"ch='128' must be an integer"),
        ("ch_mult", [1, 0], r"ch_mult=\[1, 0\] must be a non-empty list of positive integers"),
        ("attn_resolutions", "16", r"attn_resolutions='16' must be a list of positive integers"),
        ("dropout", 1.5, r"dropout=1.5 must be a number in \[0.0, 1.0\)"),
        ("temperature", 0, r"temperature=0 must be positive"),
        ("double_z", "no", r"double_z='no' must be true or false"),
    ],
)
def test_nonsense_config_values_fail_at_construction(tmp_path, field, value, message):
    from vqgan_flax import FlaxVQGANModel, VQGANConfig

    with pytest.raises(ValueError, match=message):
        VQGANConfig.from_preset("tiny", **{field: value})
    FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=0).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ValueError, match=message):
        FlaxVQGANModel.from_pretrained(tmp_path)


def test_taming_yaml_with_python_tags_or_bad_types(tmp_path):
    from vqgan_flax import VQGANConfig

    tagged = tmp_path / "evil.yaml"
    tagged.write_text("model:\n  target: !!python/object/apply:os.system ['touch pwned']\n  params: {}\n")
    with pytest.raises(ValueError, match=r"evil.yaml: not a plain YAML taming config: .* \(line 2\)"):
        VQGANConfig.from_taming_yaml(tagged)
    assert not (tmp_path / "pwned").exists()
    typed = tmp_path / "typed.yaml"
    typed.write_text(
        "model:\n  target: taming.models.vqgan.VQModel\n  params:\n    embed_dim: 8\n    n_embed: many\n"
        "    ddconfig: {ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], z_channels: 8,"
        " resolution: 16}\n"
    )
    with pytest.raises(ValueError, match=r"typed.yaml: n_embed='many' must be an integer"):
        VQGANConfig.from_taming_yaml(typed)


def test_loading_names_the_folder_file_or_unused_weights(tmp_path):
    import time

    from vqgan_flax import FlaxVQGANModel, VQGANConfig

    model = FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=0)
    model.save_pretrained(tmp_path / "attn", safe_serialization=True)
    config = json.loads((tmp_path / "attn" / "config.json").read_text())
    (tmp_path / "attn" / "config.json").write_text(json.dumps({**config, "attn_resolutions": []}))
    with pytest.raises(ValueError, match=r"attn: the config leaves 30 checkpoint weights unused, e.g. \['decoder/up_1"):
        FlaxVQGANModel.from_pretrained(tmp_path / "attn")

    (tmp_path / "empty").mkdir()
    model.config.save_pretrained(tmp_path / "empty")
    with pytest.raises(OSError, match=r"empty has no model weights \(looked for .*model.safetensors"):
        FlaxVQGANModel.from_pretrained(tmp_path / "empty")
    started = time.monotonic()
    with pytest.raises(OSError, match=r"mistyped/model: no such model folder"):
        FlaxVQGANModel.from_pretrained(str(tmp_path / "mistyped" / "model"))
    assert time.monotonic() - started < 5  # no Hub retries

    for name, fmt in (("flax_model.msgpack", False), ("model.safetensors", True)):
        folder = tmp_path / f"cut-{fmt}"
        model.save_pretrained(folder, safe_serialization=fmt)
        weights = folder / name
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        with pytest.raises(OSError, match=rf"cut-{fmt}/{name}"):
            FlaxVQGANModel.from_pretrained(folder)


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["encode", "x.png", "--out", "t.npz", "--batch-size", "-1"],
            "argument --batch-size: -1 is below the minimum 1",
        ),
        (["encode", "x.png", "--out", "t.npz", "--batch-size", "0"], "argument --batch-size: 0 is below the minimum 1"),
        (["encode", "x.png", "--out", "t.npz", "--size", "abc"], "argument --size: 'abc' is not an integer"),
        (
            ["train", "--data", "d", "--output", "o", "--learning-rate", "nan"],
            "--learning-rate: nan is not a finite number",
        ),
    ],
)
def test_cli_numeric_options_are_checked_by_the_parser(argv, message, capsys):
    from vqgan_flax.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_converter_bounds_what_a_checkpoint_may_inflate_to():
    from vqgan_flax import VQGANConfig
    from vqgan_flax.conversion import checkpoint_read_limit, expected_param_shapes

    tiny = checkpoint_read_limit(expected_param_shapes(VQGANConfig.from_preset("tiny")))
    f16 = checkpoint_read_limit(expected_param_shapes(VQGANConfig.from_preset("f16-16384")))
    assert (256 << 20) < tiny < (300 << 20)  # tiny: 8 x 1.3 MB + 256 MB
    assert 2 << 30 < f16 < 3 << 30  # f16-16384 (72 M parameters): room for Lightning's extras, no more


def test_outputs_honour_the_umask_and_killed_runs_leave_nothing_readable(tmp_path):
    """What a SIGKILL leaves (a hidden .partial file) is skipped by the next run's image listing;
    outputs get the umask's permissions, not mkstemp's 0600."""
    import os

    from PIL import Image

    from vqgan_flax.data.image_io import list_images
    from vqgan_flax.utils.files import atomic_write

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / ".b.png.x1y2.partial").write_bytes(b"\x89PNG half")  # left by a killed atomic_write
    (tmp_path / "._c.png").write_bytes(b"AppleDouble")  # macOS metadata beside copied photos
    assert list_images(tmp_path) == [str(tmp_path / "a.png")]
    previous = os.umask(0o022)
    try:
        atomic_write(str(tmp_path / "out.bin"), lambda f: f.write(b"x"))
    finally:
        os.umask(previous)
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == 0o644

    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(tmp_path / "never.bin"), interrupted)
    assert not any(name.startswith(".never") or name == "never.bin" for name in os.listdir(tmp_path))


def test_converter_output_naming_a_file_is_an_error(tmp_path, capsys):
    from vqgan_flax import FlaxVQGANModel, VQGANConfig
    from vqgan_flax.cli.convert import main

    taming = pathlib.Path(__file__).parent / "fixtures" / "taming_vq"
    existing = tmp_path / "model.bin"
    existing.write_bytes(b"keep me")
    argv = [
        "--checkpoint",
        str(taming / "last.ckpt"),
        "--config",
        str(taming / "model.yaml"),
        "--output",
        str(existing),
    ]
    assert main(argv) == 1
    assert "model.bin is a file, not a directory" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(NotADirectoryError):
        FlaxVQGANModel(VQGANConfig.from_preset("tiny"), _do_init=False).save_pretrained(existing, params={})


@pytest.mark.one_stack
def test_hostile_table_records_its_provenance(tmp_path):
    """tests/hostile_table.py (the adversarial pass as a table): one case per process against this
    checkout, and its record carries the header every results file has (commit, harness hash, date)."""
    root = pathlib.Path(__file__).resolve().parent.parent
    out = tmp_path / "hostile.json"
    result = subprocess.run([sys.executable, "tests/hostile_table.py", "-k", "truncated msgpack", "--json", str(out),
                             "--allow-dirty"], cwd=root, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert len(record["commit"]) == 40 and len(record["harness_sha256"]) == 16 and record["date"].endswith("Z")
    assert record["command"].startswith("python tests/hostile_table.py -k 'truncated msgpack'")
    [tree] = record["trees"]
    assert [(row["case"], row["outcome"]) for row in tree["cases"]] == [("truncated msgpack", "ok")]
