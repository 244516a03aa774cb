"""Mutation fuzzing of every other reader of files from outside, run by ``test_fuzz_files.py`` in its
own process: token files (npz, parquet, JSONL), weight files (msgpack, safetensors), a model's
``config.json`` and ``preprocessor_config.json``, taming's ``model.yaml`` and images (PNG, JPEG,
GIF, TIFF, WebP, BMP).

Each starts from a good file made here and gets a seeded mutation — bytes flipped, cut short,
bytes inserted, or a field replaced by an odd value (for the text formats). Every read must either
succeed or raise one of our errors (``ValueError`` / ``OSError`` and their subclasses) whose message
names the file; anything else escaping, a crash (the process dying), a hang (the caller's timeout)
or memory past the bound is a failure. Prints a JSON summary.

    python tests/fuzz_files.py SECONDS SEED
"""

from __future__ import annotations

import collections
import io
import json
import os
import pathlib
import resource
import sys
import tempfile
import time

import numpy as np

# Odd values a hostile text file may hold where a number, a list or a string was.
ODD = [None, True, -1, 0, 1e400, -1e400, 4.9, 2**63, "x", "", [], [1, "a"], {}, {"a": 1}, [[1]], "\u0000"]
FIELDS = {
    "config.json": ["ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "embed_dim", "n_embed",
                    "resolution", "quantizer", "norm_num_groups", "model_type", "dropout"],
    "preprocessor_config.json": ["size", "crop_size", "do_resize", "do_center_crop", "pixel_range", "resample",
                                 "do_normalize", "image_processor_type"],
    "tokens.jsonl": ["key", "vision", "frames", "height", "width"],
}  # fmt: skip


def _flip(data: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(data)
    for position in rng.integers(0, len(data), int(rng.integers(1, 16))):
        data[position] = int(rng.integers(0, 256))
    return bytes(data)


def _mutate_bytes(data: bytes, rng: np.random.Generator) -> tuple:
    kind = ("flip", "truncate", "insert")[int(rng.integers(0, 3))]
    if kind == "flip":
        return kind, _flip(data, rng)
    if kind == "truncate":
        return kind, data[: int(rng.integers(0, len(data)))]
    at = int(rng.integers(0, len(data)))
    return kind, data[:at] + bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8)) + data[at:]


def _mutate_json(record: dict, fields: list, rng: np.random.Generator) -> bytes:
    record = dict(record)
    for _ in range(int(rng.integers(1, 3))):
        record[fields[int(rng.integers(0, len(fields)))]] = ODD[int(rng.integers(0, len(ODD)))]
    return json.dumps(record).encode()


def _seeds(folder: str) -> dict:
    """The good files every mutation starts from."""
    from PIL import Image

    from vqgan_flax import FlaxVQGANModel, VQGANConfig, VQGANImageProcessor
    from vqgan_flax.data.writers import ShardedTokenWriter, lwm_record

    config = VQGANConfig(ch=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=4, embed_dim=4,
                         n_embed=16, resolution=16, norm_num_groups=4)  # fmt: skip
    model = FlaxVQGANModel(config, seed=0)
    model.save_pretrained(os.path.join(folder, "msgpack"))
    model.save_pretrained(os.path.join(folder, "safetensors"), safe_serialization=True)
    VQGANImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(
        os.path.join(folder, "msgpack")
    )
    seeds = {name: pathlib.Path(folder, "msgpack", name).read_bytes() for name in
             ("config.json", "preprocessor_config.json", "flax_model.msgpack")}  # fmt: skip
    seeds["model.safetensors"] = pathlib.Path(folder, "safetensors", "model.safetensors").read_bytes()
    tokens = np.arange(2 * 4 * 4, dtype=np.int32).reshape(2, 1, 4, 4) % 16
    buffer = io.BytesIO()
    np.savez_compressed(buffer, tokens=tokens[:, 0], keys=np.array(["a.png", "b.png"]), model=np.array("m"))
    seeds["tokens.npz"] = buffer.getvalue()
    seeds["tokens.jsonl"] = json.dumps(lwm_record("a.png", tokens[0], None)).encode()
    writer = ShardedTokenWriter(os.path.join(folder, "parquet"), "parquet", {"model": "m"})
    for i in range(2):
        writer.add(f"{i}.png", tokens[i])
    writer.close()
    seeds["tokens.parquet"] = pathlib.Path(folder, "parquet", "part-000-00000.parquet").read_bytes()
    seeds["model.yaml"] = (pathlib.Path(__file__).parent / "fixtures" / "taming_vq" / "model.yaml").read_bytes()
    pixels = np.random.default_rng(0).integers(0, 256, (24, 20, 3)).astype(np.uint8)
    for extension, fmt in (("png", "PNG"), ("jpg", "JPEG"), ("gif", "GIF"), ("tif", "TIFF"), ("webp", "WEBP"),
                           ("bmp", "BMP")):  # fmt: skip
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        seeds[f"image.{extension}"] = buffer.getvalue()
    return seeds


def _read(name: str, path: str) -> None:
    """What the library does with such a file from outside."""
    from vqgan_flax import VQGANConfig, VQGANImageProcessor
    from vqgan_flax.data.image_io import open_rgb
    from vqgan_flax.data.readers import open_tokens
    from vqgan_flax.utils.weights import read_weights

    folder = os.path.dirname(path)
    if name.startswith("tokens."):
        source = open_tokens(path if not name.endswith(".parquet") else folder)
        for _ in source.rows():
            pass
    elif name.startswith("image."):
        open_rgb(path).load()
    elif name in ("flax_model.msgpack", "model.safetensors"):
        read_weights(path)
    elif name == "config.json":
        VQGANConfig.from_pretrained(folder)
    elif name == "preprocessor_config.json":
        VQGANImageProcessor.from_pretrained(folder)
    elif name == "model.yaml":
        VQGANConfig.from_taming_yaml(path)


def _file_name(name: str) -> str:
    if name == "tokens.parquet":
        return "part-000-00000.parquet"
    if name == "tokens.jsonl":
        return "part-000-00000.jsonl"
    return name


def main(seconds: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    outcomes: collections.Counter = collections.Counter()
    failures = []
    kinds: collections.Counter = collections.Counter()  # name: what escaped
    iterations = 0
    with tempfile.TemporaryDirectory() as scratch:
        seeds = _seeds(scratch)
        baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        names = sorted(seeds)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            iterations += 1
            name = names[iterations % len(names)]
            if name in FIELDS and rng.random() < 0.5:
                kind, data = "field", _mutate_json(json.loads(seeds[name]), FIELDS[name], rng)
            else:
                kind, data = _mutate_bytes(seeds[name], rng)
            folder = os.path.join(scratch, f"case{iterations}")
            os.makedirs(folder)
            path = os.path.join(folder, _file_name(name))
            pathlib.Path(path).write_bytes(data)
            try:
                _read(name, path)
                outcomes[f"{name} {kind}: read"] += 1
            except (ValueError, OSError) as error:
                outcomes[f"{name} {kind}: refused"] += 1
                if folder not in str(error):
                    kinds[f"{name}: {type(error).__name__} naming no file"] += 1
                    failures.append(f"{name} {kind} (iteration {iterations}): no file named: {type(error).__name__}: "
                                    f"{str(error)[:300]}")  # fmt: skip
            except Exception as error:  # anything else escaping is a bug
                kinds[f"{name}: {type(error).__name__}"] += 1
                failures.append(f"{name} {kind} (iteration {iterations}): {type(error).__name__}: {str(error)[:300]}")
            for leftover in os.listdir(folder):
                os.unlink(os.path.join(folder, leftover))
            os.rmdir(folder)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "iterations": iterations,
        "outcomes": dict(sorted(outcomes.items())),
        "failures": failures[:40],
        "failure_count": len(failures),
        "failure_kinds": dict(kinds.most_common()),
        "peak_rss_above_baseline_mb": round(peak_mb - baseline_mb, 1),
        "seed": seed,
    }


if __name__ == "__main__":
    print(json.dumps(main(float(sys.argv[1]), int(sys.argv[2]))))
