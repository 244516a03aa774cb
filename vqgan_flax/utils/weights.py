"""Our weight files: ``flax_model.msgpack`` (and its shards with their index) and
``model.safetensors`` with ``{"format": "flax"}``, as transformers 4.x writes them, read into and
written from nested parameter dicts. Imports no other part.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Tuple, Union

import flax
from flax.serialization import msgpack_restore, to_bytes
from flax.traverse_util import flatten_dict, unflatten_dict

from .files import honour_umask

FLAX_WEIGHTS_NAME = "flax_model.msgpack"
FLAX_WEIGHTS_INDEX_NAME = "flax_model.msgpack.index.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
# In transformers' order of preference.
WEIGHTS_CANDIDATES = (FLAX_WEIGHTS_NAME, FLAX_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME)


def no_weights_message(folder: str) -> str:
    """The refusal of a folder without Flax weights (with a hint where it has PyTorch ones)."""
    hint = ""
    if any(os.path.isfile(os.path.join(folder, n)) for n in ("pytorch_model.bin", "last.ckpt", "model.ckpt")):
        hint = "; it has PyTorch weights: convert them with `vqgan-flax convert`"
    return f"folder {folder} has no model weights (looked for {', '.join(WEIGHTS_CANDIDATES)}){hint}"


def shard_names_of(index_file: str) -> list:
    """The shard files a msgpack index names (plain ``.msgpack`` names only)."""
    try:
        with open(index_file, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
    except (OSError, ValueError, AttributeError) as err:
        raise OSError(f"{index_file}: unreadable index ({err})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise OSError(f"{index_file}: no weight_map")
    names = sorted(set(map(str, weight_map.values())))
    if any(os.path.basename(n) != n or not n.endswith(".msgpack") for n in names):
        raise OSError(f"{index_file}: shard names must be plain .msgpack file names; got {names[:3]}")
    return names


def _file_size(size: Union[int, str]) -> int:
    """``"10GB"`` / ``"5MB"`` / ``"500KiB"`` / an int → bytes (transformers' units)."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    raise ValueError(f"max_shard_size={size!r}: expected bytes as an int or digits followed by KB/MB/GB/KiB/MiB/GiB")


def shard_params(params: dict, max_shard_size: Union[int, str] = "10GB") -> Tuple[dict, Optional[dict]]:
    """Split ``params`` into msgpack shards of at most ``max_shard_size`` bytes (a single larger
    weight gets a shard of its own), in key order, as transformers 4.x does: ``({file: flat
    shard}, index)``, with ``index=None`` when everything fits in ``flax_model.msgpack``."""
    limit = _file_size(max_shard_size)
    blocks: list = []
    block: dict = {}
    block_size = total = 0
    for key, value in flatten_dict(flax.core.unfreeze(params), sep="/").items():
        size = value.size * value.dtype.itemsize
        if block and block_size + size > limit:
            blocks.append(block)
            block, block_size = {}, 0
        block[key] = value
        block_size += size
        total += size
    blocks.append(block)
    if len(blocks) == 1:
        return {FLAX_WEIGHTS_NAME: blocks[0]}, None
    shards, weight_map = {}, {}
    for number, shard in enumerate(blocks, start=1):
        name = FLAX_WEIGHTS_NAME.replace(".msgpack", f"-{number:05d}-of-{len(blocks):05d}.msgpack")
        shards[name] = shard
        weight_map.update(dict.fromkeys(shard, name))
    return shards, {"metadata": {"total_size": total}, "weight_map": weight_map}


def read_weights(path: str) -> dict:
    """The nested parameter dict stored in a ``.safetensors`` or msgpack file."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.flax import load_file

            return unflatten_dict(load_file(path), sep=".")
        with open(path, "rb") as f:
            data = f.read()
        return msgpack_restore(data)
    except Exception as error:
        with open(path, "rb") as f:
            if f.read(7) == b"version":
                raise OSError(f"{path} is a git-lfs pointer, not the weights: run `git lfs pull`") from error
        raise OSError(f"Unable to read Flax weights from {path}: {error}") from error


def read_folder_weights(folder: str) -> dict:
    """Every parameter of the weights in ``folder`` (shards merged, one in memory at a time)."""
    files, _ = weight_files(folder)
    flat: dict = {}
    for path in files:
        flat.update(flatten_dict(read_weights(path)))
    return unflatten_dict(flat)


def weight_files(folder: str) -> Tuple[list, str]:
    """The weight files to read in ``folder`` (several for a sharded msgpack checkpoint) and the
    name of the one found (in transformers' order of preference)."""
    found = next((n for n in WEIGHTS_CANDIDATES if os.path.isfile(os.path.join(folder, n))), None)
    if found is None:
        raise OSError(no_weights_message(folder))
    if found != FLAX_WEIGHTS_INDEX_NAME:
        return [os.path.join(folder, found)], found
    index_file = os.path.join(folder, found)
    shard_names = shard_names_of(index_file)
    missing = [n for n in shard_names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise OSError(f"{index_file}: lists {missing[0]}, which is missing")
    return [os.path.join(folder, n) for n in shard_names], found


def write_weights(
    folder: str, params: dict, safe_serialization: bool = False, max_shard_size: Union[int, str] = "10GB"
) -> None:
    """Write ``params`` into ``folder``: ``model.safetensors`` with ``safe_serialization`` (when
    it fits one shard), else ``flax_model.msgpack``, sharded above ``max_shard_size``; weight files
    of an earlier save that this one does not rewrite are removed."""
    save_directory = folder
    shards, index = shard_params(params, max_shard_size)
    weights_name = SAFE_WEIGHTS_NAME if safe_serialization and index is None else FLAX_WEIGHTS_NAME
    stem = os.path.splitext(weights_name)[0]
    for filename in os.listdir(save_directory):  # weights left from an earlier save
        path = os.path.join(save_directory, filename)
        if filename.startswith(stem) and os.path.isfile(path) and filename not in shards:
            os.remove(path)
    if index is None and safe_serialization:
        from safetensors.flax import save_file

        flat = flatten_dict(flax.core.unfreeze(params), sep=".")
        save_file(flat, os.path.join(save_directory, SAFE_WEIGHTS_NAME), metadata={"format": "flax"})
        honour_umask(os.path.join(save_directory, SAFE_WEIGHTS_NAME))  # save_file makes it 0600
    elif index is None:
        with open(os.path.join(save_directory, FLAX_WEIGHTS_NAME), "wb") as f:
            f.write(to_bytes(params))
    else:
        with open(os.path.join(save_directory, FLAX_WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
        for filename, shard in shards.items():
            with open(os.path.join(save_directory, filename), "wb") as f:
                f.write(to_bytes(unflatten_dict(shard, sep="/")))


__all__ = [
    "FLAX_WEIGHTS_INDEX_NAME",
    "FLAX_WEIGHTS_NAME",
    "SAFE_WEIGHTS_NAME",
    "WEIGHTS_CANDIDATES",
    "no_weights_message",
    "read_folder_weights",
    "read_weights",
    "shard_names_of",
    "shard_params",
    "weight_files",
    "write_weights",
]
