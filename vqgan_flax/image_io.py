"""Reading images for the model and writing its outputs: pixels in [-1, 1] ↔ uint8 RGB."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def to_rgb(image: Any) -> Any:
    """A PIL image → RGB PIL image: EXIF orientation applied, palette and grayscale expanded,
    transparency composited on white, 16-bit and 32-bit integer images scaled to 8 bits."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow's convert("RGB") clips these at 255; scale the full 16-bit range instead.
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def resize_and_center_crop(image: Any, size: int, crop: int) -> Any:
    """Resize a PIL image so its shorter side is ``size`` (bicubic), then center-crop ``crop``²."""
    from PIL import Image

    scale = size / min(image.size)
    resized = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
    image = image.resize(resized, Image.Resampling.BICUBIC)
    left, top = (image.width - crop) // 2, (image.height - crop) // 2
    return image.crop((left, top, left + crop, top + crop))


def load_image(item: Any, size: int) -> np.ndarray:
    """An image file path or an (H, W, C) array → (size, size, 3) float32 in [-1, 1].

    Files are read with Pillow and go through [`to_rgb`] and [`resize_and_center_crop`].
    uint8 arrays are rescaled; float arrays are taken as [-1, 1].
    """
    if isinstance(item, np.ndarray):
        array = item
    else:
        from PIL import Image

        with Image.open(item) as image:
            array = np.asarray(resize_and_center_crop(to_rgb(image), size, size))
    if array.shape[:2] != (size, size):
        raise ValueError(
            f"{item if not isinstance(item, np.ndarray) else 'array'}: shape {array.shape}, expected {size}x{size}"
        )
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 127.5 - 1.0
    return array.astype(np.float32)


def to_uint8(pixels: Any) -> np.ndarray:
    """Model output in [-1, 1] (values outside are clipped) → uint8."""
    return np.clip(np.round((np.asarray(pixels, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place: an
    interrupted write never leaves a partial ``path``.

    The temporary name is hidden and ends in ``.partial``, so what a killed process leaves behind
    is never taken for an image by a later run ([`list_images`] skips it); the result gets the
    permissions the umask allows (``mkstemp`` alone would leave every output at 0600)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_png(path: str, image: np.ndarray) -> None:
    """Write a uint8 (H, W, 3) image as PNG, atomically."""
    from PIL import Image

    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"))


def list_images(paths: Any) -> list:
    """Image files from a list of files and folders (folders: recursively, sorted)."""
    found = []
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            found += sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                # Hidden files: partial outputs of a killed run, macOS "._x.jpg" metadata, never photos.
                if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")
            )
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not found:
        raise FileNotFoundError(f"no images in {paths}")
    return found
