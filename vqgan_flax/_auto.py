"""``model_type: vqgan`` for transformers' Auto classes, without importing transformers (or JAX)
at ``import vqgan_flax``: that import stays fast, so ``vqgan-flax --help`` answers at once.

After ``import vqgan_flax``, AutoConfig and AutoImageProcessor (and FlaxAutoModel, where the
installed transformers still has it) resolve ``vqgan`` whichever is imported first. An import hook
calls [`register`] right after transformers, the configuration module, the processor module or
the model module has executed (and at once where transformers is imported already); each call
registers what can be imported by then. The parts themselves know nothing of the Auto classes:
this root module, which may import any part, does all of it.

Imports only the standard library at import time.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any, Optional

from .utils.quiet import quiet_transformers_advice

_CONFIG = "vqgan_flax.models.configuration"
_PROCESSOR = "vqgan_flax.data.processing"
_MODEL = "vqgan_flax.hub.modeling"
# After any of these has executed, register() runs (each may be what imports transformers).
_WATCHED = ("transformers", _CONFIG, _PROCESSOR, _MODEL)

_done = {"config": False, "processor": False, "model": False, "real_model": False}


def _ready(module: str, name: str) -> Optional[Any]:
    """``module.name`` if ``module`` can be imported now (not half-initialised), else None."""
    loaded = sys.modules.get(module)
    if loaded is not None and not hasattr(loaded, name):
        return None  # still executing: the hook calls register() once it has
    return getattr(importlib.import_module(module), name)


def register() -> None:
    """Register ``VQGANConfig``, ``VQGANImageProcessor`` and the Flax model with the Auto classes
    (idempotent; each part once its module can be imported)."""
    if "transformers" not in sys.modules or not hasattr(sys.modules["transformers"], "AutoConfig"):
        return
    with quiet_transformers_advice():
        config = _ready(_CONFIG, "VQGANConfig")
        if config is None:
            return
        if not _done["config"]:
            from transformers import AutoConfig

            AutoConfig.register(config.model_type, config, exist_ok=True)
            _done["config"] = True
        processor = _ready(_PROCESSOR, "VQGANImageProcessor")
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
        if importlib.util.find_spec("transformers.modeling_flax_utils") is None:
            return
        from transformers import FlaxAutoModel

        model = sys.modules.get(_MODEL)
        real = getattr(model, "FlaxVQGANModel", None) if model is not None else None
        if real is not None and not _done["real_model"]:
            FlaxAutoModel.register(config, real, exist_ok=True)
            _done["model"] = _done["real_model"] = True
        elif not _done["model"]:
            # The model class needs JAX and flax: a stand-in resolves it on first use.
            FlaxAutoModel.register(config, _flax_model_stand_in(config), exist_ok=True)
            _done["model"] = True


def _flax_model_stand_in(config_class: type) -> type:
    def real() -> Any:
        return importlib.import_module(_MODEL).FlaxVQGANModel

    class LazyFlaxVQGANModel:
        """FlaxAutoModel's entry for ``vqgan`` until ``FlaxVQGANModel`` is imported."""

        config_class: Any = None

        @classmethod
        def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
            return real().from_pretrained(*args, **kwargs)

        @classmethod
        def _from_config(cls, config: Any, **kwargs: Any) -> Any:
            return real()(config, **kwargs)

        from_config = _from_config

    LazyFlaxVQGANModel.config_class = config_class
    return LazyFlaxVQGANModel


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of each watched module so that [`register`] runs
    once the module has executed (transformers quietly, as our own imports of it are)."""

    def __init__(self) -> None:
        self.waiting = set(_WATCHED)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in self.waiting:
            return None
        self.waiting.discard(name)
        if not self.waiting:
            sys.meta_path.remove(self)
        spec = None
        for finder in list(sys.meta_path):
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None:
            return spec
        loader: Any = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module: Any) -> None:
            with quiet_transformers_advice():
                exec_module(module)
            register()

        loader.exec_module = exec_then_register
        return spec


def register_when_transformers_loads() -> None:
    """Register now if transformers is imported already, and again as each watched module loads."""
    if not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        finder = _AfterImport()
        finder.waiting -= set(sys.modules)
        if finder.waiting:
            sys.meta_path.insert(0, finder)
    register()


__all__ = ["register", "register_when_transformers_loads"]
