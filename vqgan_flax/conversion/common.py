"""What every checkpoint mapping shares: the expected parameter shapes of an architecture, one
error that lists every mismatch, the weight sanity check, and the reader's size limit."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from ..models.configuration import VQGANConfig

__all__ = [
    "ConversionError",
    "check_weights",
    "checkpoint_read_limit",
    "describe_architecture",
    "expected_param_shapes",
    "raise_on_mismatch",
]


class ConversionError(ValueError):
    """The checkpoint does not match the architecture: names every missing, unexpected or
    mis-shaped key."""


def expected_param_shapes(config: VQGANConfig, model: Any = None) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
    """Shapes of every Flax parameter for ``config``: ``model.params_shape_tree`` where a model is
    given, else ``jax.eval_shape`` of ``FlaxVQGANModule``'s init (no compute, no memory)."""
    import jax
    import jax.numpy as jnp
    from flax.traverse_util import flatten_dict

    if model is not None:
        tree = model.params_shape_tree
    else:
        from ..models.module import FlaxVQGANModule

        side = config.downsampling_factor  # parameter shapes do not depend on the image size
        sample = jax.ShapeDtypeStruct((1, side, side, config.in_channels), jnp.float32)
        rngs = {name: jax.random.PRNGKey(0) for name in ("params", "dropout", "gumbel")}
        tree = jax.eval_shape(FlaxVQGANModule(config).init, rngs, sample)["params"]
    return {k: tuple(v.shape) for k, v in flatten_dict(tree).items()}


def raise_on_mismatch(
    source: str, architecture: str, missing: List[str], unexpected: List[str], mismatched: List[str]
) -> None:
    """One error listing every missing key, unexpected key and shape mismatch (if there are any)."""
    if not (unexpected or mismatched or missing):
        return
    lines = [f"{source} does not match the architecture ({architecture or 'given parameter shapes'}):"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            lines.append(f"  {len(items)} {title}: " + "; ".join(sorted(items)))
    raise ConversionError("\n".join(lines))


def check_weights(named: Dict[str, Any], source: str) -> None:
    """Refuse weights a model would silently compute garbage with: non-floating dtypes (an int8 or
    bool tensor where a float belongs) and NaN/inf values. Names the first offending tensor."""
    import jax.numpy as jnp

    for name, value in named.items():
        array = np.asarray(value)
        if not jnp.issubdtype(array.dtype, jnp.floating):
            raise ConversionError(f"{source}: weight {name} has dtype {array.dtype}, expected floating point")
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ConversionError(f"{source}: weight {name} holds {bad} non-finite values (NaN/inf)")


def describe_architecture(config: VQGANConfig) -> str:
    """One line naming the fields that decide the parameter shapes (for error messages)."""
    return (
        f"quantizer={config.quantizer}, ch={config.ch}, ch_mult={config.ch_mult}, "
        f"num_res_blocks={config.num_res_blocks}, attn_resolutions={config.attn_resolutions}, "
        f"resolution={config.resolution}, z_channels={config.z_channels}, embed_dim={config.embed_dim}, "
        f"n_embed={config.n_embed}"
    )


def checkpoint_read_limit(expected: Dict[Tuple[str, ...], Tuple[int, ...]]) -> int:
    """Bytes a taming checkpoint for these parameter shapes may make the reader load: 8x the
    model in float32 (a Lightning file adds the discriminator, LPIPS and two Adam moments per
    weight) plus 256 MB, so a small file cannot inflate into gigabytes."""
    return 8 * 4 * sum(int(np.prod(shape)) for shape in expected.values()) + (256 << 20)
