"""Optional dependencies: a feature that needs one fails at once, before any work, naming the
``pip install "vqgan-flax[EXTRA]"`` that brings it (never as a skipped item per input).

Imports only the standard library.
"""

from __future__ import annotations

import importlib

# module → (extra, what needs it); the extras are pyproject.toml's [project.optional-dependencies].
EXTRAS = {
    "av": ("video", "reading videos"),
    "datasets": ("datasets", "reading Hugging Face datasets"),
    "s3fs": ("s3", "reading and writing s3:// URLs"),
    "gcsfs": ("gcs", "reading and writing gs:// URLs"),
    "aiohttp": ("http", "reading http(s):// URLs"),
    "ray": ("ray", "Ray Data as the engine"),
}


class MissingExtra(ImportError):
    """An optional dependency a requested feature needs is not installed."""


def require(module: str) -> None:
    """Raise [`MissingExtra`] naming the install command unless ``module`` can be imported."""
    extra, purpose = EXTRAS[module]
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f'{purpose} needs {module}, which is not installed: pip install "vqgan-flax[{extra}]"'
        ) from None


__all__ = ["EXTRAS", "MissingExtra", "require"]
