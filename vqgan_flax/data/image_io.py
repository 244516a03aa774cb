"""Reading images for the model and writing its outputs: pixels in [-1, 1] ↔ uint8 RGB."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.files import NotRegularFileError, atomic_write, open_regular

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")


def to_rgb(image: Any) -> Any:
    """A PIL image → RGB PIL image: EXIF orientation applied, palette and grayscale expanded,
    transparency composited on white, 16-bit and 32-bit integer images scaled to 8 bits, float
    images taken as [0, 1] (or 0..255 where their values are larger)."""
    from PIL import Image, ImageOps

    depth = _integer_range(image)  # before exif_transpose, whose copy drops the TIFF tags
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = Image.fromarray(_integer_to_uint8(np.asarray(image), *depth))
    if image.mode == "F":
        # Float images are [0, 1] by the common convention (convert("RGB") would clip them to
        # black); a float image with larger values is taken as 0..255. NaN and inf are refused.
        values = np.asarray(image, np.float32)
        if not np.isfinite(values).all():
            raise ValueError("a float image with NaN or infinite pixels")
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        image = Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def _integer_range(image: Any) -> Tuple[int, bool]:
    """The largest value of an integer image's declared range, and whether it is signed: 32-bit
    TIFFs say theirs (unsigned 2^32-1, signed 2^31-1); every other integer image is 16-bit."""
    bits = image.tag_v2.get(258, ()) if getattr(image, "format", None) == "TIFF" else ()
    if 32 not in tuple(bits):
        return (1 << 16) - 1, False
    signed = tuple(image.tag_v2.get(339, (1,)))[:1] == (2,)
    return ((1 << 31) - 1, True) if signed else ((1 << 32) - 1, False)


def _integer_to_uint8(values: np.ndarray, top_value: int, signed: bool) -> np.ndarray:
    """Integer pixels over ``0..top_value`` scaled to 8 bits, rounding to nearest, in integers
    (top_value / 255 is 257 or 16843009, odd: no value is a tie). Pillow's convert("RGB") would
    clip at 255 instead. Negative values of a signed image are refused."""
    if signed and values.size and values.min() < 0:
        raise ValueError("a signed 32-bit image with negative pixel values")
    if top_value == (1 << 32) - 1:
        values = values.view(np.uint32)  # Pillow reads unsigned 32-bit pixels into int32
    scaled = np.empty(values.shape, np.uint8)
    for top in range(0, values.shape[0], 1024):  # rows at a time: no full-size int64 copy
        rows = values[top : top + 1024].astype(np.int64)
        scaled[top : top + 1024] = np.clip((rows * 255 + top_value // 2) // top_value, 0, 255)
    return scaled


# Above this many pixels, the resized image is never built: the crop is resampled straight from
# the source region it covers (a 1x8000 PNG at 256 would otherwise be a 256x2,048,000 image, GBs).
# Below it the result is bit-identical to resize-then-crop; above it Pillow may run its two
# resampling passes in the other order, which can move a pixel by a few levels.
_RESIZE_LIMIT_PIXELS = 1 << 24


def resize_and_center_crop(image: Any, size: int, crop: int, crop_width: Optional[int] = None) -> Any:
    """Resize a PIL image so its shorter side is ``size`` (bicubic), then center-crop ``crop``²
    (or ``crop`` x ``crop_width``, height x width).

    Memory is bounded whatever the aspect ratio: when the resized image would exceed 2**24 pixels,
    only the source region under the crop is resampled."""
    from PIL import Image

    height, width = crop, crop if crop_width is None else crop_width
    scale = size / min(image.size)
    resized = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
    left, top = (resized[0] - width) // 2, (resized[1] - height) // 2
    inside = left >= 0 and top >= 0
    if inside and resized[0] * resized[1] > _RESIZE_LIMIT_PIXELS:
        # Pillow maps output pixel j of a box resize to box_start + (j + 0.5) * box_size / out, the
        # same source point as pixel left + j of the full resize.
        sx, sy = image.width / resized[0], image.height / resized[1]
        box = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
        return image.resize((width, height), Image.Resampling.BICUBIC, box=box)
    image = image.resize(resized, Image.Resampling.BICUBIC)
    return image.crop((left, top, left + width, top + height))


# What decoding one image may cost, from its header: the decoded pixels at the mode's depth plus
# the 8-bit RGB (and RGBA, for transparency) images made from them. A 12000 x 12000 16-bit PNG of
# 280 KB would cost 1.4 GB; a 8K RGB photograph costs 0.4 GB.
MAX_DECODE_BYTES = 1 << 30
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
                    "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}  # fmt: skip


def decode_cost(image: Any) -> int:
    """Bytes [`to_rgb`] needs for an opened (not yet decoded) PIL image: its pixels at the mode's
    depth (4 bytes for 32-bit and unknown modes) plus 8 per pixel for the RGB(A) images made."""
    return image.width * image.height * (_BYTES_PER_PIXEL.get(image.mode, 4) + 8)


def decode_rgb(image: Any, where: str) -> Any:
    """[`to_rgb`] on an opened image whose decode fits ``MAX_DECODE_BYTES`` (checked from the
    header, before the pixels are decoded)."""
    cost = decode_cost(image)
    if cost > MAX_DECODE_BYTES:
        raise ValueError(f"{where}: a {image.width}x{image.height} {image.mode} image needs {cost >> 20} MiB "
                         f"to decode, more than {MAX_DECODE_BYTES >> 20} MiB")  # fmt: skip
    return to_rgb(image)


def open_rgb(path: Any) -> Any:
    """An image file → decoded RGB PIL image ([`decode_rgb`]); an unreadable file is a ``ValueError``
    naming it (Pillow's messages for truncated or corrupt files often omit the file), and so is a
    path that is not a regular file (a FIFO would block the read forever)."""
    from PIL import Image

    try:
        with open_regular(path) as f, Image.open(f) as image:
            return decode_rgb(image, str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except NotRegularFileError:
        raise
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
    except (OSError, SyntaxError, TypeError, IndexError, KeyError, Image.DecompressionBombError) as err:
        # Pillow's decoders raise these on corrupt headers (TIFF tags, GIF tables).
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None


def load_image(item: Any, size: int) -> np.ndarray:
    """An image file path or an (H, W, C) array → (size, size, 3) float32 in [-1, 1].

    Files are read with Pillow and go through [`to_rgb`] and [`resize_and_center_crop`].
    uint8 arrays are rescaled; float arrays are taken as [-1, 1].
    """
    if isinstance(item, np.ndarray):
        array = item
    else:
        array = np.asarray(resize_and_center_crop(open_rgb(item), size, size))
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


def save_png(path: str, image: np.ndarray) -> None:
    """Write a uint8 (H, W, 3) image as PNG, atomically."""
    from PIL import Image

    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"))


def find_images(paths: Any, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> List[Tuple[str, str]]:
    """``(path, key)`` of every image (file ending in one of ``suffixes``) in a list of files and
    folders (folders: recursively, sorted).

    The key names an image relative to the inputs: relative to the folder for a file found in a
    folder argument, the file name for a file argument, and relative to the inputs' common parent
    when several are given (``a/x.png`` and ``b/x.png`` stay apart). A file given twice counts once."""
    roots, found = [], []
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        path = os.path.abspath(os.fspath(path))
        if os.path.isdir(path):
            roots.append(path)
            found += sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                # Hidden files: partial outputs of a killed run, macOS "._x.jpg" metadata, never photos.
                if name.lower().endswith(tuple(suffixes)) and not name.startswith(".")
            )
        elif os.path.isfile(path):
            roots.append(os.path.dirname(path))
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not found:
        raise FileNotFoundError(f"no images in {paths}")
    common = os.path.commonpath(roots)
    unique = dict.fromkeys(found)  # first occurrence wins, order kept
    return [(path, os.path.relpath(path, common).replace(os.sep, "/")) for path in unique]


def list_images(paths: Any) -> List[str]:
    """Image files from a list of files and folders (folders: recursively, sorted); see [`find_images`]."""
    return [path for path, _ in find_images(paths)]


def check_key(key: str, where: str) -> str:
    """A key read from a file names an output: refuse what would escape the output folder."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\0" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{where}: {key!r} is not a relative path of plain names (no '', '.', '..', '/' at the start)")
    return key


def output_names(keys: Sequence[str], suffix: str = ".png") -> List[str]:
    """Output file names for input keys: the key with its extension replaced by ``suffix``
    (``cats/1.jpg`` → ``cats/1.png``). Keys that would collide that way (``1.jpg`` and ``1.png``,
    or names equal up to case, which collide on macOS and Windows) keep their extension
    (``1.jpg.png``); nothing is ever written twice."""
    stems = [os.path.splitext(key)[0] + suffix for key in keys]
    counts = Counter(stem.casefold() for stem in stems)
    names = [key + suffix if counts[stem.casefold()] > 1 else stem for key, stem in zip(keys, stems)]
    seen: Dict[str, str] = {}
    for key, name in zip(keys, names):
        if name.casefold() in seen:
            raise ValueError(f"inputs {seen[name.casefold()]!r} and {key!r} would both be written as {name!r}")
        seen[name.casefold()] = key
    check_output_layout(names, "inputs")
    return names


def check_output_layout(paths: Sequence[str], what: str) -> None:
    """Refuse output paths (relative, ``/``-separated) that repeat, or where one file would be
    another's folder (``a.png`` and ``a.png/b.png``), up to case: one of the two would be lost."""
    files: Dict[str, str] = {}
    for path in paths:
        if path.casefold() in files:
            raise ValueError(f"{what}: {files[path.casefold()]!r} and {path!r} would be written to one file")
        files[path.casefold()] = path
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth]).casefold()
            if folder in files:
                raise ValueError(f"{what}: {files[folder]!r} would be written as a file and as the folder of {path!r}")
