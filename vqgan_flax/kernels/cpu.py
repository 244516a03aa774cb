"""CPU kernels for the encoder and decoder, as XLA FFI custom calls; XLA's own ops everywhere else.

XLA:CPU runs convolutions as Eigen contractions, behind oneDNN (what PyTorch runs) in float32 and
without AMX / avx512_bf16 for bfloat16, and GroupNorm as reductions it vectorizes poorly
(``benchmarks/op_profile.py`` measures both). Two small C++ handlers replace them on CPU:
``csrc/onednn_conv.cc`` (a oneDNN convolution on JAX's NHWC/HWIO layouts) and
``csrc/group_norm.cc`` (GroupNorm with float32 two-pass statistics, swish fused). On Linux x86-64
the ``onednn-cpu-gomp`` wheels (a dependency there) carry oneDNN; the handlers are compiled once
per environment with the system's C++ compiler into ``$XDG_CACHE_HOME/vqgan_flax/kernels``.

``conv2d`` (bias and an optional residual fused), ``upsample_conv`` and ``group_norm`` (used by
``blocks.Conv``, ``blocks.UpsampleConv`` and ``blocks.GroupNorm``) take the kernels only for what
the handlers do and only when lowering for CPU (``lax.platform_dependent``); GPUs and TPUs get
XLA's ops. Derivatives are XLA's
(``custom_jvp``), so training works through either path.

``VQGAN_FLAX_CPU_KERNELS`` chooses, read whenever a function is traced (a model compiles each
method once per input shape, so set it before the first call): ``auto`` (default: the kernels
when they build and JAX has a single device), ``on`` (also with several devices; fail, naming
the reason, when they do not build) or ``off`` (XLA's ops). Why one device: XLA's partitioner
does not know how to split a custom call, so a program sharded over several devices gathers the
kernels' operands and computes them on every device (correct, but not what sharding is for).
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

__all__ = ["conv2d", "group_norm", "kernel_backend", "kernels_status", "onednn_has_bfloat16", "upsample_conv"]

logger = logging.getLogger(__name__)

KERNELS_ENV = "VQGAN_FLAX_CPU_KERNELS"
CONV_TARGET, GROUP_NORM_TARGET = "vqgan_onednn_conv", "vqgan_group_norm"
_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
_SOURCES = [os.path.join(_CSRC, name) for name in ("onednn_conv.cc", "group_norm.cc")]
_LIBRARY_DIST, _HEADERS_DIST = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"
_NHWC = ("NHWC", "HWIO", "NHWC")
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


class KernelsUnavailable(RuntimeError):
    """The CPU kernels cannot run here; the message says why."""


def _dist_file(dist: str, name: str) -> str:
    """The installed file ``name`` of distribution ``dist`` (wheels put oneDNN's data files under
    the environment's prefix, so ask the installer's record rather than guess the prefix)."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise KernelsUnavailable(f"the {dist} package is not installed (pip install {dist})") from None
    for file in files:
        if file.name == name:
            return os.path.normpath(str(file.locate()))
    raise KernelsUnavailable(f"the {dist} package has no {name}")


def _kernel_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vqgan_flax", "kernels")


def build_extension(folder: Optional[str] = None) -> str:
    """Compile ``csrc/*.cc`` into one library (once: its name hashes every input) and return its path."""
    library = _dist_file(_LIBRARY_DIST, "libdnnl.so")
    header = _dist_file(_HEADERS_DIST, "dnnl.hpp")  # include/oneapi/dnnl/dnnl.hpp or include/dnnl.hpp
    include = os.path.dirname(header)
    include = os.path.dirname(os.path.dirname(include)) if include.endswith(os.path.join("oneapi", "dnnl")) else include
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise KernelsUnavailable("no C++ compiler (g++ or $CXX) to build the CPU kernels")
    sources = []
    for name in _SOURCES:
        with open(name, "rb") as f:
            sources.append(f.read())
    key = hashlib.sha256(b"\0".join([*sources, jax.ffi.include_dir().encode(), library.encode(), include.encode(),
                                     compiler.encode(), importlib.metadata.version("jaxlib").encode()]))  # fmt: skip
    folder = folder or _kernel_dir()
    path = os.path.join(folder, f"vqgan_cpu_kernels-{key.hexdigest()[:16]}.so")
    if os.path.exists(path):
        return path
    os.makedirs(folder, exist_ok=True)
    partial = f"{path}.{os.getpid()}.partial"  # several processes may build at once; the last rename wins
    lib_dir = os.path.dirname(library)
    # -O3 and target_clones (in the source) vectorize group_norm.cc for AVX-512 / AVX2 / baseline
    # at run time, so the cached library does not depend on the CPU that built it.
    command = [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-Wno-return-type", "-Wno-attributes",
               *_SOURCES, "-o", partial,
               f"-I{include}", f"-I{jax.ffi.include_dir()}", f"-L{lib_dir}", "-ldnnl",
               f"-Wl,-rpath,{lib_dir}"]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise KernelsUnavailable(f"building the CPU kernels in {_CSRC} failed: {error}") from None
    if result.returncode != 0:
        if os.path.exists(partial):
            os.remove(partial)
        raise KernelsUnavailable(
            f"building the CPU kernels in {_CSRC} failed ({compiler}): {result.stderr.strip()[-600:]}"
        )
    os.replace(partial, path)
    return path


@functools.cache
def _load() -> Optional[str]:
    """Build, load and register the FFI target; ``None`` when that worked, else the reason."""
    try:
        path = build_extension()
        library = ctypes.cdll.LoadLibrary(path)
    except (KernelsUnavailable, OSError) as error:
        return str(error)
    jax.ffi.register_ffi_target(CONV_TARGET, jax.ffi.pycapsule(library.VqganOnednnConv), platform="cpu")
    jax.ffi.register_ffi_target(GROUP_NORM_TARGET, jax.ffi.pycapsule(library.VqganGroupNorm), platform="cpu")
    return None


def kernels_status() -> Optional[str]:
    """``None`` when the CPU kernels are usable here, else why not (one line)."""
    return _load()


def kernel_backend() -> str:
    """What CPU programs traced now use: ``"native"`` (the kernels) or ``"xla"`` (see the module doc)."""
    choice = os.environ.get(KERNELS_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"{KERNELS_ENV}={choice!r}: expected auto, on or off")
    if choice == "off" or (choice == "auto" and jax.device_count() > 1):
        return "xla"
    reason = _load()
    if reason is None:
        return "native"
    if choice == "on":
        raise KernelsUnavailable(f"{KERNELS_ENV}=on, but {reason}")
    if not _warned_once(reason):
        logger.info("CPU kernels unavailable, using XLA's ops: %s", reason)
    return "xla"


@functools.cache
def _warned_once(reason: str) -> bool:
    # A missing optional package is the normal case off Linux x86-64; a failed build is worth a warning.
    if "failed" in reason:
        warnings.warn(f"vqgan_flax: CPU kernels unavailable, using XLA's ops ({reason})", stacklevel=3)
        return True
    return False


def _explicit_pads(padding: Union[str, Sequence], x_shape: Sequence[int], k_shape: Sequence[int],
                   strides: Sequence[int]) -> list:  # fmt: skip
    if isinstance(padding, str):
        return [tuple(p) for p in lax.padtype_to_pads(x_shape[1:3], k_shape[:2], strides, padding)]
    return [tuple(int(v) for v in p) for p in padding]


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def _onednn_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, residual: jax.Array, strides: tuple,
                 pads: tuple) -> jax.Array:  # fmt: skip
    (top, bottom), (left, right) = pads
    out_h = (x.shape[1] + top + bottom - kernel.shape[0]) // strides[0] + 1
    out_w = (x.shape[2] + left + right - kernel.shape[1]) // strides[1] + 1
    return _conv_call(x, kernel, bias, residual, (out_h, out_w), strides, pads, transposed=False)


def _conv_call(x: jax.Array, kernel: jax.Array, bias: jax.Array, residual: jax.Array, out_hw: tuple,
               strides: tuple, pads: tuple, transposed: bool) -> jax.Array:  # fmt: skip
    """The oneDNN handler. ``bias`` and ``residual`` of shape (0,) mean none; a residual is added to
    the output in the same pass, written over its own buffer where XLA can spare it (aliased)."""
    (top, bottom), (left, right) = pads
    out = jax.ShapeDtypeStruct((x.shape[0], *out_hw, kernel.shape[3]), x.dtype)
    aliases = {3: 0} if residual.size else {}
    return jax.ffi.ffi_call(CONV_TARGET, out, vmap_method="sequential", input_output_aliases=aliases)(
        x, kernel, bias, residual, stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
        pad_top=np.int64(top), pad_bottom=np.int64(bottom), pad_left=np.int64(left), pad_right=np.int64(right),
        transposed=transposed)  # fmt: skip


@functools.cache
def onednn_has_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions on this CPU: it needs AVX-512 (or AMX) for them,
    and on an AVX2-only CPU creating the primitive fails inside the compiled program. Probed once,
    by running a tiny bf16 convolution through the handler; where it fails, bf16 convolutions take
    XLA's path (float32 ones keep oneDNN)."""
    if _load() is not None:
        return False
    cpu = jax.local_devices(backend="cpu")[0]
    with jax.ensure_compile_time_eval():
        x = jax.device_put(jnp.ones((1, 4, 4, 8), jnp.bfloat16), cpu)
        kernel = jax.device_put(jnp.ones((3, 3, 8, 8), jnp.bfloat16), cpu)
        none = jax.device_put(jnp.zeros((0,), jnp.bfloat16), cpu)
        try:
            out = jax.jit(lambda x, k, b: _conv_call(x, k, b, b, (4, 4), (1, 1), ((1, 1), (1, 1)), False))(
                x, kernel, none
            )
            return bool(np.asarray(out.astype(jnp.float32))[0, 1, 1, 0] == 72.0)  # 3 x 3 x 8 ones
        except jax.errors.JaxRuntimeError as error:
            logger.info("oneDNN has no bfloat16 convolutions on this CPU, using XLA's for them: %s", error)
            return False


def _conv_dtype_handled(dtype: Any) -> bool:
    """float32 always; bfloat16 where oneDNN has it on this CPU ([`onednn_has_bfloat16`])."""
    dtype = jnp.dtype(dtype)
    return dtype == jnp.float32 or (dtype == jnp.bfloat16 and onednn_has_bfloat16())


def _xla_conv(x: jax.Array, kernel: jax.Array, strides: tuple, pads: tuple) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC)


@_onednn_conv.defjvp
def _onednn_conv_jvp(strides: tuple, pads: tuple, primals: tuple, tangents: tuple) -> tuple:
    # The convolution is bilinear, so its tangent is two convolutions; XLA's can be transposed.
    (x, kernel, bias, residual), (dx, dkernel, dbias, dresidual) = primals, tangents
    tangent = _xla_conv(dx, kernel, strides, pads) + _xla_conv(x, dkernel, strides, pads)
    tangent = tangent + dbias if bias.size else tangent
    tangent = tangent + dresidual if residual.size else tangent
    return _onednn_conv(x, kernel, bias, residual, strides, pads), tangent


def _conv_args(
    x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Union[str, Sequence]
) -> Optional[tuple]:
    """(strides, pads) for the handler, or None where it does not apply (negative pads crop)."""
    strides = tuple(int(s) for s in strides)
    pads = _explicit_pads(padding, x.shape, kernel.shape, strides)
    return None if any(p < 0 for pair in pads for p in pair) else (strides, tuple(pads))


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array, strides: Sequence[int] = (1, 1),
           padding: Union[str, Sequence] = "SAME", residual: Optional[jax.Array] = None) -> jax.Array:  # fmt: skip
    """NHWC ``x`` convolved with HWIO ``kernel``, plus ``bias`` (and ``residual``, of the output's
    shape): one oneDNN call on CPU, adding both in the same pass over the output; XLA's
    convolution and adds elsewhere."""
    residual = jnp.zeros((0,), x.dtype) if residual is None else residual

    def xla(x: jax.Array, kernel: jax.Array, bias: jax.Array, residual: jax.Array) -> jax.Array:
        y = lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC) + bias
        return y + residual if residual.size else y

    handled = (x.ndim == 4 and kernel.ndim == 4 and x.dtype == kernel.dtype == bias.dtype == residual.dtype
               and x.dtype in _DTYPES and bias.shape == kernel.shape[3:] and 0 not in x.shape
               and 0 not in kernel.shape)  # fmt: skip
    args = _conv_args(x, kernel, strides, padding) if handled else None
    if args is None or kernel_backend() != "native" or not _conv_dtype_handled(x.dtype):
        return xla(x, kernel, bias, residual)
    return lax.platform_dependent(x, kernel, bias, residual, cpu=lambda *a: _onednn_conv(*a, *args), default=xla)


def _group_norm_xla(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, epsilon: float,
                    out_dtype: Any, swish: bool) -> jax.Array:  # fmt: skip
    """flax's ``GroupNorm(use_fast_variance=False)`` in float32, then swish, then ``out_dtype``."""
    n, h, w, c = x.shape
    grouped = x.astype(jnp.float32).reshape(n, h, w, groups, c // groups)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = jnp.maximum(0.0, jnp.square(grouped - mean).mean(axis=(1, 2, 4), keepdims=True))
    mul = lax.rsqrt(var + epsilon) * scale.astype(jnp.float32).reshape(groups, c // groups)
    y = ((grouped - mean) * mul).reshape(x.shape) + bias.astype(jnp.float32)
    return (jax.nn.swish(y) if swish else y).astype(out_dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5, 6))
def _native_group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, epsilon: float,
                       out_dtype: Any, swish: bool) -> jax.Array:  # fmt: skip
    call = jax.ffi.ffi_call(GROUP_NORM_TARGET, jax.ShapeDtypeStruct(x.shape, out_dtype), vmap_method="sequential")
    return call(x, scale.astype(jnp.float32), bias.astype(jnp.float32), groups=np.int64(groups),
                epsilon=np.float32(epsilon), swish=bool(swish))  # fmt: skip


@_native_group_norm.defjvp
def _native_group_norm_jvp(groups: int, epsilon: float, out_dtype: Any, swish: bool, primals: tuple,
                           tangents: tuple) -> tuple:  # fmt: skip
    reference = functools.partial(_group_norm_xla, groups=groups, epsilon=epsilon, out_dtype=out_dtype, swish=swish)
    _, tangent = jax.jvp(reference, primals, tangents)
    return _native_group_norm(*primals, groups, epsilon, out_dtype, swish), tangent


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, epsilon: float, out_dtype: Any,
               swish: bool = False) -> jax.Array:  # fmt: skip
    """GroupNorm over NHWC ``x`` with float32 two-pass statistics (flax's ``use_fast_variance=False``),
    per-channel ``scale`` and ``bias``, then swish when ``swish``; returned as ``out_dtype``."""
    out_dtype = jnp.dtype(out_dtype)
    reference = functools.partial(_group_norm_xla, groups=groups, epsilon=epsilon, out_dtype=out_dtype, swish=swish)
    handled = (x.ndim == 4 and x.dtype in _DTYPES and out_dtype in _DTYPES and x.shape[-1] % groups == 0
               and scale.shape == bias.shape == (x.shape[-1],) and 0 not in x.shape)  # fmt: skip
    if not handled or kernel_backend() != "native":
        return reference(x, scale, bias)
    return lax.platform_dependent(
        x, scale, bias,
        cpu=lambda x, s, b: _native_group_norm(x, s, b, groups, epsilon, out_dtype, swish),
        default=reference,
    )  # fmt: skip


def _upsample_taps(kernel: jax.Array, axis: int) -> jax.Array:
    """Nearest x2 upsampling then a 3x3 conv (pad 1), along one axis: output row 2i + a reads
    upsampled rows 2i + a - 1 .. 2i + a + 1, i.e. input rows i - 1, i, i (a = 0) or i, i, i + 1
    (a = 1). As a stride-2 transposed conv (output 2r - 1 + k from input r) that is a 4-tap
    kernel: k = 0..3 takes the 3x3 kernel's taps (2), (1 + 2), (0 + 1), (0)."""
    t0, t1, t2 = (lax.index_in_dim(kernel, i, axis) for i in range(3))
    return jnp.concatenate([t2, t1 + t2, t0 + t1, t0], axis=axis)


def _upsample_conv_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
    upsampled = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # exactly torch's nearest x2
    return lax.conv_general_dilated(upsampled, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)


@jax.custom_jvp
def _native_upsample_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    # Summed in float32, rounded once to the compute dtype.
    taps = _upsample_taps(_upsample_taps(kernel.astype(jnp.float32), 0), 1)
    out_hw = (2 * x.shape[1], 2 * x.shape[2])
    none = jnp.zeros((0,), x.dtype)
    return _conv_call(x, taps.astype(x.dtype), none, none, out_hw, (2, 2), ((1, 1), (1, 1)), transposed=True)


@_native_upsample_conv.defjvp
def _native_upsample_conv_jvp(primals: tuple, tangents: tuple) -> tuple:
    (x, kernel), (dx, dkernel) = primals, tangents
    tangent = _upsample_conv_xla(dx, kernel) + _upsample_conv_xla(x, dkernel)
    return _native_upsample_conv(x, kernel), tangent


def upsample_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 upsampling of NHWC ``x``, then a 3x3 HWIO ``kernel`` with padding 1 (no
    bias). On CPU one transposed convolution with 16 instead of 36 multiply-adds per input pixel
    and output channel, and no upsampled copy; elsewhere the two steps as written."""
    handled = (x.ndim == 4 and kernel.shape[:2] == (3, 3) and x.dtype == kernel.dtype and x.dtype in _DTYPES
               and 0 not in x.shape)  # fmt: skip
    if not handled or kernel_backend() != "native" or not _conv_dtype_handled(x.dtype):
        return _upsample_conv_xla(x, kernel)
    return lax.platform_dependent(x, kernel, cpu=_native_upsample_conv, default=_upsample_conv_xla)
