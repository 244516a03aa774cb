"""``VQGANImageProcessor``: images ↔ the model's pixel values, saved as ``preprocessor_config.json``."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..utils.files import errors_naming
from ..utils.quiet import quiet_transformers_advice

with quiet_transformers_advice():
    from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .image_io import resize_and_center_crop, to_rgb


class VQGANImageProcessor(BaseImageProcessor):
    r"""Prepares images for a VQGAN and turns its outputs back into images.

    Args:
        do_resize (`bool`): resize so the shorter side is ``size["shortest_edge"]`` (bicubic).
        size (`Dict[str, int]`): ``{"shortest_edge": int}``.
        do_center_crop (`bool`): center-crop to ``crop_size`` after resizing.
        crop_size (`Dict[str, int]`): ``{"height": int, "width": int}``.
        pixel_range (`Tuple[float, float]`): the model's input range: ``(-1, 1)`` for taming/LWM
            models, ``(0, 1)`` for DALL·E-mini's fine-tuned VQGAN.

    Any PIL image or uint8 array is accepted: grayscale, palette, RGBA (composited on white),
    16-bit; EXIF orientation is applied. Pixel values are NHWC float32.
    """

    model_input_names: ClassVar[List[str]] = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool = True,
        size: Optional[Dict[str, int]] = None,
        do_center_crop: bool = True,
        crop_size: Optional[Dict[str, int]] = None,
        pixel_range: Sequence[float] = (-1.0, 1.0),
        **kwargs: Any,
    ) -> None:
        shadowing = sorted(k for k in kwargs if callable(getattr(type(self), k, None)))
        if shadowing:  # a config key named like a method would replace it on the instance
            raise ValueError(f"{shadowing[0]}: not a setting (it names a method of the processor)")
        super().__init__(**kwargs)
        self.do_resize = _flag(do_resize, "do_resize")
        self.size = _sizes(size or {"shortest_edge": 256}, "size", ("shortest_edge",))
        self.do_center_crop = _flag(do_center_crop, "do_center_crop")
        self.crop_size = _sizes(crop_size or {"height": 256, "width": 256}, "crop_size", ("height", "width"))
        self.pixel_range = checked_pixel_range(pixel_range)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``from_pretrained``; a setting or file it refuses is named with the folder
        (``FOLDER: preprocessor_config.json: size: ...``)."""
        with errors_naming(str(pretrained_model_name_or_path), "preprocessor_config.json"):
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def _to_pil(self, image: Any):
        from PIL import Image

        if isinstance(image, Image.Image):
            return to_rgb(image)
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise ValueError(f"array images must be uint8 (H, W[, C]); got {array.dtype} of shape {array.shape}")
        return to_rgb(Image.fromarray(array))

    def preprocess(self, images: Any, return_tensors: Optional[str] = None, **kwargs: Any) -> BatchFeature:
        """One image or a list → ``BatchFeature(pixel_values=(B, H, W, 3) float32 in pixel_range)``:
        [`resize_crop`] each, then [`to_pixel_values`] (the two steps the command line and the
        dataset tokenizer run, the first in decoding threads)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        batch = [np.asarray(self.resize_crop(image), np.uint8) for image in images]
        shapes = {a.shape for a in batch}
        if len(shapes) > 1:
            raise ValueError(f"images of different sizes {sorted(shapes)} cannot form a batch; enable center crop")
        return BatchFeature({"pixel_values": self.to_pixel_values(np.stack(batch))}, tensor_type=return_tensors)

    def resize_crop(self, image: Any) -> Any:
        """The geometric step: any image → RGB PIL image, resized and center-cropped as configured."""
        image = self._to_pil(image)
        if self.do_resize or self.do_center_crop:
            edge = self.size["shortest_edge"] if self.do_resize else min(image.size)
            crop = (self.crop_size["height"], self.crop_size["width"]) if self.do_center_crop else (None, None)
            image = _resize_crop(image, edge, *crop)
        return image

    def to_pixel_values(self, images: np.ndarray) -> np.ndarray:
        """The value step: uint8 images (..., H, W, 3) → float32 in ``pixel_range``."""
        low, high = self.pixel_range
        return np.asarray(images, np.float32) / 255.0 * (high - low) + low

    @property
    def output_size(self) -> Optional[Tuple[int, int]]:
        """``(height, width)`` of every output image, or None without center crop (sizes vary)."""
        return (self.crop_size["height"], self.crop_size["width"]) if self.do_center_crop else None

    def postprocess(self, pixel_values: Any, output_type: str = "np") -> Union[np.ndarray, List[Any]]:
        """Model outputs (B, H, W, 3) in pixel_range → uint8 arrays (``"np"``) or PIL images (``"pil"``)."""
        low, high = self.pixel_range
        values = (np.asarray(pixel_values, np.float32) - low) / (high - low)
        images = np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)
        if output_type == "np":
            return images
        if output_type == "pil":
            from PIL import Image

            return [Image.fromarray(image) for image in images]
        raise ValueError(f"output_type must be 'np' or 'pil'; got {output_type!r}")


def _flag(value: Any, name: str) -> bool:
    """A yes/no setting must be a bool: the string "no" would otherwise be taken as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false; got {type(value).__name__} {value!r:.40}")
    return bool(value)


def _sizes(value: Any, name: str, keys: Tuple[str, ...]) -> Dict[str, int]:
    """``{"shortest_edge": n}`` or ``{"height": h, "width": w}``: exactly those keys, positive
    integers no larger than an image we would make (65536)."""
    if not isinstance(value, dict) or set(value) != set(keys):
        raise ValueError(f"{name} must be {{{', '.join(repr(k) + ': int' for k in keys)}}}; got {value!r:.80}")
    for key in keys:
        number = value[key]
        if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or not 1 <= number <= 1 << 16:
            raise ValueError(f"{name}[{key!r}] must be an integer in [1, 65536]; got {number!r:.40}")
    return {key: int(value[key]) for key in keys}


def _resize_crop(image: Any, edge: int, height: Optional[int], width: Optional[int]) -> Any:
    if height is None:
        from PIL import Image

        scale = edge / min(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        if size[0] * size[1] > Image.MAX_IMAGE_PIXELS:  # a 1x8000 PNG at edge 256: 524M pixels
            raise ValueError(
                f"resizing a {image.width}x{image.height} image to shortest edge {edge} gives {size[0]}x{size[1]}, "
                f"more than Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels; enable center crop"
            )
        return image.resize(size, Image.Resampling.BICUBIC)
    return resize_and_center_crop(image, edge, height, width)


__all__: Tuple[str, ...] = ("VQGANImageProcessor",)


def checked_pixel_range(values: Sequence[float], what: str = "pixel_range") -> List[float]:
    """``values`` as ``[low, high]`` floats; refused, naming ``what`` (a file's field, an option),
    unless they are two numbers with low < high (NaN fails the comparison, so it is refused too)."""
    try:
        low, high = (float(v) for v in values)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not low < high:
        raise ValueError(f"{what} must be (low, high) with low < high; got {list(values)!r}")
    return [low, high]


def processor_for_model(
    model: Any, size: Optional[int] = None, pixel_range: Optional[Sequence[float]] = None
) -> VQGANImageProcessor:
    """The image processor a model's folder owns: its ``preprocessor_config.json`` (beside the
    weights, in the Hub snapshot, or beside an LWM pickle) where there is one, else the model's
    resolution and taming's [-1, 1]; ``size`` overrides the resize and crop, ``pixel_range`` the
    range (``--pixel-range``, or the range a token file was made with). Every path that turns
    images into a model's pixels and back (the command line, ``data.distributed``, ``evaluation``)
    asks here, so a [0, 1] model gets [0, 1] pixels everywhere."""
    from ..hub.resolve import PROCESSOR_NAME

    source = getattr(model, "source", None)
    path = source.file(PROCESSOR_NAME) if source is not None else None
    if path is None:
        edge = model.config.resolution
        processor = VQGANImageProcessor(size={"shortest_edge": edge}, crop_size={"height": edge, "width": edge})
    else:
        try:
            processor = VQGANImageProcessor.from_json_file(path)
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a usable image processor config ({type(err).__name__}: {err})") from None
    if size:
        processor.do_resize = processor.do_center_crop = True
        processor.size = {"shortest_edge": int(size)}
        processor.crop_size = {"height": int(size), "width": int(size)}
    if pixel_range is not None:
        processor.pixel_range = checked_pixel_range(pixel_range)
    return processor
