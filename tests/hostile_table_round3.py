"""Round 3 of the adversarial pass (issue 32) for ``hostile_table.py``: one case per category of
what it found bad — the reader's last holes, saves that destroyed or misled, token files trusted
too much, special files and memory, concurrency, and messages that named nothing."""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import struct
import tarfile
import zipfile
from typing import Callable, List

import numpy as np

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


# A re-save killed by SIGKILL after its second shard is written.
KILLED_SAVE_CHILD = """
import os, signal, jax
import vqgan_flax.utils.weights as w
from vqgan_flax import FlaxVQGANModel
m = FlaxVQGANModel.from_pretrained('{resaved}')
calls = []
original = w.to_bytes
def killed(tree):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(tree)
w.to_bytes = killed
m.save_pretrained('{resaved}', params=jax.tree.map(lambda x: x + 1, m.params), max_shard_size=20000)
"""


def make_inputs(d: pathlib.Path) -> None:
    """The round's inputs under ``d/r3`` (``d/tiny`` exists: the tiny model)."""
    from crafted_pickles import PickleWriter, write_zip
    from PIL import Image
    from test_hostile_reader import BILLION_LAUGHS

    r = d / "r3"
    r.mkdir()

    def rebuilt(p: PickleWriter) -> None:
        p.global_("torch._utils", "_rebuild_tensor_v2").raw(b"(")
        p.raw(b"(").str_("storage").global_("torch", "FloatStorage").str_("0").str_("cpu").int_(4).raw(b"tQ")
        p.raw(b"}").str_("data").global_("builtins", "frozenset").raw(b")R").raw(b"sb")
        p.int_(0).ints([1 << 28]).ints([1]).raw(b"\x89").global_("collections", "OrderedDict").raw(b")R").raw(b"tR")

    write_zip(r / "rebuilt.ckpt", PickleWriter().state_dict({"w": rebuilt}), {"0": bytes(16)})
    (r / "bytearray8.pkl").write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 4 << 30) + b".")
    (r / "laughs.yaml").write_text(BILLION_LAUGHS)
    (r / "run").mkdir()  # a checkpoint beside its config, converted into its own folder
    shutil.copy(FIXTURES / "taming_vq" / "last.ckpt", r / "run" / "model.ckpt")
    shutil.copy(FIXTURES / "taming_vq" / "model.yaml", r / "run" / "model.yaml")
    np.savez(r / "wide.npz", tokens=np.full((1, 8, 8), 2**32 + 5, np.int64))
    np.savez_compressed(r / "huge_grid.npz", tokens=np.zeros((1, 512, 512), np.int32))
    with zipfile.ZipFile(r / "inflates.npz", "w", zipfile.ZIP_DEFLATED) as archive:  # 2.5 GB inflated
        with archive.open("tokens.npy", "w", force_zip64=True) as member:
            shape = (2500, 512, 512)
            np.lib.format.write_array_header_1_0(member, {"descr": "<i4", "fortran_order": False, "shape": shape})
            chunk = bytes(1 << 24)
            for _ in range(2500 * 512 * 512 * 4 // len(chunk)):
                member.write(chunk)
    import pyarrow as pa
    import pyarrow.parquet as pq

    (r / "long_row").mkdir()
    tokens = pa.ListArray.from_arrays(pa.array([0, 1 << 27], pa.int32()), pa.array(np.zeros(1 << 27, np.int32)))
    table = pa.table({"key": ["a.png"], "tokens": tokens, "frames": [1], "height": [8192], "width": [16384]})
    pq.write_table(table, r / "long_row" / "part-000-00000.parquet")
    np.savez(r / "nan_range.npz", tokens=np.zeros((1, 8, 8), np.int32), pixel_range=np.array([np.nan, np.nan]))
    (r / "big.bin").write_bytes(bytes(1 << 20))
    np.savez(r / "file_model.npz", tokens=np.zeros((1, 8, 8), np.int32), model=np.array(str(r / "big.bin")))
    (r / "fifo_in").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(r / "fifo_in" / "a.png")
    os.mkfifo(r / "fifo_in" / "b.png")
    os.mkfifo(r / "fifo.npz")
    (r / "zero_shard").mkdir()
    shutil.copy(d / "tiny" / "config.json", r / "zero_shard")
    index = {"weight_map": {"quantize/embedding/embedding": "flax_model-00001-of-00001.msgpack"}}
    (r / "zero_shard" / "flax_model.msgpack.index.json").write_text(json.dumps(index))
    (r / "zero_shard" / "flax_model-00001-of-00001.msgpack").symlink_to("/dev/zero")
    Image.fromarray(np.zeros((12000, 12000), np.uint16)).save(r / "deep16.png")
    image = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image, format="PNG")
    with tarfile.open(r / "one_sample.tar.gz", "w:gz", compresslevel=1) as archive:
        for data in [image.getvalue()] + [bytes(200 << 20)] * 8:
            info = tarfile.TarInfo("0001.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    preprocessor = {
        "size": {"shortest_edge": 16},
        "crop_size": {"height": 16, "width": 16},
        "do_resize": True,
        "do_center_crop": True,
        "pixel_range": [-1, 1],
    }
    for name, change in (("crop0", {"crop_size": {"height": 0, "width": 0}}), ("resize_no", {"do_resize": "no"})):
        shutil.copytree(d / "tiny", r / name)
        (r / name / "preprocessor_config.json").write_text(json.dumps({**preprocessor, **change}))
    (r / "jsonl_inf").mkdir()
    record = {"key": "a.png", "vision": [0] * 64, "frames": 1e400, "height": 8, "width": 8}
    (r / "jsonl_inf" / "part-000-00000.jsonl").write_text(json.dumps(record) + "\n")
    shutil.copytree(d / "tiny", r / "list_msgpack")
    (r / "list_msgpack" / "flax_model.msgpack").write_bytes(b"\x93\x01\x02\x03")


def cases(case: Callable, cli: Callable, load: str, model: str) -> List:
    """The round's cases, built with ``hostile_table``'s ``Case`` and ``cli`` helpers."""
    r = "{d}/r3"
    decode = lambda tokens, out: cli("decode", f"{r}/{tokens}", "--out", f"{r}/{out}", "--model", "{d}/tiny", "-q")  # noqa: E731
    # The killed save runs in a process of its own: a fork of a process running JAX may hang.
    killed_save = (
        "import subprocess, jax\nfrom vqgan_flax import FlaxVQGANModel\n"
        "m = FlaxVQGANModel.from_pretrained('{d}/tiny')\n"
        f"m.save_pretrained('{r}/resaved', max_shard_size=20000)\n"
        f"child = {KILLED_SAVE_CHILD.replace('{resaved}', r + '/resaved')!r}\n"
        "assert subprocess.run([sys.executable, '-c', child]).returncode == -9\n"
        f"n = FlaxVQGANModel.from_pretrained('{r}/resaved')\n"
        "assert all((a == b).all() for a, b in zip(jax.tree.leaves(n.params), jax.tree.leaves(m.params)))\n"
    )
    locked = (
        (
            "import os, time\nfrom vqgan_flax.data.writers import ShardedTokenWriter\n"
            "read, write = os.pipe()\nchild = os.fork()\nif child == 0:\n"
            "    w = ShardedTokenWriter('" + r + "/locked', 'jsonl', {{'model': 'm'}})\n"
            "    os.write(write, b'x')\n    time.sleep(60)\n    os._exit(0)\nos.read(read, 1)\n"
            "import contextlib, io\nerr = io.StringIO()\nfrom vqgan_flax.cli import main\n"
            "with contextlib.redirect_stderr(err):\n"
            "    code = main(['encode', '{d}/clean', '--out', '" + r + "/locked', '--format', 'jsonl', '--model',"
            " '{d}/tiny', '-q'])\n"
            "os.kill(child, 9)\nassert code == 1 and f'process id {{child}}' in err.getvalue(), err.getvalue()\n"
        )
        .replace("{{", "{")
        .replace("}}", "}")
    )
    return [
        case(
            "reader",
            "BUILD replaces a storage's buffer",
            f"from vqgan_flax.conversion import load_torch_zip\nload_torch_zip('{r}/rebuilt.ckpt')\n",
            ["rebuilt.ckpt"],
        ),
        case(
            "reader",
            "12-byte pickle: BYTEARRAY8 of 4 GiB",
            f"from vqgan_flax.conversion import load_pickle\nload_pickle('{r}/bytearray8.pkl')\n",
            ["bytearray8.pkl"],
            limit_mb=1000,
        ),
        case(
            "reader",
            "YAML aliases expanding to 4.8 M nodes",
            f"from vqgan_flax import VQGANConfig\nVQGANConfig.from_taming_yaml('{r}/laughs.yaml')\n",
            ["laughs.yaml"],
            limit_mb=1000,
            timeout_s=30,
        ),
        case(
            "saves",
            "convert into the checkpoint's own folder",
            cli(
                "convert",
                "--checkpoint",
                f"{r}/run/model.ckpt",
                "--config",
                f"{r}/run/model.yaml",
                "--output",
                f"{r}/run",
            ).replace("sys.exit(", "code = (")
            + f"import os\nassert sorted(os.listdir('{r}/run')) == ['model.ckpt', 'model.yaml']\nsys.exit(code)\n",
            ["holds the input"],
            cli=True,
        ),
        case(
            "saves",
            "safetensors save over a msgpack save",
            model + f"import jax\nm.save_pretrained('{r}/twice')\nn = jax.tree.map(lambda x: x + 1, m.params)\n"
            f"m.save_pretrained('{r}/twice', params=n, safe_serialization=True)\n"
            + load.format(path=f"{r}/twice").replace(
                "FlaxVQGANModel.from_pretrained", "l = FlaxVQGANModel.from_pretrained"
            )
            + "assert all((a == b).all() for a, b in zip(jax.tree.leaves(l.params), jax.tree.leaves(n)))\n",
        ),
        case("saves", "SIGKILL between the shard writes of a re-save", killed_save),
        case(
            "saves",
            "--to-taming over its own source",
            cli("convert", "--to-taming", "{d}/tiny", "--output", "{d}/tiny/model.safetensors"),
            ["inside the input"],
            cli=True,
        ),
        case("tokens", "int64 token 2**32 + 5", decode("wide.npz", "wide"), ["4294967301"], cli=True),
        case(
            "tokens",
            "1.7 KB npz claiming a 512 x 512 grid",
            decode("huge_grid.npz", "hg"),
            ["512x512"],
            cli=True,
            limit_mb=1500,
        ),
        case(
            "tokens",
            "compressed npz inflating to 2.5 GB",
            decode("inflates.npz", "inf"),
            ["inflates.npz"],
            cli=True,
            limit_mb=1000,
        ),
        case(
            "tokens", "parquet row of 2**27 tokens", decode("long_row", "lr"), ["row group 0"], cli=True, limit_mb=1000
        ),
        case("tokens", "recorded pixel_range [nan, nan]", decode("nan_range.npz", "nr"), ["pixel_range"], cli=True),
        case(
            "tokens",
            "recorded model naming a file",
            cli("decode", f"{r}/file_model.npz", "--out", f"{r}/fm", "-q"),
            ["big.bin"],
            cli=True,
        ),
        case(
            "special",
            "FIFO in an input folder",
            cli(
                "encode", f"{r}/fifo_in", "--out", f"{r}/fifo_out", "--format", "jsonl", "--model", "{d}/tiny", "-q"
            ).replace("sys.exit(", "assert 0 == (")
            + f"assert 'a FIFO' in open('{r}/fifo_out/.vqgan_flax/errors-000.jsonl').read()\n",
            timeout_s=60,
        ),
        case(
            "special",
            "msgpack shard symlinked to /dev/zero",
            load.format(path=f"{r}/zero_shard"),
            ["flax_model-00001-of-00001.msgpack"],
            limit_mb=1000,
            timeout_s=60,
        ),
        case(
            "special",
            "encode --out naming a FIFO",
            cli("encode", "{d}/clean", "--out", f"{r}/fifo.npz", "--model", "{d}/tiny", "-q"),
            ["fifo.npz"],
            cli=True,
            timeout_s=60,
        ),
        case(
            "special",
            "280 KB 16-bit 12000 x 12000 PNG",
            "from vqgan_flax.data.image_io import open_rgb\nopen_rgb('" + r + "/deep16.png')\n",
            ["deep16.png"],
            limit_mb=1000,
        ),
        case(
            "special",
            "tar.gz whose 1.6 GB of members form one sample",
            "from vqgan_flax.data.sources import tar_items\n(item,) = tar_items(['" + r + "/one_sample.tar.gz'])\n"
            "assert item.load().size == (16, 16)\n",
            limit_mb=800,
        ),
        case("concurrency", "a second encode on a locked output folder", locked),
        case(
            "messages",
            "preprocessor crop 0 x 0",
            load.replace("FlaxVQGANModel", "VQGANImageProcessor").format(path=f"{r}/crop0"),
            ["crop0"],
        ),
        case(
            "messages",
            'preprocessor do_resize: "no"',
            load.replace("FlaxVQGANModel", "VQGANImageProcessor").format(path=f"{r}/resize_no"),
            ["do_resize"],
        ),
        case("messages", "JSONL frames: 1e400", decode("jsonl_inf", "ji"), ["frames"], cli=True),
        case("messages", "msgpack holding a list", load.format(path=f"{r}/list_msgpack"), ["flax_model.msgpack"]),
    ]
