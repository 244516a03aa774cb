"""Our weight files: ``flax_model.msgpack`` (and its shards with their index) and
``model.safetensors`` with ``{"format": "flax"}``, as transformers 4.x writes them, read into and
written from nested parameter dicts. Imports no other part.
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable, Optional, Tuple, Union

import flax
from flax.serialization import msgpack_restore, to_bytes
from flax.traverse_util import flatten_dict, unflatten_dict

from .files import honour_umask, open_regular
from .transaction import replace_folder

FLAX_WEIGHTS_NAME = "flax_model.msgpack"
FLAX_WEIGHTS_INDEX_NAME = "flax_model.msgpack.index.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
_SHARD_NAME = re.compile(r"flax_model-\d{5}-of-\d{5}\.msgpack")
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
    # A FIFO, a device or a symlink to one is refused before a read.
    with open_regular(path) as f:
        data = None if path.endswith(".safetensors") else f.read()
    try:
        if data is None:
            from safetensors.flax import load_file

            return unflatten_dict(load_file(path), sep=".")
        tree = msgpack_restore(data)
    except Exception as error:
        with open(path, "rb") as f:
            if f.read(7) == b"version":
                raise OSError(f"{path} is a git-lfs pointer, not the weights: run `git lfs pull`") from error
        if type(error).__name__ == "StackError":
            raise OSError(f"{path}: nested deeper than any parameter tree (msgpack StackError)") from None
        raise OSError(f"Unable to read Flax weights from {path}: {error}") from error
    if not isinstance(tree, dict):
        raise OSError(f"{path}: holds a {type(tree).__name__} at the top, not a parameter tree")
    return tree


def read_folder_weights(folder: str) -> dict:
    """Every parameter of the weights in ``folder`` (shards merged, one in memory at a time)."""
    files, _ = weight_files(folder)
    flat: dict = {}
    for path in files:
        flat.update(flatten_dict(read_weights(path)))
    return unflatten_dict(flat)


def weight_files(folder: str, single_set: bool = True) -> Tuple[list, str]:
    """The weight files to read in ``folder`` (several for a sharded msgpack checkpoint) and the
    name of the one found (in transformers' order of preference). With ``single_set`` (a folder
    the user controls) a second set of Flax weights, or shards the index does not name, is refused
    instead of one being chosen: they are what two saves in different formats or an interrupted
    one leave, and which one is current cannot be told."""
    found = next((n for n in WEIGHTS_CANDIDATES if os.path.isfile(os.path.join(folder, n))), None)
    if found is None:
        raise OSError(no_weights_message(folder))
    others = [n for n in WEIGHTS_CANDIDATES if n != found and is_flax_weights(os.path.join(folder, n))]
    if single_set and others:
        raise OSError(f"folder {folder} holds two sets of weights, {found} and {others[0]}; "
                      "remove the one that is not the model")  # fmt: skip
    if found != FLAX_WEIGHTS_INDEX_NAME:
        return [os.path.join(folder, found)], found
    index_file = os.path.join(folder, found)
    shard_names = shard_names_of(index_file)
    missing = [n for n in shard_names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        what = "not a regular file" if os.path.exists(os.path.join(folder, missing[0])) else "missing"
        raise OSError(f"{index_file}: lists {missing[0]}, which is {what}")
    stray = sorted(n for n in os.listdir(folder) if _SHARD_NAME.fullmatch(n) and n not in shard_names)
    if single_set and stray:
        raise OSError(f"{index_file}: {stray[0]} is a shard the index does not name (left by another save?)")
    return [os.path.join(folder, n) for n in shard_names], found


def write_weights(
    folder: str, params: dict, safe_serialization: bool = False, max_shard_size: Union[int, str] = "10GB"
) -> None:
    """Write ``params`` into the (new, empty) ``folder``: ``model.safetensors`` with
    ``safe_serialization`` (when it fits one shard), else ``flax_model.msgpack``, sharded above
    ``max_shard_size``. [`save_model_folder`] puts a whole save in place."""
    shards, index = shard_params(params, max_shard_size)
    if index is None and safe_serialization:
        from safetensors.flax import save_file

        flat = flatten_dict(flax.core.unfreeze(params), sep=".")
        save_file(flat, os.path.join(folder, SAFE_WEIGHTS_NAME), metadata={"format": "flax"})
        honour_umask(os.path.join(folder, SAFE_WEIGHTS_NAME))  # save_file makes it 0600
    elif index is None:
        with open(os.path.join(folder, FLAX_WEIGHTS_NAME), "wb") as f:
            f.write(to_bytes(params))
    else:
        for filename, shard in shards.items():
            with open(os.path.join(folder, filename), "wb") as f:
                f.write(to_bytes(unflatten_dict(shard, sep="/")))
        with open(os.path.join(folder, FLAX_WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")


def is_flax_weights(path: str) -> bool:
    """Whether ``path`` is one of our weight files by name (msgpack, its index and shards, or a
    ``model.safetensors`` whose metadata says ``flax``: a PyTorch one of that name is not ours)."""
    name = os.path.basename(path)
    if name in (FLAX_WEIGHTS_NAME, FLAX_WEIGHTS_INDEX_NAME) or _SHARD_NAME.fullmatch(name):
        return os.path.isfile(path)
    if name != SAFE_WEIGHTS_NAME or not os.path.isfile(path):
        return False
    return _safetensors_format(path) == "flax"


def _safetensors_format(path: str) -> Optional[str]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            return (f.metadata() or {}).get("format")
    except Exception:  # unreadable: not a format we can name
        return None


def save_model_folder(
    folder: str,
    write_config: Callable[[str], None],
    params: dict,
    safe_serialization: bool = False,
    max_shard_size: Union[int, str] = "10GB",
) -> None:
    """One save of a model folder, whole or not at all (``utils.transaction.replace_folder``):
    ``write_config(folder)`` and the weights; weight files of an earlier save in another format
    are removed by name, every other file of ``folder`` is kept."""

    def write(fresh: str) -> None:
        write_config(fresh)
        write_weights(fresh, params, safe_serialization, max_shard_size)

    replace_folder(folder, write, supersedes=is_flax_weights)


__all__ = [
    "FLAX_WEIGHTS_INDEX_NAME",
    "FLAX_WEIGHTS_NAME",
    "SAFE_WEIGHTS_NAME",
    "WEIGHTS_CANDIDATES",
    "is_flax_weights",
    "no_weights_message",
    "read_folder_weights",
    "read_weights",
    "save_model_folder",
    "shard_names_of",
    "shard_params",
    "weight_files",
    "write_weights",
]
