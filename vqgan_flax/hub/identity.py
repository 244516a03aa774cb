"""Which model made a set of tokens, by content: the same weights installed at another path (or
staged per node of a cluster) are the same model; other weights, or another computation dtype,
are not.

Token files record [`token_settings`]: the model's digest (a hash of its architecture fields and
every parameter), its name, Hub id, revision and resolved commit, the dtype, image size, resize,
crop and pixel range. A resumed run and a decode compare those with [`check_same_tokens`],
which names the first field that differs with both values. Paths, commits and versions are
kept as information only.

Imports ``numpy`` and, at call time, the configuration module.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any, Dict, Iterable, Optional

import numpy as np

# Settings that change the tokens a model makes (compared on resume), besides the digest.
TOKEN_SETTINGS = ("dtype", "image_size", "resize", "crop", "pixel_range", "n_embed", "grid")


def _architecture(config: Any) -> Dict[str, Any]:
    """The config's own fields (those of ``VQGANConfig.__init__``), not transformers' generic ones,
    whose defaults differ between transformers 4 and 5."""
    from ..models.configuration import VQGANConfig

    names = [n for n in inspect.signature(VQGANConfig.__init__).parameters if n not in ("self", "kwargs")]
    return {name: getattr(config, name) for name in names if hasattr(config, name)}


def params_digest(config: Any, params: Any) -> str:
    """``sha256:<hex>`` of the architecture fields and every parameter (path, dtype, shape,
    bytes, in sorted path order): the same for a model in msgpack or safetensors, anywhere on disk."""
    import flax
    from flax.traverse_util import flatten_dict

    digest = hashlib.sha256(json.dumps(_architecture(config), sort_keys=True, default=str).encode())
    for path, leaf in sorted(flatten_dict(flax.core.unfreeze(params)).items()):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(json.dumps(["/".join(map(str, path)), str(array.dtype), list(array.shape)]).encode())
        digest.update(array.tobytes())
    return f"sha256:{digest.hexdigest()}"


def model_digest(model: Any) -> str:
    """[`params_digest`] of ``model.params``, computed once while ``model.params`` stays the same object."""
    params = model.params
    cached = getattr(model, "_digest", None)
    if cached is not None and cached[0] is params:
        return cached[1]
    digest = params_digest(model.config, params)
    model._digest = (params, digest)
    return digest


def token_settings(model: Any, name: str, processor: Any, grid: Iterable[int]) -> Dict[str, Any]:
    """What a token file records about the model and the settings that made its tokens."""
    import jax.numpy as jnp

    source = getattr(model, "source", None)
    height, width = processor.output_size
    return {
        "model": name,
        "model_digest": model_digest(model),
        "hub_id": getattr(source, "hub_id", None),
        "revision": getattr(source, "revision", None),
        "commit": getattr(source, "commit", None),
        "dtype": jnp.dtype(model.dtype).name,
        "image_size": height if height == width else [height, width],
        "crop": bool(processor.do_center_crop),
        "resize": processor.size.get("shortest_edge") if processor.do_resize else None,
        "pixel_range": [float(v) for v in processor.pixel_range],
        "n_embed": model.config.n_embed,
        "downsampling_factor": model.config.downsampling_factor,
        "grid": list(grid),
    }


def _describe(record: Dict[str, Any]) -> str:
    """The model's name and commit, for a message."""
    name = record.get("hub_id") or record.get("model")
    commit = record.get("commit")
    return f"{name}@{commit[:12]}" if commit else str(name)


def check_same_tokens(
    existing: Dict[str, Any], current: Dict[str, Any], where: str, fields: Optional[Iterable[str]] = None
) -> None:
    """Refuse, naming the field and both values, when ``current`` would make other tokens than
    the run that wrote ``existing``. Records older than the digest (token file version 2) are
    compared by model name and revision, as they were written."""
    fields = list(TOKEN_SETTINGS if fields is None else fields)
    if "model_digest" in existing:
        fields.insert(0, "model_digest")
    else:
        fields[:0] = ["model", "revision"]
    for field in fields:
        if field not in existing and field in ("dtype", "resize", "crop"):
            continue  # recorded from version 3 on; older files did not record them
        old, new = existing.get(field), current.get(field)
        if old != new:
            models = ""
            if field == "model_digest":
                models = f" (tokens: {_describe(existing)}; this run: {_describe(current)}): other weights"
            raise ValueError(
                f"{where} holds tokens made with {field}={old!r}, this run has {new!r}{models}; "
                "use another output folder or the same model and settings"
            )


__all__ = ["TOKEN_SETTINGS", "check_same_tokens", "model_digest", "params_digest", "token_settings"]
