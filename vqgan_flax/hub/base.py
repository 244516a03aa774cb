"""The base under [`FlaxVQGANPreTrainedModel`]: transformers' ``FlaxPreTrainedModel`` where the
installed transformers still has it (4.x), else ``FlaxHubModel``, a small base of ours.

transformers 5 removed every Flax class; ``FlaxHubModel`` keeps the public surface that DALL·E-mini
style code relies on (``from_pretrained(..., _do_init=False)``, ``params``, ``save_pretrained``,
``push_to_hub``, ``to_bf16``) on ``huggingface_hub`` (downloads, cache, revisions, offline mode,
uploads), ``safetensors`` and ``flax.serialization``, and reads and writes the same files as
transformers 4.x (``config.json``, ``flax_model.msgpack`` [+ shards and index] or
``model.safetensors`` with ``{"format": "flax"}``), so a folder saved on one stack loads
bit-identically on the other.

Both bases load through [`read_checkpoint`] (file lookup, config, weight reading), so a model
loads the same files the same way whichever base it stands on.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import tempfile
from functools import partial
from typing import Any, Optional, Tuple, Union, cast

import flax
import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

from ..utils.weights import SAFE_WEIGHTS_NAME, read_weights, save_model_folder, weight_files
from .resolve import ModelSource, resolve_model

logger = logging.getLogger(__name__)


# Keyword arguments transformers' loaders (and its Auto classes) pass that mean nothing here.
_IGNORED_KWARGS = ("proxies", "resume_download", "trust_remote_code", "_from_auto", "_from_pipeline", "adapter_kwargs")


class FlaxHubModel:
    """transformers 4.x's ``FlaxPreTrainedModel`` surface without transformers' model classes.

    Subclasses set ``config_class`` (a ``PretrainedConfig``), ``base_model_prefix`` and
    ``main_input_name``, and implement ``init_weights(rng, input_shape, params=None)``.
    """

    config_class: Any = None
    base_model_prefix = ""
    main_input_name = "pixel_values"
    _auto_class = None

    def __init__(
        self,
        config: Any,
        module: flax.linen.Module,
        input_shape: Tuple[int, ...] = (1, 1),
        seed: int = 0,
        dtype: jnp.dtype = jnp.float32,
        _do_init: bool = True,
    ) -> None:
        if config is None or module is None:
            raise ValueError(f"{type(self).__name__} needs a config and a module; got {config!r}, {module!r}")
        self._config = config
        self._module = module
        self.key = jax.random.PRNGKey(seed)
        self.dtype = dtype
        self.input_shape = input_shape
        self.generation_config = None
        self._is_initialized = _do_init
        if _do_init:
            random_params = self.init_weights(self.key, input_shape)
            self._params_shape_tree = jax.eval_shape(lambda params: params, random_params)
        else:
            self._params_shape_tree = jax.eval_shape(partial(self.init_weights, input_shape=input_shape), self.key)
        self._required_params = set(flatten_dict(flax.core.unfreeze(self._params_shape_tree)))
        if _do_init:
            self.params = random_params

    def init_weights(self, rng: jax.Array, input_shape: Tuple[int, ...], params: Optional[dict] = None) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must implement init_weights")

    @classmethod
    def can_generate(cls) -> bool:
        return False

    @property
    def framework(self) -> str:
        return "flax"

    @property
    def config(self) -> Any:
        return self._config

    @property
    def module(self) -> flax.linen.Module:
        return self._module

    @property
    def required_params(self) -> set:
        """Flattened parameter paths (tuples) the module needs."""
        return self._required_params

    @property
    def params_shape_tree(self) -> dict:
        """The parameter tree as ``jax.ShapeDtypeStruct`` leaves (no memory)."""
        return self._params_shape_tree

    @property
    def params(self) -> dict:
        if not self._is_initialized:
            raise ValueError(
                "`params` cannot be accessed from a model created with `_do_init=False`: keep the params "
                "outside the model and pass them explicitly (`params=...`)."
            )
        return self._params

    @params.setter
    def params(self, params: dict) -> None:
        if not self._is_initialized:
            raise ValueError("`params` cannot be set on a model created with `_do_init=False`: keep them outside.")
        params = flax.core.unfreeze(params)
        missing = self.required_params - set(flatten_dict(params))
        if missing:
            raise ValueError(f"params lack {len(missing)} required parameters, e.g. {sorted(missing)[:5]}")
        self._params = params

    def _cast_floating_to(self, params: dict, dtype: jnp.dtype, mask: Any = None) -> dict:
        def cast(param: Any) -> Any:
            if isinstance(param, jax.Array) and jnp.issubdtype(param.dtype, jnp.floating):
                return param.astype(dtype)
            return param

        if mask is None:
            return jax.tree.map(cast, params)
        flat = flatten_dict(flax.core.unfreeze(params))
        # As transformers: the mask's leaves, in tree order, pair with the sorted parameter paths.
        for masked, key in zip(jax.tree.leaves(mask), sorted(flat)):
            if masked:
                flat[key] = cast(flat[key])
        return unflatten_dict(flat)

    def to_bf16(self, params: dict, mask: Any = None) -> dict:
        """A copy of ``params`` with floating leaves (where ``mask`` is True) in bfloat16."""
        return self._cast_floating_to(params, jnp.bfloat16, mask)

    def to_fp16(self, params: dict, mask: Any = None) -> dict:
        """A copy of ``params`` with floating leaves (where ``mask`` is True) in float16."""
        return self._cast_floating_to(params, jnp.float16, mask)

    def to_fp32(self, params: dict, mask: Any = None) -> dict:
        """A copy of ``params`` with floating leaves (where ``mask`` is True) in float32."""
        return self._cast_floating_to(params, jnp.float32, mask)

    @classmethod
    def load_flax_weights(cls, resolved_archive_file: str) -> dict:
        """The nested parameter dict stored in a ``.safetensors`` or msgpack file."""
        return read_weights(resolved_archive_file)

    @classmethod
    def load_flax_sharded_weights(cls, shard_files: list) -> dict:
        """The parameters of all msgpack shards, merged, one shard in memory at a time."""
        flat: dict = {}
        for shard_file in shard_files:
            flat.update(flatten_dict(cls.load_flax_weights(shard_file)))
        return unflatten_dict(flat)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, os.PathLike],
        dtype: jnp.dtype = jnp.float32,
        *model_args: Any,
        ignore_mismatched_sizes: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load a model from a local folder, a weights file or a Hub repo id (cached by
        ``huggingface_hub``; ``HF_HUB_OFFLINE=1`` reads the cache only). Returns the model, or
        ``(model, params)`` with ``_do_init=False`` (params kept on the host CPU)."""
        do_init = kwargs.pop("_do_init", True)
        name_or_path = os.fspath(pretrained_model_name_or_path)
        checkpoint = read_checkpoint(cls, name_or_path, **kwargs)
        model = cast(Any, cls)(
            checkpoint.config, *model_args, dtype=dtype, _do_init=do_init, **checkpoint.model_kwargs
        )  # a subclass
        expected = flatten_dict(flax.core.unfreeze(model.params_shape_tree))
        state = flatten_dict(strip_prefix(checkpoint.state, cls.base_model_prefix, {key[0] for key in expected}))
        missing = model.required_params - set(state)
        unexpected = set(state) - model.required_params
        for key, value in list(state.items()):
            if key in expected and tuple(value.shape) != tuple(expected[key].shape):
                if not ignore_mismatched_sizes:
                    raise ValueError(
                        f"{name_or_path}: weight {'/'.join(key)} has shape {tuple(value.shape)} in the checkpoint "
                        f"but {tuple(expected[key].shape)} in the model (ignore_mismatched_sizes=True re-initialises)"
                    )
                logger.warning("%s: re-initialising %s (shape mismatch)", name_or_path, "/".join(key))
                missing.add(key)
                del state[key]
        for key in unexpected:
            del state[key]
        if unexpected:
            logger.warning(
                "%s: %d checkpoint weights unused, e.g. %s", name_or_path, len(unexpected), sorted(unexpected)[:5]
            )
        if missing:
            logger.warning(
                "%s: %d model weights not in the checkpoint, e.g. %s", name_or_path, len(missing), sorted(missing)[:5]
            )
        if do_init:
            if missing:
                random_state = flatten_dict(flax.core.unfreeze(model.params))
                state.update({key: random_state[key] for key in missing})
            model.params = unflatten_dict({key: jnp.asarray(value) for key, value in state.items()})
            return model
        return model, on_host(unflatten_dict(state))

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        """[`save_model`]: ``config.json`` and the weights, whole or not at all (same arguments)."""
        save_model(self, *args, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        use_temp_dir: Optional[bool] = None,
        commit_message: Optional[str] = None,
        private: Optional[bool] = None,
        token: Optional[Union[str, bool]] = None,
        max_shard_size: Union[int, str] = "5GB",
        create_pr: bool = False,
        safe_serialization: bool = True,
        revision: Optional[str] = None,
        commit_description: Optional[str] = None,
        **kwargs: Any,
    ) -> Any:
        """Save to a temporary folder and upload it to the Hub repo ``repo_id`` (created if needed);
        returns ``huggingface_hub``'s commit info."""
        kwargs.pop("tags", None)
        params = kwargs.pop("params", None)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(
                folder, params=params, max_shard_size=max_shard_size, safe_serialization=safe_serialization
            )
            return upload_folder(
                folder, repo_id, token, commit_message, commit_description, private, create_pr, revision
            )


def save_model(
    model: Any,
    save_directory: Union[str, os.PathLike],
    params: Optional[dict] = None,
    push_to_hub: bool = False,
    max_shard_size: Union[int, str] = "10GB",
    token: Optional[Union[str, bool]] = None,
    safe_serialization: bool = False,
    **kwargs: Any,
) -> None:
    """``save_pretrained`` on either base: ``config.json`` and the weights (``model.safetensors``
    with ``safe_serialization=True``, else ``flax_model.msgpack``, sharded above
    ``max_shard_size``), swapped in whole (``utils.weights.save_model_folder``: a killed save
    leaves the previous model, only weight files of ours are removed, by name);
    ``push_to_hub=True`` then uploads the folder (``repo_id=``, ``commit_message=``, ``private=``)."""
    save_directory = os.path.abspath(os.fspath(save_directory))
    params = model.params if params is None else params
    model.config.architectures = [type(model).__name__[4:]]  # transformers' convention: drop "Flax"
    try:
        save_model_folder(save_directory, model.config.save_pretrained, params, safe_serialization, max_shard_size)
    except OSError as err:
        raise type(err)(f"save_pretrained: {err}") from None
    if push_to_hub:
        repo_id = kwargs.pop("repo_id", os.path.basename(save_directory))
        upload_folder(save_directory, repo_id, token=token, **kwargs)


def upload_folder(
    folder: str,
    repo_id: str,
    token: Optional[Union[str, bool]] = None,
    commit_message: Optional[str] = None,
    commit_description: Optional[str] = None,
    private: Optional[bool] = None,
    create_pr: bool = False,
    revision: Optional[str] = None,
) -> Any:
    """Upload ``folder`` to the Hub repo ``repo_id`` (created if needed)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message or "Upload model",
        commit_description=commit_description,
        create_pr=create_pr,
        revision=revision,
    )


@dataclasses.dataclass
class Checkpoint:
    """What a ``from_pretrained`` call read before building the model: the config, the keyword
    arguments left for the model's constructor, the stored parameter tree (as saved, prefix
    included) and where it came from (None for a weights file named directly)."""

    config: Any
    model_kwargs: dict
    state: dict
    source: Optional[ModelSource]


def read_checkpoint(
    cls: Any,
    name_or_path: str,
    *,
    config: Any = None,
    subfolder: str = "",
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: Optional[Union[str, bool]] = None,
    revision: Optional[str] = None,
    **kwargs: Any,
) -> Checkpoint:
    """The config and weights ``cls.from_pretrained(name_or_path, **kwargs)`` loads, on either base:
    a folder or Hub id (resolved by [`resolve_model`]) or a weights file; ``config`` (a
    ``cls.config_class``, or a path to read one from) replaces the folder's ``config.json``;
    the remaining ``kwargs`` override config fields, and those the config does not know are
    returned for the model's constructor. Weights are read with ``cls.load_flax_weights`` /
    ``load_flax_sharded_weights``, so a subclass's reader applies."""
    subfolder = subfolder or ""
    kwargs.pop("_commit_hash", None)
    for name in _IGNORED_KWARGS:
        kwargs.pop(name, None)
    if kwargs.pop("from_pt", False):
        raise ValueError("from_pt=True needs PyTorch; convert taming checkpoints with `vqgan-flax convert`")
    if kwargs.pop("use_auth_token", None) is not None:
        raise TypeError("use_auth_token was removed: pass token=...")
    source: Optional[ModelSource] = None
    if os.path.isfile(os.path.join(subfolder, name_or_path)):  # a weights file itself
        files = [os.path.join(subfolder, name_or_path)]
        filename, folder = os.path.basename(files[0]), os.path.dirname(files[0])
    else:
        source = resolve_model(
            name_or_path,
            subfolder,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            needs_config=not isinstance(config, cls.config_class),
        )
        folder = source.folder
        files, filename = weight_files(folder, single_set=source.hub_id is None)
    if not isinstance(config, cls.config_class):
        config, model_kwargs = cls.config_class.from_pretrained(
            folder if config is None else config, return_unused_kwargs=True, **kwargs
        )
    else:
        model_kwargs = dict(kwargs)
    if filename == SAFE_WEIGHTS_NAME:
        from safetensors import safe_open

        with safe_open(files[0], framework="flax") as f:
            weights_format = (f.metadata() or {}).get("format")
        if weights_format != "flax":
            raise OSError(
                f"{files[0]}: safetensors format {weights_format!r}, expected 'flax' (PyTorch weights: "
                "convert them with `vqgan-flax convert`)"
            )
    state = cls.load_flax_sharded_weights(files) if len(files) > 1 else cls.load_flax_weights(files[0])
    return Checkpoint(config, model_kwargs, flax.core.unfreeze(state), source)


def strip_prefix(state: dict, prefix: str, top_level: set) -> dict:
    """``state`` with the model's top-level names: transformers saves a head model's base under
    ``prefix`` (e.g. ``vqgan``); a base model reads that subtree, a head model wraps a bare one."""
    if prefix and prefix not in top_level and prefix in state:
        return state[prefix]
    if prefix and prefix in top_level and prefix not in state:
        return {prefix: state}
    return state


def on_host(params: dict) -> dict:
    """``params`` on the host CPU: what ``from_pretrained(..., _do_init=False)`` returns, so a
    caller shards or places them itself without a copy on the default device first."""
    host = jax.local_devices(backend="cpu")[0]
    return jax.tree.map(lambda value: jax.device_put(value, host), params)


def _transformers_flax_base() -> Optional[type]:
    """transformers' ``FlaxPreTrainedModel``, or None where the installed transformers lacks it."""
    try:
        if importlib.util.find_spec("transformers.modeling_flax_utils") is None:
            return None
    except (ImportError, ValueError):
        return None
    from transformers.modeling_flax_utils import FlaxPreTrainedModel

    return FlaxPreTrainedModel


def pretrained_base() -> type:
    """The base under ``FlaxVQGANPreTrainedModel``: transformers' ``FlaxPreTrainedModel`` where the
    installed transformers has it (so ``isinstance`` checks and pipelines of transformers 4 see a
    transformers model), else ``FlaxHubModel``. Decided by what is installed, nothing else; a
    model on the other base is ``FlaxVQGANMixin`` over it (see ``hub.modeling``)."""
    return _transformers_flax_base() or FlaxHubModel


__all__ = ["Checkpoint", "FlaxHubModel", "on_host", "pretrained_base", "read_checkpoint", "strip_prefix"]
