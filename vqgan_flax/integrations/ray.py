"""``VQGANTokenizer``: tokenizing a Ray Data dataset with ``map_batches`` on CPU, GPU or TPU
workers::

    import ray
    from vqgan_flax.integrations.ray import VQGANTokenizer

    tokens = ray.data.read_parquet("s3://bucket/images/").map_batches(
        VQGANTokenizer,
        fn_constructor_kwargs={"model": "org/vqgan", "batch_size": 64},
        batch_size=64, concurrency=4, num_gpus=1, batch_format="numpy",
    )

Each Ray worker builds one tokenizer (the model loads and its program compiles once); every
batch is padded to ``batch_size`` rows so one compiled program serves the whole run, whatever
size Ray hands over (a dataset's last block is usually short). The class itself needs no Ray: it
maps a dict of columns to a dict of columns, so it is tested and usable without a cluster.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..data.processing import checked_pixel_range, processor_for_model
from ..data.sources import image_from_value

# Tried in this order when ``key_column`` is not given: our token files' ``key``, Ray's
# ``read_images(include_paths=True)`` ``path``, webdataset's ``__key__``.
KEY_COLUMNS = ("key", "path", "__key__")


class VQGANTokenizer:
    """Images of a column → VQGAN tokens, one batch of columns at a time.

    ``model``: a folder, an LWM pickle or a Hub id (at ``revision``), computing in ``dtype``
    (``float32`` or ``bfloat16``); ``size``/``pixel_range`` override the model's own image
    processor, as on the command line. ``image_column`` holds encoded bytes, Hugging Face's
    ``{"bytes", "path"}``, uint8 arrays or paths. The output has ``key`` (from ``key_column``),
    ``tokens`` (int32, ``frames * height * width`` per row), ``frames``, ``height``, ``width``,
    ``error`` (``None``, or why the row's image could not be read: its tokens are then all -1;
    with ``strict`` the batch fails instead) and every other input column but the image, unless
    ``keep_columns`` names the ones to keep.
    """

    def __init__(
        self,
        model: str,
        revision: Optional[str] = None,
        size: Optional[int] = None,
        pixel_range: Optional[Sequence[float]] = None,
        dtype: str = "float32",
        image_column: str = "image",
        key_column: Optional[str] = None,
        batch_size: int = 32,
        keep_columns: Optional[Sequence[str]] = None,
        strict: bool = False,
    ) -> None:
        import jax.numpy as jnp

        from ..hub.identity import token_settings
        from ..hub.modeling import FlaxVQGANModel

        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16; got {dtype!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        kwargs = {"revision": revision} if revision else {}
        self.model = FlaxVQGANModel.from_pretrained(model, dtype=getattr(jnp, dtype), **kwargs)
        ranged = checked_pixel_range(pixel_range, "pixel_range") if pixel_range is not None else None
        self.processor = processor_for_model(self.model, size, ranged)
        if self.processor.output_size is None:
            raise ValueError(f"{model}: its image processor does not crop; give size")
        self.grid = tuple(self.model.config.latent_shape(*self.processor.output_size))
        self.metadata = token_settings(self.model, model, self.processor, self.grid)
        self.image_column, self.key_column, self.batch_size = image_column, key_column, batch_size
        self.keep_columns, self.strict = keep_columns, strict

    def _key_column(self, batch: Dict[str, Any]) -> str:
        if self.key_column is not None:
            if self.key_column not in batch:
                raise ValueError(f"no key column {self.key_column!r} in the batch (columns: {sorted(batch)})")
            return self.key_column
        found = next((name for name in KEY_COLUMNS if name in batch), None)
        if found is None:
            raise ValueError(f"no key column: give key_column (the batch has {sorted(batch)}; tried {KEY_COLUMNS})")
        return found

    def _pixels(self, value: Any, key: str) -> Any:
        image = image_from_value(value, key)
        return np.asarray(self.processor.resize_crop(image), np.uint8)

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        if self.image_column not in batch:
            raise ValueError(f"no image column {self.image_column!r} in the batch (columns: {sorted(batch)})")
        key_column = self._key_column(batch)
        keys = [str(k) for k in batch[key_column]]
        height, width = self.grid
        pixels: List[Optional[np.ndarray]] = []
        errors: List[Optional[str]] = []
        for key, value in zip(keys, batch[self.image_column]):
            try:
                pixels.append(self._pixels(value, key))
                errors.append(None)
            except Exception as err:  # an unreadable image is its row's error, not the batch's
                if self.strict:
                    raise ValueError(f"{key}: {type(err).__name__}: {err}") from None
                pixels.append(None)
                errors.append(f"{type(err).__name__}: {err}")
        tokens = np.full((len(keys), height * width), -1, np.int32)
        good = {i: p for i, p in enumerate(pixels) if p is not None}
        order = list(good)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            chunk = np.stack([good[i] for i in rows])
            tokens[rows] = self._encode_padded(self.processor.to_pixel_values(chunk))
        out = {
            "key": np.asarray(keys, dtype=object),
            "tokens": tokens,
            "frames": np.ones(len(keys), np.int32),
            "height": np.full(len(keys), height, np.int32),
            "width": np.full(len(keys), width, np.int32),
            "error": np.asarray(errors, dtype=object),
        }
        kept = self.keep_columns if self.keep_columns is not None else [
            c for c in batch if c not in (self.image_column, key_column)
        ]  # fmt: skip
        for column in kept:
            if column not in batch:
                raise ValueError(f"keep_columns names {column!r}, not a column of the batch ({sorted(batch)})")
            if column in out:
                raise ValueError(f"column {column!r} would overwrite an output column; rename it or leave it out")
            out[column] = batch[column]
        return out

    def _encode_padded(self, pixels: np.ndarray) -> np.ndarray:
        """Tokens (n, h * w) for n ≤ ``batch_size`` images, run at exactly ``batch_size`` rows."""
        count = len(pixels)
        padded = np.concatenate([pixels, np.repeat(pixels[-1:], self.batch_size - count, axis=0)])
        indices = self.model.encode(padded).indices  # the model's compiled program for this shape
        return np.asarray(indices)[:count].reshape(count, -1).astype(np.int32)


__all__ = ("KEY_COLUMNS", "VQGANTokenizer")
