"""2-D convolutions through oneDNN on CPU (an XLA FFI custom call); XLA's own convolution elsewhere.

XLA:CPU runs convolutions as Eigen contractions: behind oneDNN (what PyTorch runs) in float32
and without AMX / avx512_bf16 for bfloat16 (``benchmarks/op_profile.py`` measures both). On
Linux x86-64 the ``onednn-cpu-gomp`` wheels (a dependency there) carry oneDNN; the small C++
handler in ``csrc/onednn_conv.cc`` is compiled once per environment with the system's C++
compiler into ``$XDG_CACHE_HOME/vqgan_flax/kernels`` and registered as an XLA FFI target.

``conv_general_dilated`` has ``lax.conv_general_dilated``'s signature and is what the encoder and
decoder convs call (flax's ``nn.Conv(conv_general_dilated=...)``). It takes oneDNN only for what
the handler does (NHWC/HWIO, float32 or bfloat16, no dilation or groups) and only when lowering
for CPU (``lax.platform_dependent``); GPUs and TPUs get XLA's convolution. Derivatives are XLA
convolutions (a ``custom_jvp``), so training works through either path.

``VQGAN_FLAX_CONV`` chooses, read whenever a function is traced (a model compiles each method
once per input shape, so set it before the first call): ``auto`` (default: oneDNN when it is
available), ``onednn`` (fail, naming the reason, when it is not) or ``xla``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import warnings
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["conv_backend", "conv_general_dilated", "onednn_status"]

logger = logging.getLogger(__name__)

CONV_ENV = "VQGAN_FLAX_CONV"
TARGET = "vqgan_onednn_conv"
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "onednn_conv.cc")
_LIBRARY_DIST, _HEADERS_DIST = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"
_NHWC = ("NHWC", "HWIO", "NHWC")
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


class OnednnUnavailable(RuntimeError):
    """oneDNN convolutions cannot run here; the message says why."""


def _dist_file(dist: str, name: str) -> str:
    """The installed file ``name`` of distribution ``dist`` (wheels put oneDNN's data files under
    the environment's prefix, so ask the installer's record rather than guess the prefix)."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise OnednnUnavailable(f"the {dist} package is not installed (pip install {dist})") from None
    for file in files:
        if file.name == name:
            return os.path.normpath(str(file.locate()))
    raise OnednnUnavailable(f"the {dist} package has no {name}")


def _kernel_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vqgan_flax", "kernels")


def build_extension(folder: Optional[str] = None) -> str:
    """Compile ``csrc/onednn_conv.cc`` (once: the file name hashes every input) and return its path."""
    library = _dist_file(_LIBRARY_DIST, "libdnnl.so")
    header = _dist_file(_HEADERS_DIST, "dnnl.hpp")  # include/oneapi/dnnl/dnnl.hpp or include/dnnl.hpp
    include = os.path.dirname(header)
    include = os.path.dirname(os.path.dirname(include)) if include.endswith(os.path.join("oneapi", "dnnl")) else include
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise OnednnUnavailable("no C++ compiler (g++ or $CXX) to build the oneDNN convolution")
    with open(_SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(b"\0".join([source, jax.ffi.include_dir().encode(), library.encode(), include.encode(),
                                     compiler.encode(), importlib.metadata.version("jaxlib").encode()]))  # fmt: skip
    folder = folder or _kernel_dir()
    path = os.path.join(folder, f"onednn_conv-{key.hexdigest()[:16]}.so")
    if os.path.exists(path):
        return path
    os.makedirs(folder, exist_ok=True)
    partial = f"{path}.{os.getpid()}.partial"  # several processes may build at once; the last rename wins
    lib_dir = os.path.dirname(library)
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-Wno-return-type", _SOURCE, "-o", partial,
               f"-I{include}", f"-I{jax.ffi.include_dir()}", f"-L{lib_dir}", "-ldnnl",
               f"-Wl,-rpath,{lib_dir}"]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise OnednnUnavailable(f"building {_SOURCE} failed: {error}") from None
    if result.returncode != 0:
        if os.path.exists(partial):
            os.remove(partial)
        raise OnednnUnavailable(f"building {_SOURCE} failed ({compiler}): {result.stderr.strip()[-600:]}")
    os.replace(partial, path)
    return path


@functools.cache
def _load() -> Optional[str]:
    """Build, load and register the FFI target; ``None`` when that worked, else the reason."""
    try:
        path = build_extension()
        library = ctypes.cdll.LoadLibrary(path)
    except (OnednnUnavailable, OSError) as error:
        return str(error)
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.VqganOnednnConv), platform="cpu")
    return None


def onednn_status() -> Optional[str]:
    """``None`` when oneDNN convolutions are usable here, else why not (one line)."""
    return _load()


def conv_backend() -> str:
    """The convolution backend for CPU programs traced now: ``"onednn"`` or ``"xla"`` (see the module doc)."""
    choice = os.environ.get(CONV_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "onednn", "xla"):
        raise ValueError(f"{CONV_ENV}={choice!r}: expected auto, onednn or xla")
    if choice == "xla":
        return "xla"
    reason = _load()
    if reason is None:
        return "onednn"
    if choice == "onednn":
        raise OnednnUnavailable(f"{CONV_ENV}=onednn, but {reason}")
    if not _warned_once(reason):
        logger.info("oneDNN convolutions unavailable, using XLA's: %s", reason)
    return "xla"


@functools.cache
def _warned_once(reason: str) -> bool:
    # A missing optional package is the normal case off Linux x86-64; a failed build is worth a warning.
    if "failed" in reason:
        warnings.warn(f"vqgan_flax: oneDNN convolutions unavailable, using XLA's ({reason})", stacklevel=3)
        return True
    return False


def _explicit_pads(padding: Union[str, Sequence], x_shape: Sequence[int], k_shape: Sequence[int],
                   strides: Sequence[int]) -> list:  # fmt: skip
    if isinstance(padding, str):
        return [tuple(p) for p in lax.padtype_to_pads(x_shape[1:3], k_shape[:2], strides, padding)]
    return [tuple(int(v) for v in p) for p in padding]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _onednn_conv(x: jax.Array, kernel: jax.Array, strides: tuple, pads: tuple) -> jax.Array:
    (top, bottom), (left, right) = pads
    out_h = (x.shape[1] + top + bottom - kernel.shape[0]) // strides[0] + 1
    out_w = (x.shape[2] + left + right - kernel.shape[1]) // strides[1] + 1
    out = jax.ShapeDtypeStruct((x.shape[0], out_h, out_w, kernel.shape[3]), x.dtype)
    no_bias = jnp.zeros((0,), x.dtype)
    return jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(
        x, kernel, no_bias, stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]), pad_top=np.int64(top),
        pad_bottom=np.int64(bottom), pad_left=np.int64(left), pad_right=np.int64(right))  # fmt: skip


def _xla_conv(x: jax.Array, kernel: jax.Array, strides: tuple, pads: tuple) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC)


@_onednn_conv.defjvp
def _onednn_conv_jvp(strides: tuple, pads: tuple, primals: tuple, tangents: tuple) -> tuple:
    # The convolution is bilinear, so its tangent is two convolutions; XLA's can be transposed.
    (x, kernel), (dx, dkernel) = primals, tangents
    out = _onednn_conv(x, kernel, strides, pads)
    return out, _xla_conv(dx, kernel, strides, pads) + _xla_conv(x, dkernel, strides, pads)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Union[str, Sequence], lhs_dilation: Optional[Sequence[int]] = None,
                         rhs_dilation: Optional[Sequence[int]] = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:  # fmt: skip
    """``lax.conv_general_dilated``, through oneDNN where it applies (CPU, see the module doc)."""
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
            batch_group_count, precision, preferred_element_type)  # fmt: skip
    rest = args[2:]
    handled = (
        lhs.ndim == 4 and rhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
        and preferred_element_type is None and lhs.dtype == rhs.dtype and lhs.dtype in _DTYPES
        and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
        and 0 not in lhs.shape and 0 not in rhs.shape
    )  # fmt: skip
    if not handled or conv_backend() != "onednn":
        return lax.conv_general_dilated(lhs, rhs, *rest)
    strides = tuple(int(s) for s in window_strides)
    pads = _explicit_pads(padding, lhs.shape, rhs.shape, strides)
    if any(p < 0 for pair in pads for p in pair):  # cropping, which oneDNN's pads cannot express
        return lax.conv_general_dilated(lhs, rhs, *rest)
    pads = tuple(pads)
    return lax.platform_dependent(
        lhs, rhs,
        cpu=lambda x, k: _onednn_conv(x, k, strides, pads),
        default=lambda x, k: lax.conv_general_dilated(x, k, *rest),
    )  # fmt: skip
