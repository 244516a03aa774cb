"""Reading PyTorch checkpoints without PyTorch and without executing them.

A taming ``last.ckpt`` is a PyTorch-Lightning checkpoint: a zip holding ``data.pkl`` plus one raw
file per tensor storage. Its pickle references Lightning classes (a callback used as a dict key),
so ``torch.load(weights_only=True)`` refuses it, and ``weights_only=False`` would run whatever
the pickle says. This module unpickles it with an allow-list: tensors are rebuilt as numpy arrays,
a few plain containers are allowed, and every other global becomes an inert placeholder class
that is never imported or called.

Tensor metadata in such a file is data, not truth: every tensor is checked against the bytes
actually present before memory is touched (numeric storage types, non-negative offset and strides,
the highest element addressed inside its storage, no more elements than the storage holds), and
only the storages the pickle references are read, each no larger than its zip entry declares.
Anything else is a ``CheckpointError`` naming the file and the tensor's storage.
"""

from __future__ import annotations

import collections
import io
import math
import operator
import os
import pickle
import struct
import zipfile
import zlib
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple, Union

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


class _Storage:
    """A token for a tensor storage read from the archive. Only ``persistent_load`` makes these, and
    the bytes stay with the unpickler that read them (looked up by the token's identity), so a
    pickle can neither hand the tensor rebuilder a buffer of its own making nor replace a storage's
    contents (``BUILD`` on a token is refused)."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError(f"storage {self.key}: the pickle tries to set a storage's state")


def _index(value: Any, what: str) -> int:
    """A non-negative Python integer (``operator.index`` refuses floats, strings, arrays)."""
    try:
        number = operator.index(value)
    except TypeError:
        raise CheckpointError(f"{what} is {type(value).__name__} {value!r}, not an integer") from None
    if number < 0:
        raise CheckpointError(f"{what} is negative ({number})")
    return number


class _StorageType:
    """Marker for a torch storage class: only its dtype is used."""

    def __init__(self, name: str) -> None:
        if _STORAGE_DTYPES.get(name) is None:
            raise CheckpointError(f"unsupported tensor storage type torch.{name}")
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_parameter(data: np.ndarray, *unused: Any) -> np.ndarray:
    return data


def _numpy_dtype(spec: Any, *args: Any) -> np.dtype:
    dtype = np.dtype(spec) if isinstance(spec, str) else None
    if dtype is None or dtype.hasobject:
        # Object arrays would carry arbitrary pickled objects; weights never need them.
        raise CheckpointError(f"refusing numpy dtype {spec!r}")
    return dtype


class _NdarrayClass:
    """``numpy.ndarray`` as a pickle names it: only an argument of ``_reconstruct``. Called, the
    real class would hand back uninitialised memory of any size the pickle asks for."""

    def __call__(self, *args: Any) -> None:
        raise CheckpointError("refusing to call numpy.ndarray (it would return uninitialised memory)")


_NDARRAY = _NdarrayClass()


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles an array as an empty one (shape (0,)) filled in by ndarray.__setstate__,
    # which checks the data's length against the shape; a non-empty start would allocate
    # whatever the file asks for.
    if subtype is not _NDARRAY:
        raise CheckpointError(f"refusing to rebuild an array of type {subtype!r}")
    if not isinstance(shape, (tuple, list)) or any(_index(n, "array shape") for n in shape):
        raise CheckpointError(f"refusing to rebuild an array of initial shape {shape!r} (numpy pickles (0,))")
    return np.ndarray.__new__(np.ndarray, tuple(shape), dtype)


# Everything the unpickler may resolve to real code; every entry only builds data. The entries
# that make new bytes (tensors, bytes, scalars, array contents) are the unpickler's own methods,
# which charge what they make against its budget (``RestrictedUnpickler._charge``).
_ALLOWED: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("torch", "Size"): tuple,
    # numpy arrays pickled directly (e.g. LWM's params pickle), never with object dtype.
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
}
_CHARGED = {("torch._utils", "_rebuild_tensor_v2"): "_rebuild_tensor", ("_codecs", "encode"): "_latin1_bytes",
            ("numpy._core.multiarray", "scalar"): "_numpy_scalar",
            ("numpy.core.multiarray", "scalar"): "_numpy_scalar"}  # fmt: skip
# Bytes a pickle may make beyond twice what it was read from (its own stream and its storages):
# room for the small objects every checkpoint builds, far below what would hurt.
_SLACK_BYTES = 1 << 20


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickles torch's ``data.pkl`` into numpy arrays and plain containers; see the module doc.

    Built on the pure-Python unpickler: the C one sizes its memo table from indices in the stream,
    so a few mutated bytes (a ``LONG_BINPUT`` index) made it allocate gigabytes (found by
    ``tests/fuzz_checkpoints.py``). Read from memory, every length in the stream is bounded by
    the bytes present (``BYTEARRAY8``, which the pure-Python unpickler allocates before reading,
    is checked against them first), and everything the allowed callables and numpy's
    ``__setstate__`` make counts against one budget: twice the bytes read (stream and storages)
    plus ``_SLACK_BYTES``, so a small pickle referencing one large value many times cannot
    multiply it.
    """

    dispatch: ClassVar[Dict[int, Callable]] = dict(pickle._Unpickler.dispatch)

    def __init__(
        self,
        file: io.BufferedIOBase,
        storages: Optional[Callable[[str, np.dtype, Optional[int]], bytes]] = None,
        byteorder: str = "little",
    ) -> None:
        super().__init__(file)
        self._read_storage = storages
        self._byteorder = byteorder
        self._cache: Dict[str, _Storage] = {}
        self._arrays: Dict[int, np.ndarray] = {}  # id(token) -> the bytes read for it
        self._stream_bytes = file.getbuffer().nbytes if isinstance(file, io.BytesIO) else math.inf
        self._budget = 2 * self._stream_bytes + _SLACK_BYTES
        self.placeholders: Dict[str, type] = {}

    def _charge(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` made by the pickle against the budget; refuse past it."""
        self._budget -= nbytes
        if self._budget < 0:
            raise CheckpointError(f"{what} would make the pickle build more than twice the bytes it was read from")

    def _load_bytearray8(self) -> None:
        # read, append and stack are set up by pickle._Unpickler.load
        (length,) = struct.unpack("<Q", self.read(8))  # type: ignore[attr-defined]
        if length > self._stream_bytes:
            raise CheckpointError(f"a BYTEARRAY8 claims {length} bytes; the pickle holds {self._stream_bytes}")
        data = self.read(length)  # type: ignore[attr-defined]
        if len(data) != length:
            raise pickle.UnpicklingError("pickle data was truncated")
        self._charge(length, "a bytearray")
        self.append(bytearray(data))  # type: ignore[attr-defined]

    def _load_build(self) -> None:
        state, target = self.stack[-1], self.stack[-2]  # type: ignore[attr-defined]
        if isinstance(target, np.ndarray):  # numpy's __setstate__ copies the array's bytes
            raw = state[-1] if isinstance(state, tuple) and state else b""
            self._charge(len(raw) if isinstance(raw, (bytes, bytearray)) else 0, "an array's contents")
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    dispatch[pickle.BUILD[0]] = _load_build

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *unused: Any) -> np.ndarray:
        """torch._utils._rebuild_tensor_v2, producing an owned numpy array of the bytes this
        unpickler read for ``storage``; the view is checked to lie inside the storage before numpy
        reads it (``as_strided`` itself checks nothing)."""
        if not isinstance(storage, _Storage) or id(storage) not in self._arrays:
            raise CheckpointError(f"a tensor's storage is a {type(storage).__name__}, not a storage of the archive")
        what = f"tensor on storage {storage.key}"
        if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(size) != len(stride):
            raise CheckpointError(f"{what}: size {size!r} and stride {stride!r} must be sequences of one length")
        offset = _index(offset, f"{what}: offset")
        size = tuple(_index(n, f"{what}: size") for n in size)
        stride = tuple(_index(n, f"{what}: stride") for n in stride)
        data = self._arrays[id(storage)]
        count = math.prod(size)
        if count > data.size:
            # Also refuses stride-0 expansions: weights are never expanded views, and a few bytes
            # must not be able to ask for gigabytes.
            raise CheckpointError(f"{what}: size {size} has {count} elements, its storage holds {data.size}")
        if count == 0:
            return np.zeros(size, data.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= data.size:
            raise CheckpointError(
                f"{what}: offset {offset}, size {size} and stride {stride} reach element {last}, "
                f"past the storage's {data.size} elements"
            )
        self._charge(count * data.dtype.itemsize, what)
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
        )
        return np.array(view)

    def _latin1_bytes(self, text: Any, encoding: str = "latin1") -> bytes:
        """``_codecs.encode`` as protocol-2 pickles use it to spell ``bytes``; nothing else."""
        if not isinstance(text, str) or encoding != "latin1":
            raise CheckpointError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
        self._charge(len(text), "_codecs.encode")
        return text.encode("latin1")

    def _numpy_scalar(self, dtype: Any, data: Any) -> np.ndarray:
        if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
            raise CheckpointError(f"refusing numpy scalar of {type(dtype).__name__} from {type(data).__name__}")
        self._charge(dtype.itemsize, "a numpy scalar")
        return np.frombuffer(data, dtype=_numpy_dtype(dtype.str))[0]

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _CHARGED:
            return getattr(self, _CHARGED[(module, name)])
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        key = f"{module}.{name}"
        if key not in self.placeholders:
            self.placeholders[key] = _inert_class(module, name)
        return self.placeholders[key]

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 3):
            raise CheckpointError(f"unexpected persistent id {pid!r} in pickle")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"storage {key} has unsupported type {storage_type!r}")
        if self._read_storage is None:
            raise CheckpointError(f"storage {key}: a plain pickle cannot reference tensor storages")
        dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
        # torch writes (storage, type, key, location, numel); numel is checked against the bytes.
        numel = _index(pid[4], f"storage {key}: element count") if len(pid) >= 5 else None
        if key in self._cache:
            known = self._arrays[id(self._cache[key])].dtype
            if known != dtype:
                raise CheckpointError(f"storage {key} is referenced as {known} and {dtype}")
            return self._cache[key]
        raw = self._read_storage(key, dtype, numel)
        if len(raw) % dtype.itemsize or (numel is not None and len(raw) != numel * dtype.itemsize):
            expected = "a multiple of" if numel is None else f"{numel} x"
            raise CheckpointError(
                f"storage {key} holds {len(raw)} bytes, expected {expected} {dtype.itemsize} ({dtype.name})"
            )
        self._budget += 2 * len(raw)
        self._cache[key] = _Storage(key)
        self._arrays[id(self._cache[key])] = np.frombuffer(raw, dtype=dtype)
        return self._cache[key]


def check_regular_file(path: str) -> None:
    """Refuse a path that is not a regular file, before anything opens it (naming it)."""
    if not os.path.isfile(path):  # a FIFO would block the read, a device read forever
        raise CheckpointError(f"{path}: " + ("not a regular file" if os.path.exists(path) else "no such file"))


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: float) -> bytes:
    """The bytes of one zip member, refused when its declared size exceeds ``limit`` and never
    more than it declares (a member that inflates past its header is corrupt)."""
    if info.file_size > limit:
        raise CheckpointError(f"{info.filename} declares {info.file_size} bytes, more than the {limit} allowed")
    try:
        with archive.open(info) as member:
            data = member.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as err:
        raise CheckpointError(f"{info.filename} is corrupt ({type(err).__name__}: {err})") from None
    if len(data) != info.file_size:
        raise CheckpointError(f"{info.filename} holds {len(data)} bytes, its zip entry declares {info.file_size}")
    return data


def load_torch_zip(path: PathLike, max_bytes: Optional[int] = None) -> Any:
    """Load a ``torch.save`` zip file (``.ckpt``/``.pt``/``.pth``) as numpy arrays, without torch.

    Only the storages the pickle references are read; ``max_bytes`` (default: no bound beyond the
    zip's own declared sizes) caps the bytes read in total, e.g. at a multiple of the model's size.
    """
    path = os.fspath(path)
    check_regular_file(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a zip-format torch checkpoint (files from torch < 1.6 must be re-saved with a newer torch)"
        )
    budget: List[float] = [math.inf if max_bytes is None else max_bytes]
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            pickles = [n for n in members if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise CheckpointError(f"expected one data.pkl in the archive, found {len(pickles)}")
            prefix = pickles[0][: -len("data.pkl")]

            def read(name: str) -> bytes:
                data = _read_member(archive, members[name], budget[0])
                budget[0] -= len(data)
                return data

            byteorder = "little"
            if prefix + "byteorder" in members:
                byteorder = read(prefix + "byteorder").decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise CheckpointError(f"byteorder is {byteorder[:20]!r}, not 'little' or 'big'")

            def read_storage(key: str, dtype: np.dtype, numel: Optional[int]) -> bytes:
                name = f"{prefix}data/{key}"
                if name not in members:
                    raise CheckpointError(f"storage {key} referenced by the pickle is missing from the archive")
                if numel is not None and members[name].file_size != numel * dtype.itemsize:
                    raise CheckpointError(
                        f"storage {key} declares {members[name].file_size} bytes, the pickle expects "
                        f"{numel} x {dtype.itemsize} ({dtype.name})"
                    )
                return read(name)

            unpickler = RestrictedUnpickler(io.BytesIO(read(pickles[0])), read_storage, byteorder)
            return unpickler.load()
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except (zipfile.BadZipFile, zlib.error) as err:
        raise CheckpointError(f"{path}: corrupt zip archive ({err})") from None
    except Exception as err:  # a corrupt pickle, not a refused global
        raise CheckpointError(f"{path}: could not unpickle ({type(err).__name__}: {err})") from None


def load_pickle(path: PathLike) -> Any:
    """Load a plain pickle file (e.g. an LWM params dict of numpy arrays) with the allow-list
    unpickler: nothing it references is imported or called."""
    path = os.fspath(path)
    check_regular_file(path)
    with open(path, "rb") as f:
        unpickler = RestrictedUnpickler(io.BytesIO(f.read()))
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


def load_state_dict(path: PathLike, max_bytes: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Read a PyTorch state dict from ``.ckpt``/``.pt``/``.pth`` (no torch needed) or ``.safetensors``;
    ``max_bytes`` caps what a torch zip may make us read (see [`load_torch_zip`])."""
    path = os.fspath(path)
    check_regular_file(path)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: unreadable safetensors file ({err})") from None
    return extract_state_dict(load_torch_zip(path, max_bytes), source=path)
