"""The adversarial passes of issues 11 and 32 as a table: crafted and broken inputs against one source tree.

    python tests/hostile_table.py                          # this checkout
    python tests/hostile_table.py --tree /tmp/before       # another checkout (e.g. a git worktree)
    python tests/hostile_table.py --tree /tmp/before --tree . --json benchmarks/results/hostile_inputs.json

Every case runs in its own process (a crash is a signal, not a failed test) with a time limit
and its peak RSS read back from the kernel; the inputs are made once, here, by the current tree.
Each case says what a correct library does: refuse (the message's last line must name the
culprit: file, tensor, field, index or option; on the command line, one line and no traceback)
or succeed (a check inside the case asserts the result). Outcomes:

    ok          as expected
    crash       killed by a signal, over its memory limit, or over its time limit
    garbage     exit 0 where it should have refused, or a result that fails its check
    traceback   refused, but the command line printed a traceback
    unclear     refused, but the message does not name the culprit
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import hostile_table_round3
import numpy as np

from vqgan_flax.evaluation import provenance

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
OUTCOMES = ("ok", "crash", "garbage", "traceback", "unclear")

# Imports the package from the tree under test (first on PYTHONPATH, see run_case), ahead of any
# editable install of another tree.
BOOT = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
import vqgan_flax
assert vqgan_flax.__file__.startswith({tree!r}), vqgan_flax.__file__
"""
CLI = "from vqgan_flax.cli import main\nsys.exit(main({argv!r}))\n"


@dataclass
class Case:
    category: str
    name: str
    code: str  # Python run after BOOT; {d} is the data folder
    refuse: Sequence[str] = ()  # what a correct refusal's message names (any of them)
    cli: bool = False
    limit_mb: int = 2500
    timeout_s: float = 120.0
    outcome: Dict[str, str] = field(default_factory=dict)


def cli(*argv: str) -> str:
    return CLI.format(argv=list(argv))


def make_inputs(d: pathlib.Path) -> None:
    """Every file the cases read, made by the current tree (in a child process: Linux counts a
    parent's peak RSS into the peak of the children it starts, so this process stays small)."""
    from PIL import Image
    from test_hostile_inputs import PickleWriter, _one_tensor, _write_zip

    from vqgan_flax import FlaxVQGANModel, VQGANConfig

    model = FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=0)
    model.save_pretrained(d / "tiny")
    # Crafted checkpoints: tensor metadata that lies about its storage.
    _one_tensor(d, 0, (10**7,), (1,), name="huge_numel.ckpt")
    _one_tensor(d, 0, (2048,), (1,), name="past_end.ckpt")
    _one_tensor(d, 2, (2, 3), (1, 2), name="offset.ckpt")
    _one_tensor(d, 0, (10**5, 10**5), (0, 0), name="stride0.ckpt")
    _one_tensor(d, 0, (64,), (1,), storage_bytes=b"\0" * 100, name="cut_short.ckpt")
    zeros = b"\0" * (1 << 30)
    pickle_bytes = PickleWriter().state_dict({"w": lambda p: p.tensor("0", 0, (64,), (1,), 64)})
    extra = {"archive/data/99": (zeros, zipfile.ZIP_DEFLATED)}
    _write_zip(d / "unreferenced_1gb.ckpt", pickle_bytes, {"0": np.ones(64, np.float32).tobytes()}, extra)
    del zeros
    raw = bytearray(_one_tensor(d, 0, (64,), (1,), name="corrupt.ckpt").read_bytes())
    at = raw.index(np.arange(64, dtype=np.float32).tobytes()) + 40
    raw[at] ^= 0xFF  # a flipped byte inside a stored member: its CRC no longer matches
    (d / "corrupt.ckpt").write_bytes(raw)
    (d / "lwm.pkl").write_bytes(PickleWriter().state_dict({"w": lambda p: p.tensor("0", 0, (10**7,), (1,), 64)}))
    # Model folders with broken weights (msgpack, the format both versions read).
    import flax.serialization

    params = flax.serialization.msgpack_restore((d / "tiny" / "flax_model.msgpack").read_bytes())

    def folder(name: str, tree: dict, config: Optional[dict] = None) -> None:
        (d / name).mkdir()
        (d / name / "config.json").write_text(
            json.dumps(config or json.loads((d / "tiny" / "config.json").read_text()))
        )
        (d / name / "flax_model.msgpack").write_bytes(flax.serialization.msgpack_serialize(tree))

    def with_leaf(value_fn) -> dict:
        # A deep copy of params with the codebook replaced.
        tree = flax.serialization.msgpack_restore(flax.serialization.msgpack_serialize(params))
        quantize = tree["quantize"]["embedding"]
        quantize["embedding"] = value_fn(quantize["embedding"])
        return tree

    folder("int8_weights", with_leaf(lambda w: w.astype(np.int8)))
    folder("nan_weights", with_leaf(lambda w: np.where(np.arange(w.size).reshape(w.shape) == 5, np.nan, w)))
    no_attn = json.loads((d / "tiny" / "config.json").read_text())
    no_attn["attn_resolutions"] = []
    folder("config_drops_attention", params, no_attn)
    (d / "truncated_msgpack").mkdir()
    shutil.copy(d / "tiny" / "config.json", d / "truncated_msgpack")
    data = (d / "tiny" / "flax_model.msgpack").read_bytes()
    (d / "truncated_msgpack" / "flax_model.msgpack").write_bytes(data[: len(data) // 2])
    (d / "empty_safetensors").mkdir()
    shutil.copy(d / "tiny" / "config.json", d / "empty_safetensors")
    (d / "empty_safetensors" / "model.safetensors").write_bytes(b"")
    (d / "no_weights").mkdir()
    shutil.copy(d / "tiny" / "config.json", d / "no_weights")
    # Configs.
    (d / "python_tag.yaml").write_text("model:\n  params:\n    n_embed: !!python/object/apply:os.system ['true']\n")
    (d / "bad_type.yaml").write_text(
        (FIXTURES / "taming_vq" / "model.yaml").read_text().replace("ch: ", "ch: abc #", 1)
    )
    # Images.
    rng = np.random.default_rng(0)
    for sub in ("a", "b", "b/c"):
        (d / "same_names" / sub).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)).save(d / "same_names" / sub / "x.png")
    for name in ("killed", "clean"):  # "killed" gets a killed write's leftovers; "clean" stays clean
        (d / name).mkdir()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)).save(d / name / "a.png")
    Image.fromarray(rng.integers(0, 256, (8000, 1, 3)).astype(np.uint8)).save(d / "thin.png")
    (d / "truncated").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)).save(d / "truncated" / f"{i}.jpg")
    (d / "truncated" / "1.jpg").write_bytes((d / "truncated" / "1.jpg").read_bytes()[:300])
    (d / "empty_file").mkdir()
    (d / "empty_file" / "zero.png").write_bytes(b"")
    np.savez(d / "oob_tokens.npz", tokens=np.full((1, 8, 8), 32, np.int32))
    np.savez(d / "escaping_keys.npz", tokens=np.zeros((1, 8, 8), np.int32), keys=np.asarray(["../../escaped.png"]))
    (d / "existing_file").write_bytes(b"keep me")
    hostile_table_round3.make_inputs(d)


LOAD = "from vqgan_flax import FlaxVQGANModel\nFlaxVQGANModel.from_pretrained({path!r})\n"
MODEL = "import numpy as np\nfrom vqgan_flax import FlaxVQGANModel\nm = FlaxVQGANModel.from_pretrained('{d}/tiny')\n"


def cases() -> List[Case]:
    ckpt = "from vqgan_flax.conversion import load_torch_zip as load\nsd = load('{d}/%s')\n"
    return [
        Case("checkpoint", "10^7 elements over a 64-element storage", ckpt % "huge_numel.ckpt", ["huge_numel.ckpt"]),
        Case("checkpoint", "2048 elements over 64", ckpt % "past_end.ckpt" + "print(sd['w'][-4:])", ["past_end.ckpt"]),
        Case(
            "checkpoint",
            "storage offset and strides honoured",
            ckpt
            % "offset.ckpt"
            + "import numpy as np\nx = np.arange(64, dtype=np.float32)[2:][np.arange(2)[:, None] + 2 * np.arange(3)]\n"
            "assert (np.asarray(sd['w']) == x).all(), sd['w']\n",
        ),
        Case("checkpoint", "stride 0, 10^10 elements", ckpt % "stride0.ckpt", ["stride0.ckpt"]),
        Case("checkpoint", "storage bytes cut short", ckpt % "cut_short.ckpt", ["cut_short.ckpt"]),
        Case("checkpoint", "unreferenced 1 GB member (1 MB file)", ckpt % "unreferenced_1gb.ckpt", limit_mb=1000),
        Case("checkpoint", "flipped byte in a member (CRC)", ckpt % "corrupt.ckpt", ["corrupt.ckpt"]),
        Case(
            "checkpoint",
            "LWM pickle: 10^7 elements, no storage",
            "from vqgan_flax.conversion import load_pickle\nload_pickle('{d}/lwm.pkl')\n",
            ["lwm.pkl"],
        ),
        Case("weights", "int8 codebook", LOAD.format(path="{d}/int8_weights"), ["embedding"]),
        Case("weights", "NaN in the codebook", LOAD.format(path="{d}/nan_weights"), ["embedding"]),
        Case("weights", "config drops attention", LOAD.format(path="{d}/config_drops_attention"), ["attn"]),
        Case("weights", "truncated msgpack", LOAD.format(path="{d}/truncated_msgpack"), ["flax_model.msgpack"]),
        Case("weights", "empty model.safetensors", LOAD.format(path="{d}/empty_safetensors"), ["model.safetensors"]),
        Case("weights", "folder without weights", LOAD.format(path="{d}/no_weights"), ["model.safetensors"]),
        Case("weights", "mistyped local path", LOAD.format(path="{d}/no-such-model"), ["no-such-model"], timeout_s=20),
        Case(
            "config",
            "YAML with a !!python tag",
            "from vqgan_flax import VQGANConfig\nVQGANConfig.from_taming_yaml('{d}/python_tag.yaml')\n",
            ["python_tag.yaml"],
        ),
        Case(
            "config",
            "YAML field of the wrong type",
            "from vqgan_flax import VQGANConfig\nVQGANConfig.from_taming_yaml('{d}/bad_type.yaml')\n",
            ["ch"],
        ),
        Case("config", "n_embed = 0", "from vqgan_flax import VQGANConfig\nVQGANConfig(n_embed=0)\n", ["n_embed"]),
        Case(
            "config", "ch = 10^7", "from vqgan_flax import VQGANConfig\nVQGANConfig(ch=10**7)\n", ["ch"], limit_mb=4000
        ),
        Case(
            "pixels",
            "one NaN pixel in image 1",
            MODEL + "x = np.zeros((2, 16, 16, 3), np.float32)\nx[1, 3, 4, 0] = np.nan\nm.encode(x)\n",
            ["1"],
        ),
        Case("pixels", "uint8 images", MODEL + "m.encode(np.zeros((1, 16, 16, 3), np.uint8))\n", ["uint8"]),
        Case("pixels", "values 100x the pixel range", MODEL + "m.encode(np.full((1, 16, 16, 3), 100.0))\n", ["100"]),
        Case("pixels", "one channel", MODEL + "m.encode(np.zeros((1, 16, 16, 1), np.float32))\n", ["channel"]),
        Case("pixels", "four channels", MODEL + "m.encode(np.zeros((1, 16, 16, 4), np.float32))\n", ["channel"]),
        Case("pixels", "empty batch", MODEL + "m.encode(np.zeros((0, 16, 16, 3), np.float32))\n", ["empty"]),
        Case("tokens", "index n_embed", MODEL + "m.decode_code(np.full((1, 8, 8), 32))\n", ["32"]),
        Case("tokens", "index -1", MODEL + "m.decode_code(np.full((1, 8, 8), -1))\n", ["-1"]),
        Case("tokens", "float indices", MODEL + "m.decode_code(np.zeros((1, 8, 8), np.float32))\n", ["integer"]),
        Case(
            "cli",
            "--batch-size -1",
            cli("encode", "{d}/clean", "--out", "{d}/o1.npz", "--batch-size", "-1"),
            ["--batch-size"],
            cli=True,
        ),
        Case(
            "cli",
            "three inputs named x.png in different folders",
            cli(
                "encode",
                "{d}/same_names/a",
                "{d}/same_names/b",
                "--out",
                "{d}/same.npz",
                "--model",
                "{d}/tiny",
                "--quiet",
            ).replace("sys.exit(", "assert 0 == (")
            + "import numpy as np\n"
            "assert 0 == main(['decode', '{d}/same.npz', '--out', '{d}/same_out', '--model', '{d}/tiny', '--quiet'])\n"
            "import os\nn = sum(len(f) for _, _, f in os.walk('{d}/same_out'))\nassert n == 3, f'{n} outputs'\n",
            cli=True,
        ),
        Case(
            "cli",
            "run after a killed write in the input folder",
            "import os\nfrom vqgan_flax.data.image_io import atomic_write\nif os.fork() == 0:\n"
            "    atomic_write('{d}/killed/b.png', lambda f: (f.write(b'\\x89PNG half'), f.flush(), os._exit(9)))\n"
            "os.wait()\n"
            + cli("reconstruct", "{d}/killed", "--out", "{d}/killed_out", "--model", "{d}/tiny", "--quiet"),
            cli=True,
        ),
        Case(
            "images",
            "1x8000 PNG (28 kB) cropped to 256x256",
            "from vqgan_flax.data.image_io import load_image\n"
            "assert load_image('{d}/thin.png', 256).shape == (256, 256, 3)\n",
            limit_mb=1000,
        ),
        Case(
            "cli",
            "truncated JPEG among three",
            "import contextlib, io\nfrom vqgan_flax.cli import main\nerr = io.StringIO()\n"
            "with contextlib.redirect_stderr(err):\n"
            "    code = main(['encode', '{d}/truncated', '--out', '{d}/t.npz', '--model', '{d}/tiny', '--quiet'])\n"
            "assert code == 0, f'exit {code}, the two readable images are lost: {err.getvalue().strip()}'\n"
            "import numpy as np\nassert len(np.load('{d}/t.npz')['tokens']) == 2\n"
            "assert '1.jpg' in err.getvalue(), err.getvalue()\n",
            cli=True,
        ),
        Case(
            "cli",
            "zero-byte image",
            cli("encode", "{d}/empty_file", "--out", "{d}/z.npz", "--model", "{d}/tiny", "--quiet"),
            ["zero.png"],
            cli=True,
        ),
        Case(
            "cli",
            "--out is an existing folder",
            cli("encode", "{d}/clean", "--out", "{d}/killed", "--model", "{d}/tiny", "--quiet"),
            ["--out"],
            cli=True,
        ),
        Case(
            "cli",
            "--out in a missing folder",
            cli("encode", "{d}/clean", "--out", "{d}/missing/t.npz", "--model", "{d}/tiny", "--quiet"),
            ["missing"],
            cli=True,
        ),
        Case(
            "cli",
            "token outside the codebook",
            cli("decode", "{d}/oob_tokens.npz", "--out", "{d}/oob", "--model", "{d}/tiny", "--quiet"),
            ["32"],
            cli=True,
        ),
        Case(
            "cli",
            "token file keys that escape --out",
            cli("decode", "{d}/escaping_keys.npz", "--out", "{d}/esc/out", "--model", "{d}/tiny", "--quiet").replace(
                "sys.exit(", "code = ("
            )
            + "import os\nassert not os.path.exists('{d}/escaped.png')\n",
            cli=True,
        ),
        Case(
            "cli",
            "outputs honour umask 022",
            "import os\nos.umask(0o022)\n"
            + cli("encode", "{d}/clean", "--out", "{d}/mode.npz", "--model", "{d}/tiny", "--quiet").replace(
                "sys.exit(", "assert 0 == ("
            )
            + "mode = os.stat('{d}/mode.npz').st_mode & 0o777\nassert mode == 0o644, oct(mode)\n",
            cli=True,
        ),
        Case(
            "cli",
            "converter --output names an existing file",
            "from vqgan_flax.cli.convert import main\ncode = main(['--checkpoint', "
            f"'{FIXTURES}/taming_vq/last.ckpt', '--config', '{FIXTURES}/taming_vq/model.yaml', '--output', "
            "'{d}/existing_file'])\nassert open('{d}/existing_file', 'rb').read() == b'keep me'\nsys.exit(code)\n",
            ["existing_file"],
            cli=True,
        ),
        *hostile_table_round3.cases(Case, cli, LOAD, MODEL),
    ]


def run_case(case: Case, tree: str, d: pathlib.Path) -> Tuple[str, str, int]:
    script = BOOT.format(tree=tree) + case.code.replace("{d}", str(d))
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_DISABLE_PROGRESS_BARS="1", VQGAN_FLAX_CACHE_DIR="")
    env["PYTHONPATH"] = os.pathsep.join([tree, *filter(None, [os.environ.get("PYTHONPATH")])])
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=err, env=env, cwd=d)
        deadline = time.monotonic() + case.timeout_s
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                os.wait4(process.pid, 0)
                return "crash", f"over {case.timeout_s:.0f} s", 0
            time.sleep(0.05)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    peak_mb = usage.ru_maxrss // 1024
    if os.WIFSIGNALED(status):
        return "crash", f"signal {os.WTERMSIG(status)}", peak_mb
    if peak_mb > case.limit_mb:
        return "crash", f"peak RSS {peak_mb} MB > {case.limit_mb} MB", peak_mb
    code = os.WEXITSTATUS(status)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    # The exception's own line (JAX appends a note after it), else the last line.
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line)]
    last = raised[-1] if raised else lines[-1] if lines else ""
    if "AssertionError" in last:
        return "garbage", last[:160], peak_mb
    if not case.refuse:
        return ("ok", "", peak_mb) if code == 0 else ("garbage", f"exit {code}: {last[:160]}", peak_mb)
    if code == 0:
        return "garbage", "exit 0", peak_mb
    if case.cli and ("Traceback" in stderr or (len(lines) > 1 and "usage:" not in stderr)):
        return "traceback", last[:160], peak_mb
    if not any(culprit in last for culprit in case.refuse):
        return "unclear", last[:160], peak_mb
    return "ok", last[:160], peak_mb


def tree_commit(tree: str) -> str:
    result = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", tree, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()  # fmt: skip
    return result.stdout.strip() + ("+dirty" if dirty else "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", help="source tree(s) to test (default: this checkout)")
    parser.add_argument("--json", help="write the outcomes here (needs a clean checkout, as every record)")
    parser.add_argument("--allow-dirty", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-k", help="only cases whose name contains this")
    parser.add_argument("--category", action="append", help="only cases of this category (repeatable)")
    parser.add_argument("--make-inputs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make_inputs:
        make_inputs(pathlib.Path(args.make_inputs))
        return 0
    provenance.check_can_record(args.json, args.allow_dirty)
    trees = [str(pathlib.Path(t).resolve()) for t in (args.tree or [HERE.parent])]
    table = [
        c for c in cases() if (not args.k or args.k in c.name) and (not args.category or c.category in args.category)
    ]
    with tempfile.TemporaryDirectory() as work:
        results = {}
        for tree in trees:
            d = pathlib.Path(work) / f"data{len(results)}"
            d.mkdir()
            # Fresh inputs per tree: cases write outputs beside them.
            subprocess.run([sys.executable, __file__, "--make-inputs", str(d)], check=True)
            rows = []
            for case in table:
                outcome, detail, peak_mb = run_case(case, tree, d)
                rows.append({"category": case.category, "case": case.name, "outcome": outcome, "detail": detail,
                             "peak_rss_mb": peak_mb})  # fmt: skip
                print(f"{tree_commit(tree):>14}  {case.category:<10} {case.name:<45} {outcome:<9} {detail}", flush=True)
            results[tree] = {"commit": tree_commit(tree), "cases": rows}
    print()
    print(summary(results))
    if args.json:
        # The header names this harness's commit, hash and machine; each tree row names the commit tested.
        record = {**provenance.provenance(__file__, argv), "harness": "tests/hostile_table.py",
                  "trees": list(results.values())}  # fmt: skip
        provenance.write_record(args.json, record)
    return 0


def summary(results: dict) -> str:
    """Per category: how many cases, and the outcomes per tree."""
    commits = [r["commit"] for r in results.values()]
    head = "| category | cases | " + " | ".join(commits) + " |\n|---|---|" + "---|" * len(commits) + "\n"
    categories = list(dict.fromkeys(row["category"] for r in results.values() for row in r["cases"]))
    lines = []
    for category in [*categories, "all"]:
        cells = []
        for r in results.values():
            rows = [row for row in r["cases"] if category in ("all", row["category"])]
            counts = {o: sum(row["outcome"] == o for row in rows) for o in OUTCOMES}
            cells.append(", ".join(f"{n} {o}" for o, n in counts.items() if n))
        lines.append(f"| {category} | {len(rows)} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
