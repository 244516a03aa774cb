"""Reading PyTorch checkpoints without PyTorch and without executing them.

A taming ``last.ckpt`` is a PyTorch-Lightning checkpoint: a zip holding ``data.pkl`` plus one raw
file per tensor storage. Its pickle references Lightning classes (a callback used as a dict key),
so ``torch.load(weights_only=True)`` refuses it, and ``weights_only=False`` would run whatever
the pickle says. This module unpickles it with an allow-list: tensors are rebuilt as numpy arrays,
a few plain containers are allowed, and every other global becomes an inert placeholder class
that is never imported or called.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]

try:  # jax depends on ml_dtypes, so bfloat16 is normally available
    from ml_dtypes import bfloat16 as _bfloat16
except ImportError:  # pragma: no cover - only without jax
    _bfloat16 = None

# torch storage class name -> numpy dtype
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": _bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not hold what is expected."""


class InertObject:
    """Stands in for any object whose class the restricted unpickler does not allow.

    It only records what the pickle passed to it; no code of the original class ever runs.
    """

    __module_name__ = "?"
    __qualified_name__ = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = object.__new__(cls)
        obj.__dict__["_pickle_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_pickle_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # for dict subclasses
        self.__dict__.setdefault("_pickle_items", {})[key] = value

    def append(self, value: Any) -> None:  # for list subclasses
        self.__dict__.setdefault("_pickle_items_list", []).append(value)

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)

    def __repr__(self) -> str:
        return f"<inert {self.__module_name__}.{self.__qualified_name__}>"


def _inert_class(module: str, name: str) -> type:
    return type(name, (InertObject,), {"__module_name__": module, "__qualified_name__": name})


class _StorageType:
    """Marker for a torch storage class: only its dtype is used."""

    def __init__(self, name: str) -> None:
        if _STORAGE_DTYPES.get(name) is None:
            raise CheckpointError(f"unsupported tensor storage type torch.{name}")
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(
    storage: np.ndarray, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...], *unused: Any
) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2, producing an owned numpy array."""
    if not size:
        return np.array(storage[offset])
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, *unused: Any) -> np.ndarray:
    return data


def _numpy_dtype(spec: Any, *args: Any) -> np.dtype:
    dtype = np.dtype(spec) if isinstance(spec, str) else None
    if dtype is None or dtype.hasobject:
        # Object arrays would carry arbitrary pickled objects; weights never need them.
        raise CheckpointError(f"refusing numpy dtype {spec!r}")
    return dtype


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise CheckpointError(f"refusing to rebuild an array of type {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_scalar(dtype: np.dtype, data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=_numpy_dtype(dtype.str))[0]


# Everything the unpickler may resolve to real code; every entry only builds data.
_ALLOWED: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("torch", "Size"): tuple,
    # numpy arrays pickled directly (e.g. LWM's params pickle), never with object dtype.
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles torch's ``data.pkl`` into numpy arrays and plain containers; see the module doc."""

    def __init__(
        self, file: io.BufferedIOBase, storages: Optional[Mapping[str, bytes]] = None, byteorder: str = "little"
    ) -> None:
        super().__init__(file)
        self._storages = storages or {}
        self._byteorder = byteorder
        self._cache: Dict[str, np.ndarray] = {}
        self.placeholders: Dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        key = f"{module}.{name}"
        if key not in self.placeholders:
            self.placeholders[key] = _inert_class(module, name)
        return self.placeholders[key]

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 3):
            raise CheckpointError(f"unexpected persistent id {pid!r} in pickle")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"storage {key} has unsupported type {storage_type!r}")
        if key not in self._cache:
            if key not in self._storages:
                raise CheckpointError(f"storage {key} referenced by the pickle is missing from the archive")
            dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            self._cache[key] = np.frombuffer(self._storages[key], dtype=dtype)
        return self._cache[key]


def load_torch_zip(path: PathLike) -> Any:
    """Load a ``torch.save`` zip file (``.ckpt``/``.pt``/``.pth``) as numpy arrays, without torch."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a zip-format torch checkpoint (files from torch < 1.6 must be re-saved with a newer torch)"
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        byteorder = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        data_prefix = prefix + "data/"
        storages = {n[len(data_prefix) :]: archive.read(n) for n in names if n.startswith(data_prefix)}
        unpickler = RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), storages, byteorder)
        try:
            return unpickler.load()
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from None
        except Exception as err:  # a corrupt pickle, not a refused global
            raise CheckpointError(f"{path}: could not unpickle ({type(err).__name__}: {err})") from err


def load_pickle(path: PathLike) -> Any:
    """Load a plain pickle file (e.g. an LWM params dict of numpy arrays) with the allow-list
    unpickler: nothing it references is imported or called."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    with open(path, "rb") as f:
        unpickler = RestrictedUnpickler(f)
        try:
            return unpickler.load()
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from None
        except Exception as err:
            raise CheckpointError(f"{path}: could not unpickle ({type(err).__name__}: {err})") from err


def extract_state_dict(obj: Any, source: str = "<checkpoint>") -> Dict[str, np.ndarray]:
    """Find the model state dict in a loaded checkpoint (Lightning's ``state_dict``, a ``model``
    entry, or the dict itself) and keep its array entries."""
    for key in ("state_dict", "model", "params"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not state:
        raise CheckpointError(f"{source}: no tensors found (top-level keys: {sorted(map(str, obj))[:10]})")
    return state


def load_state_dict(path: PathLike) -> Dict[str, np.ndarray]:
    """Read a PyTorch state dict from ``.ckpt``/``.pt``/``.pth`` (no torch needed) or ``.safetensors``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    return extract_state_dict(load_torch_zip(path), source=path)
