"""Saves are whole or not at all (issue 32, part 2): a killed save leaves the previous model
loadable and the new one absent; a save removes only our own weight files, by name; an output
that is, holds or is inside its input is refused; a folder with two sets of weights is refused
instead of one being chosen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from utils import FIXTURES

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.conversion import convert_taming_checkpoint, export_to_taming
from vqgan_flax.utils import transaction
from vqgan_flax.utils.weights import is_flax_weights, weight_files

TINY = dict(ch=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=4, embed_dim=4, n_embed=16,
            resolution=16, norm_num_groups=4)  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    return FlaxVQGANModel(VQGANConfig(**TINY), seed=0)


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import jax
    import vqgan_flax.utils.weights as weights
    from vqgan_flax import FlaxVQGANModel
    model = FlaxVQGANModel.from_pretrained(sys.argv[1])
    calls = []
    original = weights.to_bytes
    def to_bytes(tree):
        calls.append(1)
        if len(calls) == int(sys.argv[2]):  # killed inside the save, after some shards are written
            os.kill(os.getpid(), signal.SIGKILL)
        return original(tree)
    weights.to_bytes = to_bytes
    if sys.argv[3] == "fallback":
        import vqgan_flax.utils.transaction as transaction
        transaction._exchange = lambda a, b: False
    model.save_pretrained(sys.argv[1], params=jax.tree.map(lambda x: x + 1, model.params), max_shard_size=20000)
""")


@pytest.mark.parametrize("swap", ["exchange", "fallback"])
def test_a_killed_save_leaves_the_previous_model(tiny, tmp_path, swap):
    folder = tmp_path / "model"
    tiny.save_pretrained(folder, max_shard_size=20000)  # a sharded save: the case that mixed before
    before = sorted(os.listdir(folder))
    assert len([n for n in before if n.startswith("flax_model-")]) > 2
    result = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(folder), "3", swap], capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert sorted(os.listdir(folder)) == before
    assert _same(FlaxVQGANModel.from_pretrained(folder).params, tiny.params)
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".partial")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.save-")
    # The next save finds that process gone and removes what it left.
    tiny.save_pretrained(folder)
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert sorted(os.listdir(folder)) == ["config.json", "flax_model.msgpack"]


@pytest.mark.parametrize("swap", ["exchange", "fallback"])
def test_a_save_keeps_the_folder_entries_it_does_not_write(tiny, tmp_path, monkeypatch, swap):
    if swap == "fallback":
        monkeypatch.setattr(transaction, "_exchange", lambda a, b: False)
    folder = tmp_path / "model"
    tiny.save_pretrained(folder, safe_serialization=True)
    (folder / "logs").mkdir()
    (folder / "logs" / "log.jsonl").write_text("{}\n")
    (folder / "link").symlink_to("logs/log.jsonl")
    os.chmod(folder, 0o750)
    tiny.save_pretrained(folder)
    assert sorted(os.listdir(folder)) == ["config.json", "flax_model.msgpack", "link", "logs"]
    assert (folder / "link").read_text() == "{}\n" and os.readlink(folder / "link") == "logs/log.jsonl"
    assert os.stat(folder).st_mode & 0o777 == 0o750  # the folder's own permissions are kept
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_a_new_folder_honours_the_umask(tiny, tmp_path):
    umask = os.umask(0o022)
    try:
        tiny.save_pretrained(tmp_path / "fresh")
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "fresh").st_mode & 0o777 == 0o755
    assert os.stat(tmp_path / "fresh" / "flax_model.msgpack").st_mode & 0o777 == 0o644


def test_saves_refuse_targets_that_are_not_folders_of_their_own(tiny, tmp_path, monkeypatch):
    with pytest.raises(NotADirectoryError, match=r"save_pretrained: /dev/null is not a directory \(a device"):
        tiny.save_pretrained("/dev/null")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotADirectoryError, match=r"fifo is not a directory \(a device, FIFO or socket\)"):
        tiny.save_pretrained(fifo)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError, match=r"dangling is a symlink to nothing"):
        tiny.save_pretrained(tmp_path / "dangling")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match=r"is the current directory or holds it"):
        tiny.save_pretrained(".")
    with pytest.raises(OSError, match=r"is the current directory or holds it"):
        tiny.save_pretrained(tmp_path.parent)
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    for number in range(6):
        (crowded / f"{number}.txt").write_text("x")
    monkeypatch.setattr(transaction, "MAX_CARRIED", 5)
    with pytest.raises(OSError, match=r"crowded holds more than 5 entries; save a model into a folder of its own"):
        tiny.save_pretrained(crowded)
    assert sorted(os.listdir(crowded)) == [f"{n}.txt" for n in range(6)]


def test_a_symlinked_folder_is_saved_where_it_points(tiny, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    tiny.save_pretrained(tmp_path / "alias")
    assert os.path.islink(tmp_path / "alias") and sorted(os.listdir(tmp_path / "real")) == [
        "config.json",
        "flax_model.msgpack",
    ]


def test_loading_refuses_two_sets_of_weights_or_stray_shards(tiny, tmp_path):
    folder = tmp_path / "model"
    tiny.save_pretrained(folder, safe_serialization=True)
    (folder / "flax_model.msgpack").write_bytes(b"an older save")
    with pytest.raises(OSError, match=r"holds two sets of weights, flax_model.msgpack and model.safetensors"):
        FlaxVQGANModel.from_pretrained(folder)
    assert weight_files(str(folder), single_set=False)[1] == "flax_model.msgpack"  # what a Hub cache gets
    os.unlink(folder / "flax_model.msgpack")
    assert weight_files(str(folder))[1] == "model.safetensors"
    tiny.save_pretrained(folder, max_shard_size=20000)
    (folder / "flax_model-00009-of-00009.msgpack").write_bytes(b"left by another save")
    with pytest.raises(OSError, match=r"index.json: flax_model-00009-of-00009.msgpack is a shard the index does not"):
        FlaxVQGANModel.from_pretrained(folder)


def test_a_pytorch_safetensors_file_is_not_ours(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert not is_flax_weights(str(tmp_path / "model.safetensors"))
    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "model.safetensors"), metadata={"format": "flax"})
    assert is_flax_weights(str(tmp_path / "model.safetensors"))
    assert not is_flax_weights(str(tmp_path / "model.ckpt")) and not is_flax_weights(str(tmp_path / "nothing"))


def test_convert_keeps_the_checkpoint_it_reads(tmp_path, capsys):
    """Converting into the folder that holds the checkpoint used to delete model.ckpt and
    model.yaml (every model* file) with exit 0; now the output is refused before anything is read."""
    from vqgan_flax.cli.convert import main as convert_main

    case = tmp_path / "run"
    case.mkdir()
    (case / "model.ckpt").write_bytes((FIXTURES / "taming_vq" / "last.ckpt").read_bytes())
    (case / "model.yaml").write_text((FIXTURES / "taming_vq" / "model.yaml").read_text())
    argv = ["--checkpoint", str(case / "model.ckpt"), "--config", str(case / "model.yaml"), "--output", str(case)]
    assert convert_main(argv) == 1
    err = capsys.readouterr().err
    assert "convert: the output folder" in err and "holds the input" in err, err
    assert sorted(os.listdir(case)) == ["model.ckpt", "model.yaml"]
    config = VQGANConfig.from_taming_yaml(case / "model.yaml")
    with pytest.raises(ValueError, match=r"convert: the output folder .*run holds the input .*model.ckpt"):
        convert_taming_checkpoint(case / "model.ckpt", case, config)
    convert_taming_checkpoint(case / "model.ckpt", case / "flax", config)
    with pytest.raises(ValueError, match=r"export to taming: the output .*flax.model.safetensors is inside the input"):
        export_to_taming(case / "flax", case / "flax" / "model.safetensors")
    with pytest.raises(ValueError, match=r"export to taming: the output .*flax is the input"):
        export_to_taming(case / "flax", case / "flax")
    state = export_to_taming(case / "flax", case / "taming.safetensors")
    assert len(state) > 0 and sorted(os.listdir(case)) == ["flax", "model.ckpt", "model.yaml", "taming.safetensors"]
