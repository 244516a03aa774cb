"""EMA weights in Lightning checkpoints of the taming layout (``LitEma``: IBQ, latent-diffusion).

A model trained with ``use_ema`` keeps, beside its own weights, ``LitEma``'s shadow copies as
buffers named ``model_ema.`` + the weight's name with its dots removed
(``model_ema.encoderconv_inweight`` is ``encoder.conv_in.weight``), and two counters,
``model_ema.decay`` and ``model_ema.num_updates``. Their own evaluations switch to the EMA
weights (``ema_scope``), and so does the conversion unless ``ema=False``.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from .common import ConversionError

EMA_PREFIX = "model_ema."
# LitEma's own counters, not shadows of any weight.
EMA_COUNTERS = ("model_ema.decay", "model_ema.num_updates")


def has_ema(state: Dict[str, Any]) -> bool:
    """Whether ``state`` holds LitEma shadow weights."""
    return any(k.startswith(EMA_PREFIX) and k not in EMA_COUNTERS for k in state)


def lit_ema_state(state: Dict[str, np.ndarray], source: str, ema: bool = True) -> Tuple[Dict[str, np.ndarray], str]:
    """The model's weights under taming's names (``loss.*`` and the EMA buffers set aside), the
    EMA shadows in their place when ``ema`` and there are any; and which (``ema`` or ``model``).
    Every model weight must have its shadow, or the EMA model would be a mixture: refused, naming
    the weights without one."""
    model = {k: v for k, v in state.items() if not k.startswith((EMA_PREFIX, "loss."))}
    if not ema or not has_ema(state):
        return model, "model"
    shadows = {k[len(EMA_PREFIX) :]: v for k, v in state.items() if k.startswith(EMA_PREFIX)}
    shadows = {k: v for k, v in shadows.items() if EMA_PREFIX + k not in EMA_COUNTERS}
    by_flat_name = {key.replace(".", ""): key for key in model}
    if len(by_flat_name) != len(model):
        raise ConversionError(
            f"{source}: two weights share a name without dots; their EMA shadows cannot be told apart"
        )
    unmatched = sorted(set(shadows) - set(by_flat_name))
    without = sorted(key for flat, key in by_flat_name.items() if flat not in shadows)
    if unmatched or without:
        problems = []
        if unmatched:
            problems.append(f"EMA shadows of no model weight: {', '.join(EMA_PREFIX + k for k in unmatched[:10])}")
        if without:
            problems.append(f"model weights without an EMA shadow: {', '.join(without[:10])}")
        raise ConversionError(f"{source}: {'; '.join(problems)} (use --no-ema for the trained weights)")
    return {by_flat_name[flat]: value for flat, value in shadows.items()}, "ema"


__all__ = ("EMA_COUNTERS", "EMA_PREFIX", "has_ema", "lit_ema_state")
