"""``model_type: vqgan`` for transformers' Auto classes, without importing transformers (or JAX)
at ``import vqgan_flax``: that import stays fast, so ``vqgan-flax --help`` answers at once.

After ``import vqgan_flax``, AutoConfig and AutoImageProcessor (and FlaxAutoModel, where the
installed transformers still has it) resolve ``vqgan`` whichever comes first:
- transformers already imported: [`register`] runs at once;
- otherwise a one-shot import hook runs it right after transformers itself has been imported
  (by the user, or by one of our modules), with transformers' advisory messages kept off stderr;
- ``configuration_vqgan`` and ``image_processing_vqgan`` also call [`register`] on their last line,
  for the case where one of them was what imported transformers (the hook must not import a
  module that is still half-initialised; it leaves the work to them).

Imports only the standard library here; ``register`` imports the configuration and processor modules.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any, Optional

from ._quiet import quiet_transformers_advice

_done = {"config": False, "processor": False, "model": False}
# Our modules whose import (re-entrantly) imports transformers.
_OURS = ("vqgan_flax.configuration_vqgan", "vqgan_flax.image_processing_vqgan")


def _ready(module: str, name: str) -> Optional[Any]:
    """``module.name`` if ``module`` can be imported now (not half-initialised), else None."""
    loaded = sys.modules.get(module)
    if loaded is not None and not hasattr(loaded, name):
        return None  # still executing: it calls register() on its last line
    return getattr(importlib.import_module(module), name)


def register() -> None:
    """Register ``VQGANConfig``, ``VQGANImageProcessor`` and the Flax model with the Auto classes
    (idempotent; each part once its module can be imported)."""
    with quiet_transformers_advice():
        config = _ready("vqgan_flax.configuration_vqgan", "VQGANConfig")
        if config is None:
            return
        if not _done["config"]:
            from transformers import AutoConfig

            AutoConfig.register(config.model_type, config, exist_ok=True)
            _done["config"] = True
        processor = _ready("vqgan_flax.image_processing_vqgan", "VQGANImageProcessor")
        if processor is not None and not _done["processor"]:
            _done["processor"] = True
            from transformers import AutoImageProcessor

            # Keyword accepted by both transformers 4.57 and 5.x (their positional parameters differ).
            try:
                AutoImageProcessor.register(config, slow_image_processor_class=processor, exist_ok=True)
            except ImportError:
                # Some transformers 5.x releases (5.17 seen) make AutoImageProcessor a placeholder
                # that demands torch/torchvision; VQGANImageProcessor needs neither, so only the Auto
                # lookup is lost there and importing vqgan_flax must still work.
                pass
        if not _done["model"] and importlib.util.find_spec("transformers.modeling_flax_utils") is not None:
            from transformers import FlaxAutoModel

            # The model class needs JAX and flax: a stand-in resolves it on first use (and the
            # real class replaces it when modeling_flax_vqgan is imported).
            FlaxAutoModel.register(config, _flax_model_stand_in(config), exist_ok=True)
            _done["model"] = True


def register_model(model_class: type) -> None:
    """Point FlaxAutoModel at the real class once it exists (transformers 4.x only)."""
    if _done["model"]:
        from transformers import FlaxAutoModel

        FlaxAutoModel.register(model_class.config_class, model_class, exist_ok=True)


def _flax_model_stand_in(config_class: type) -> type:
    def real() -> type:
        from .modeling_flax_vqgan import FlaxVQGANModel

        return FlaxVQGANModel

    class LazyFlaxVQGANModel:
        """FlaxAutoModel's entry for ``vqgan`` until ``FlaxVQGANModel`` is imported."""

        @classmethod
        def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
            return real().from_pretrained(*args, **kwargs)

        @classmethod
        def _from_config(cls, config: Any, **kwargs: Any) -> Any:
            return real()(config, **kwargs)

        from_config = _from_config

    LazyFlaxVQGANModel.config_class = config_class
    return LazyFlaxVQGANModel


class _AfterTransformers(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps transformers' loader so that [`register`] runs once its
    top-level module has executed (quietly, as our own imports of it are)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            with quiet_transformers_advice():
                exec_module(module)
            register()

        spec.loader.exec_module = exec_then_register
        return spec


def register_when_transformers_loads() -> None:
    """Register now if transformers is imported already, else once it is."""
    if "transformers" in sys.modules:
        register()
    elif not any(isinstance(finder, _AfterTransformers) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformers())


__all__ = ["register", "register_model", "register_when_transformers_loads"]
