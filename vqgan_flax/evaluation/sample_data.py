"""The photographs the default model is trained, chosen and tested on: CC0 / public-domain images that
ship inside packages the registries serve (no download at run time), each with its licence, in a
fixed train / validation / test split.

``validation`` chose the recipe; ``test`` is only reported. ``unseen`` are photographs from another
package and photographer (CC BY 2.0: used for evaluation only, never trained on, never shipped).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Dict, List, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class SampleImage:
    """One image: the package that ships it, its file inside that package, and its licence."""

    name: str
    package: str
    path: str
    licence: str


def _skimage(name: str, licence: str) -> SampleImage:
    return SampleImage(name.rsplit(".", 1)[0], "skimage", f"data/{name}", licence)


IMAGES: Tuple[SampleImage, ...] = (
    _skimage("astronaut.png", "public domain (NASA)"),
    _skimage("hubble_deep_field.jpg", "public domain (NASA)"),
    _skimage("retina.jpg", "CC0 (Mikael Häggström)"),
    _skimage("ihc.png", "no known copyright restrictions (CMMI, immunohistochemistry)"),
    _skimage("grass.png", "CC0 (linolafett, DeviantArt)"),
    _skimage("gravel.png", "CC0 (CC0 Textures)"),
    _skimage("coins.png", "no known copyright restrictions (Brooklyn Museum)"),
    _skimage("text.png", "public domain (Wikimedia Commons, Corner.png)"),
    _skimage("cell.png", "CC0"),
    _skimage("clock_motion.png", "public domain (Stefan van der Walt)"),
    _skimage("microaneurysms.png", "CC0 (Andreas Maier)"),
    _skimage("camera.png", "CC0 (Lav Varshney)"),
    SampleImage("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "public domain (US Navy)"),
    _skimage("coffee.png", "CC0 (Rachel Michetti)"),
    _skimage("chelsea.png", "CC0 (Stefan van der Walt)"),
    _skimage("rocket.jpg", "public domain (SpaceX)"),
    _skimage("brick.png", "CC0 (CC0 Textures)"),
    SampleImage("china", "sklearn", "datasets/images/china.jpg", "CC BY 2.0 (danielbuechele, Flickr)"),
    SampleImage("flower", "sklearn", "datasets/images/flower.jpg", "CC BY 2.0 (vultilion, Flickr)"),
)

SPLIT: Dict[str, Tuple[str, ...]] = {
    "train": (
        "astronaut", "hubble_deep_field", "retina", "ihc", "grass", "gravel", "coins", "text", "cell",
        "clock_motion", "microaneurysms",
    ),
    "validation": ("camera", "grace_hopper"),
    "test": ("coffee", "chelsea", "rocket", "brick"),  # copies in examples/images
    "unseen": ("china", "flower"),
}  # fmt: skip

# The pip packages that ship each split's images.
PACKAGES = {"skimage": "scikit-image", "matplotlib": "matplotlib", "sklearn": "scikit-learn"}


def image_info(name: str) -> SampleImage:
    """The [`SampleImage`] called ``name``."""
    for image in IMAGES:
        if image.name == name:
            return image
    raise KeyError(f"no sample image {name!r}; known: {', '.join(i.name for i in IMAGES)}")


def image_path(name: str) -> str:
    """The file of image ``name`` inside its installed package (ImportError names the pip package)."""
    info = image_info(name)
    try:
        module = importlib.import_module(info.package)
    except ImportError as error:
        raise ImportError(
            f"sample image {name!r} ships with {PACKAGES[info.package]}: pip install {PACKAGES[info.package]}"
        ) from error
    path = os.path.join(os.path.dirname(str(module.__file__)), *info.path.split("/"))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sample image {name!r}: {path} is missing from the installed {info.package}")
    return path


def load_image(name: str) -> np.ndarray:
    """Image ``name`` as an (H, W, 3) uint8 array (grayscale repeated, transparency on white)."""
    from PIL import Image

    from ..data.image_io import to_rgb

    with Image.open(image_path(name)) as image:
        return np.asarray(to_rgb(image))


def split_images(split: str) -> List[np.ndarray]:
    """Every image of ``split`` ('train', 'validation', 'test' or 'unseen'), in the split's order."""
    if split not in SPLIT:
        raise KeyError(f"no split {split!r}; expected one of {', '.join(SPLIT)}")
    return [load_image(name) for name in SPLIT[split]]
