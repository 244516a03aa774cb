"""The transformers-style VQGAN: [`FlaxVQGANModel`] (also vqgan-jax's name ``VQModel``) wraps
``models.module.FlaxVQGANModule`` with loading and saving (``from_pretrained``, ``save_pretrained``,
``push_to_hub``), the ``params=...`` calling convention, and the compiled runtime (one jit per
method and option, per-image micro-batching on CPU, bf16 weights cast once).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from typing import Any, Iterator, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.typing import ArrayLike

from ..conversion import check_weights, load_lwm_checkpoint
from ..models.blocks import conv_compute_dtype
from ..models.configuration import VQGANConfig
from ..models.input_checks import check_indices, check_pixels
from ..models.module import FlaxVQGANModule, torch_style_init
from ..models.outputs import VQGANEncoderOutput, VQGANOutput
from .base import on_host, pretrained_base, read_checkpoint, save_model
from .compiled import CompiledCache
from .resolve import ModelSource

__all__ = ["FlaxVQGANMixin", "FlaxVQGANModel", "FlaxVQGANPreTrainedModel", "VQModel"]


class ParamsMismatch(ValueError):
    """Given parameters that are not those of the model's module (missing, unused or misshapen)."""


def params_mismatch(expected: dict, given: dict) -> Optional[str]:
    """What keeps ``given`` (flat parameter paths → arrays) from being the parameters of a module
    whose parameters have the ``expected`` shapes (flat paths → shape structs), or None."""
    missing = sorted("/".join(k) for k in set(expected) - set(given))
    if missing:
        return f"the checkpoint lacks {len(missing)} of the model's {len(expected)} parameters, e.g. {missing[:5]}"
    unused = sorted("/".join(k) for k in set(given) - set(expected))
    if unused:
        return (
            f"the config leaves {len(unused)} checkpoint weights unused, e.g. {unused[:5]}: it does not "
            "describe this checkpoint (attention, levels or blocks differ?)"
        )
    for key in sorted(expected):
        if tuple(np.shape(given[key])) != tuple(expected[key].shape):
            return (
                f"weight {'/'.join(key)} has shape {tuple(np.shape(given[key]))} in the checkpoint but "
                f"{tuple(expected[key].shape)} in the model"
            )
    return None


def _params_beside(array: jax.Array, params: Any) -> Any:
    """Params replicated over the mesh ``array`` is sharded on, so the call runs sharded (XLA
    partitions it along the array's sharding) instead of gathering the batch onto one device."""
    from jax.sharding import NamedSharding, PartitionSpec

    sharding = array.sharding
    if not isinstance(sharding, NamedSharding):
        raise ValueError(
            f"input is spread over {len(array.devices())} devices with {type(sharding).__name__}, which has no "
            "mesh to run on; pass it through vqgan_flax.parallel.unshard, use parallel.sharded_encode/"
            "sharded_decode_code, or gather it on purpose with np.asarray"
        )
    return jax.device_put(params, NamedSharding(sharding.mesh, PartitionSpec()))


@contextlib.contextmanager
def _quiet_transformers_deprecation() -> Iterator[None]:
    """transformers 4.x logs "TensorFlow and JAX classes are deprecated" when the first Flax model
    is built; our users chose Flax on purpose, and the CLI's stderr stays clean."""
    flax_logger = logging.getLogger("transformers.modeling_flax_utils")
    level = flax_logger.level
    flax_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        flax_logger.setLevel(level)


class FlaxVQGANMixin:
    """Everything the VQGAN adds to its base: loading with checks, the compiled runtime, and the
    ``params=...`` calling convention. [`FlaxVQGANPreTrainedModel`] is this mixin over the base
    that ``hub.base.pretrained_base`` picks; ``class M(FlaxVQGANMixin, FlaxHubModel)`` is the same
    model on our own base wherever transformers' is installed (the tests compare the two).

    The public methods are compiled with ``jax.jit`` on first use (per input shape and option),
    so eager calls are fast; they also work inside a caller's own ``jit``/``pmap``.
    """

    config_class = VQGANConfig
    base_model_prefix = "vqgan"
    main_input_name = "pixel_values"
    module_class: Any = None  # the flax.linen.Module subclass to build
    # Provided by the base (both bases have them); declared for the type checker.
    config: Any
    module: Any
    params: Any
    params_shape_tree: Any
    required_params: set
    dtype: Any

    def __init__(
        self,
        config: VQGANConfig,
        input_shape: Optional[Tuple[int, int, int, int]] = None,
        seed: int = 0,
        dtype: jnp.dtype = jnp.float32,
        _do_init: bool = True,
        params: Optional[dict] = None,
        **kwargs: Any,
    ) -> None:
        """``params``: the weights to start from (checked against the module's parameter shapes;
        no random ones are drawn); default: random weights drawn like a fresh PyTorch taming model.
        ``dtype``: the compute dtype (``float32`` or ``bfloat16``, see ``models.blocks``)."""
        if params is not None and not _do_init:
            raise ValueError("params= needs _do_init=True: a model built with _do_init=False holds no params")
        if input_shape is None:
            # The parameter shapes do not depend on the image size: initialise on the smallest
            # image that survives all downsamplings, which is much faster than `resolution`.
            side = config.downsampling_factor
            input_shape = (1, side, side, config.in_channels)
        # What this model compiled (per method, micro-batching, static options), bounded: see
        # compiled.py; data/parallel.py keeps its pmap/mesh programs here too.
        self.compiled = CompiledCache()
        self.source: Optional[ModelSource] = None  # where from_pretrained found it (hub.ModelSource)
        module = self.module_class(config=config, dtype=dtype, **kwargs)
        self._initial_params = params  # read once by init_weights, below the base's __init__
        try:
            with _quiet_transformers_deprecation():
                super().__init__(  # type: ignore[call-arg]
                    config, module, input_shape=input_shape, seed=seed, dtype=dtype, _do_init=_do_init
                )
        finally:
            self._initial_params = None

    def num_parameters(self, params: Optional[dict] = None) -> int:
        """Number of parameter values (of ``params``, else of the model's parameter shapes)."""
        tree = self.params_shape_tree if params is None else params
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))

    def init_weights(self, rng: jax.Array, input_shape: Tuple[int, ...], params: Optional[dict] = None) -> dict:
        """Random parameters drawn like a freshly built PyTorch taming model; entries of ``params``
        (e.g. loaded ones) take precedence. While the constructor runs with ``params=``, those
        are checked and returned instead, and nothing random is drawn.

        Compiling ``module.init`` costs seconds even for tiny models (one RNG program per
        parameter); here the shapes come from tracing and all values from a single uniform draw.
        """
        shapes = jax.eval_shape(
            self.module.init, {"params": rng, "dropout": rng, "gumbel": rng}, jnp.zeros(input_shape, jnp.float32)
        )["params"]
        if self._initial_params is not None:
            given = flatten_dict(flax.core.unfreeze(self._initial_params))
            problem = params_mismatch(flatten_dict(flax.core.unfreeze(shapes)), given)
            if problem:
                raise ParamsMismatch(problem)
            return unflatten_dict({key: jnp.asarray(value) for key, value in given.items()})  # default device
        if isinstance(rng, jax.core.Tracer):
            # Under the base's jax.eval_shape (``_do_init=False``) only the shapes matter.
            random_params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        else:
            random_params = torch_style_init(shapes, rng, self.config)
        if params is None:
            return random_params
        merged = flatten_dict(flax.core.unfreeze(random_params))
        merged.update(flatten_dict(flax.core.unfreeze(params)))
        return unflatten_dict(merged)

    @classmethod
    def load_flax_weights(cls, resolved_archive_file: str) -> dict:
        """Read a msgpack/safetensors file; squeeze the (1, 1, 1, C) GroupNorm parameters that
        older vqgan-jax checkpoints store, with one warning."""
        try:
            state = super().load_flax_weights(resolved_archive_file)  # type: ignore[misc]
        except Exception as err:  # truncated/empty files give raw msgpack/safetensors errors
            if resolved_archive_file in str(err):
                raise
            raise OSError(f"{resolved_archive_file}: unreadable weights ({type(err).__name__}: {err})") from None
        if not isinstance(state, dict):  # transformers 4's reader returns whatever the msgpack holds
            raise OSError(f"{resolved_archive_file}: holds a {type(state).__name__} at the top, not a parameter tree")
        flat = flatten_dict(state)
        squeezed = 0
        for key, value in flat.items():
            if key[-1] in ("scale", "bias") and value.ndim == 4 and value.shape[:3] == (1, 1, 1):
                flat[key] = value.reshape(value.shape[-1])
                squeezed += 1
        if squeezed:
            warnings.warn(
                f"{resolved_archive_file}: reshaped {squeezed} GroupNorm scale/bias arrays from (1, 1, 1, C) "
                "to (C,) (older Flax layout)",
                stacklevel=4,  # the caller of from_pretrained
            )
        return unflatten_dict(flat)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: Any, dtype: jnp.dtype = jnp.float32, *model_args: Any, **kwargs: Any
    ) -> Any:
        """transformers' ``from_pretrained`` with these differences: a checkpoint lacking
        parameters is an error (a VQGAN with random layers silently produces garbage), so is one
        holding weights the config leaves unused (e.g. a config without attention), one of
        another shape, or non-floating or non-finite weights; a local path that is not a model
        folder is reported as such (no Hub retries); no random initialisation is computed only
        to be overwritten. An LWM params pickle (a file) loads too.

        A Hub id (``org/name``) is resolved by [`hub.resolve_model`] (``revision``, ``subfolder``,
        ``cache_dir``, ``token``, ``local_files_only`` / ``HF_HUB_OFFLINE``, ``force_download``) to
        a folder of the Hub cache, which then loads like any local folder; ``model.source`` says
        where the model came from (for a Hub id, the commit it resolved to).

        Both bases load here, through ``hub.base.read_checkpoint``: the same files are read the
        same way on transformers 4 and 5."""
        do_init = kwargs.pop("_do_init", True)
        kwargs.pop("ignore_mismatched_sizes", None)  # a misshapen weight is an error here, always
        name = os.fspath(pretrained_model_name_or_path)
        if os.path.isfile(name):
            config, state = load_lwm_checkpoint(name, kwargs.pop("lwm_config", None))
            source: Optional[ModelSource] = ModelSource(name, os.path.dirname(os.path.abspath(name)))
            model_kwargs: dict = {}
        else:
            checkpoint = read_checkpoint(cls, name, **kwargs)
            config, state, source, model_kwargs = (
                checkpoint.config,
                checkpoint.state,
                checkpoint.source,
                checkpoint.model_kwargs,
            )
            # Saved by a head model: its base's weights. Unlike base.strip_prefix (transformers'
            # rule, which drops the rest), weights beside the prefix stay and are refused as unused.
            if cls.base_model_prefix in state:
                state = {
                    **{k: v for k, v in state.items() if k != cls.base_model_prefix},
                    **state[cls.base_model_prefix],
                }
        flat = flatten_dict(state)
        check_weights({"/".join(k): v for k, v in flat.items()}, name)
        build: Any = cls  # transformers-style positional model_args go before the keywords
        try:
            if do_init:
                model = build(config, *model_args, dtype=dtype, params=state, **model_kwargs)
            else:
                model = build(config, *model_args, dtype=dtype, _do_init=False, **model_kwargs)
                problem = params_mismatch(flatten_dict(flax.core.unfreeze(model.params_shape_tree)), flat)
                if problem:
                    raise ParamsMismatch(problem)
        except ParamsMismatch as err:
            raise ParamsMismatch(f"{name}: {err}") from None
        model.source = source
        return model if do_init else (model, on_host(state))

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> None:
        """transformers' ``save_pretrained`` (same arguments, same files) on both bases, by
        [`hub.base.save_model`]: written whole into a fresh folder and swapped in, where
        transformers 4's would delete every ``model*`` file of the folder (a user's ``model.ckpt``
        included) and rewrite the weights in place; the files honour the umask."""
        save_model(self, save_directory, *args, **kwargs)

    @staticmethod
    def default_micro_batch_size(array: Any) -> Optional[int]:
        """What ``micro_batch_size=None`` picks: 1 for a concrete array on one CPU device, else no
        micro-batching (inside a caller's ``jit``/``pmap`` the sharding is not known here).

        Why: on CPU a batch of 8 256x256 images ran 18% slower per image than single images
        (8x the activations no longer fit the caches); looping over images inside the compiled
        program removes that. GPUs want the whole batch at once.
        """
        if isinstance(array, jax.core.Tracer):
            return None
        devices = array.devices() if isinstance(array, jax.Array) else {jax.devices()[0]}
        return 1 if len(devices) == 1 and next(iter(devices)).platform == "cpu" else None

    def _run(
        self,
        method: str,
        array: ArrayLike,
        params: Optional[dict],
        rngs: Optional[dict] = None,
        traced: Optional[dict] = None,
        micro_batch_size: Optional[int] = None,
        **static: Any,
    ) -> Any:
        """Apply ``module.<method>`` under a jit cached per method and static options; ``traced``
        keyword arguments are arrays (changing them does not recompile). Inference runs in chunks
        of ``micro_batch_size`` images (see [`default_micro_batch_size`]), one compiled loop."""
        if micro_batch_size is None:
            micro_batch_size = self.default_micro_batch_size(array)
        if static.get("train") or (micro_batch_size or 0) >= np.shape(array)[0]:
            micro_batch_size = None  # training draws per-example noise from one rng: never chunked
        elif micro_batch_size is not None:
            micro_batch_size = math.gcd(int(micro_batch_size), np.shape(array)[0])  # equal chunks
        key = (method, micro_batch_size, tuple(sorted(static.items())))

        def build():
            def apply(variables, rngs, array, traced):
                def call(chunk):
                    return self.module.apply(variables, chunk, rngs=rngs, method=method, **traced, **static)

                if micro_batch_size is None:
                    return call(array)
                chunks = array.reshape(-1, micro_batch_size, *array.shape[1:])
                out = jax.lax.map(call, chunks)
                # Per-chunk scalars (the losses) are means over equal chunks: their mean is the batch's.
                return jax.tree.map(lambda x: x.mean(0) if x.ndim == 1 else x.reshape(-1, *x.shape[2:]), out)

            return jax.jit(apply)

        compiled = self.compiled.get_or_build(key, build)
        params = self._params_in_compute_dtype() if params is None else params
        if isinstance(array, jax.Array) and not isinstance(array, jax.core.Tracer) and len(array.devices()) > 1:
            params = _params_beside(array, params)
        return compiled({"params": params}, rngs or {}, jnp.asarray(array), traced or {})

    def _params_in_compute_dtype(self) -> dict:
        """``self.params`` with each conv's kernel and bias already in the dtype it computes in.

        A bfloat16 model keeps float32 weights (flax's ``param_dtype``) and casts them inside every
        compiled call: for f16-1024 that reads ~100 MB and writes ~50 MB per call before the first
        convolution. Cast once instead, while ``self.params`` stays the same object (the copy holds
        half the convs' float32 bytes); the values each conv sees are the same, so are the results.
        Norms, the codebook and the float32 convs before the quantizer keep their float32 weights."""
        params = self.params
        if jnp.dtype(self.dtype) == jnp.float32 or params is None:
            return params
        cached = getattr(self, "_cast_params", None)
        if cached is not None and cached[0] is params:
            return cached[1]
        # A conv is a parameter folder with a kernel (GroupNorms have scale and bias, the codebook an
        # embedding); its kernel and bias take the dtype blocks.conv_compute_dtype declares.
        convs = {k[:-1] for k in flatten_dict(flax.core.unfreeze(params)) if k[-1] == "kernel"}

        def cast(path: tuple, leaf: jax.Array) -> jax.Array:
            names = tuple(str(getattr(p, "key", p)) for p in path)
            if names[:-1] in convs and names[-1] in ("kernel", "bias"):
                return leaf.astype(conv_compute_dtype(names[:-1], self.dtype))
            return leaf

        # Called inside a caller's jit, the cast would be traced; the cache must hold arrays.
        with jax.ensure_compile_time_eval():
            cast_params = jax.tree_util.tree_map_with_path(cast, params)
        if not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(cast_params)):
            self._cast_params = (params, cast_params)
        return cast_params

    @staticmethod
    def _rngs(dropout_rng: Optional[jax.Array], gumbel_rng: Optional[jax.Array] = None) -> dict:
        rngs = {"dropout": dropout_rng, "gumbel": gumbel_rng}
        return {name: rng for name, rng in rngs.items() if rng is not None}

    def _temperature(self, temperature: Optional[float]) -> jax.Array:
        # Passed as an array, not a static option, so annealing it does not recompile.
        return jnp.asarray(self.config.temperature if temperature is None else temperature, jnp.float32)

    def encode(
        self,
        pixel_values: ArrayLike,
        params: Optional[dict] = None,
        train: bool = False,
        dropout_rng: Optional[jax.Array] = None,
        gumbel_rng: Optional[jax.Array] = None,
        temperature: Optional[float] = None,
        micro_batch_size: Optional[int] = None,
    ) -> VQGANEncoderOutput:
        """Pixels (B, H, W, C) in [-1, 1] → ``(quant_states, indices)`` (a [`VQGANEncoderOutput`]).

        ``micro_batch_size``: images per step of the compiled loop (default: see
        [`default_micro_batch_size`]); results are the same either way."""
        check_pixels(pixel_values, self.config.in_channels)
        rngs = self._rngs(dropout_rng, gumbel_rng)
        traced = {"temperature": self._temperature(temperature)}
        return self._run("encode", pixel_values, params, rngs, traced, micro_batch_size, train=train)

    def decode(
        self,
        quant_states: ArrayLike,
        params: Optional[dict] = None,
        train: bool = False,
        dropout_rng: Optional[jax.Array] = None,
        micro_batch_size: Optional[int] = None,
    ) -> jax.Array:
        """Quantized latents (B, h, w, embed_dim) → pixels (B, H, W, out_ch)."""
        return self._run("decode", quant_states, params, self._rngs(dropout_rng), None, micro_batch_size, train=train)

    def _guess_grid(self, tokens: int) -> Optional[tuple]:
        """The grid of ``tokens`` flat indices when nothing says it (see ``decode_code``)."""
        native = self.config.latent_shape(self.config.resolution, self.config.resolution)
        if tokens == native[0] * native[1]:
            return native
        side = math.isqrt(tokens)
        if side * side == tokens:
            warnings.warn(
                f"decode_code: {tokens} flat tokens decoded as a {side}x{side} grid, a guess; pass "
                "latent_shape=(h, w) or (B, h, w) indices (a future version will require it)",
                FutureWarning,
                stacklevel=3,
            )
        return None  # indices_to_grid squares it, or refuses a non-square N with its message

    def decode_code(
        self,
        indices: ArrayLike,
        params: Optional[dict] = None,
        latent_shape: Optional[Sequence[int]] = None,
        micro_batch_size: Optional[int] = None,
    ) -> jax.Array:
        """Indices (B, h, w), or (B, N) with ``latent_shape=(h, w)`` → pixels.

        Flat (B, N) indices without ``latent_shape`` decode on the model's own square grid
        (``resolution / f`` per side) when N fits it, as vqgan-jax did; any other square N is still
        decoded as a square but warns (``FutureWarning``): 256 tokens of a 32x128 image are an 8x32
        grid, not 16x16. ``encode(...).latent_shape`` / ``.grid_indices`` keep the grid with the tokens.
        """
        check_indices(indices, self.config.n_embed)
        if latent_shape is None and np.ndim(indices) == 2:
            latent_shape = self._guess_grid(int(np.shape(indices)[1]))
        latent_shape = None if latent_shape is None else tuple(int(n) for n in latent_shape)
        return self._run("decode_code", indices, params, None, None, micro_batch_size, latent_shape=latent_shape)

    def __call__(
        self,
        pixel_values: ArrayLike,
        params: Optional[dict] = None,
        train: bool = False,
        dropout_rng: Optional[jax.Array] = None,
        gumbel_rng: Optional[jax.Array] = None,
        temperature: Optional[float] = None,
        micro_batch_size: Optional[int] = None,
    ) -> VQGANOutput:
        """Encode and decode: ``reconstruction, indices = model(pixel_values)``."""
        check_pixels(pixel_values, self.config.in_channels)
        rngs = self._rngs(dropout_rng, gumbel_rng)
        traced = {"temperature": self._temperature(temperature)}
        return self._run("__call__", pixel_values, params, rngs, traced, micro_batch_size, train=train)


# The base is chosen when this module loads (transformers' Flax base where it exists): a type checker
# cannot follow that, hence the ignore.
class FlaxVQGANPreTrainedModel(FlaxVQGANMixin, pretrained_base()):  # type: ignore[misc]
    """Weight loading/saving and the ``params=...`` calling convention of transformers' Flax models.

    The base is transformers' ``FlaxPreTrainedModel`` where the installed transformers has it (4.x)
    and our ``FlaxHubModel`` otherwise (transformers 5 removed its Flax classes): same methods,
    same files (see ``base.py``).
    """


class FlaxVQGANModel(FlaxVQGANPreTrainedModel):
    """A VQGAN image tokenizer with transformers' Flax API (``from_pretrained``, ``save_pretrained``)."""

    module_class = FlaxVQGANModule


# vqgan-jax's name, so DALL·E-mini code runs with one import changed.
VQModel = FlaxVQGANModel
