"""VQGANImageProcessor against PIL's own resize/crop, odd image modes, save/load."""

from __future__ import annotations

import io
import pathlib

import numpy as np
import pytest
from PIL import Image

from vqgan_flax import VQGANImageProcessor
from vqgan_flax.data.image_io import load_image

SAMPLES = pathlib.Path(__file__).parent.parent / "examples" / "images"


def _pil_reference(image: Image.Image, edge: int, crop: int) -> np.ndarray:
    """Shorter side to ``edge`` by Pillow's own ``ImageOps.cover`` (bicubic, aspect kept), then the
    center crop of transformers' ``image_transforms.center_crop``: sizes and offsets computed by
    those libraries, not by a copy of our arithmetic."""
    from PIL import ImageOps
    from transformers.image_transforms import center_crop

    resized = ImageOps.cover(image.convert("RGB"), (edge, edge), method=Image.Resampling.BICUBIC)
    assert min(resized.size) == edge
    return center_crop(np.asarray(resized), (crop, crop), input_data_format="channels_last")


@pytest.mark.parametrize("edge, crop", [(96, 80), (97, 79)])  # the second has odd margins on every side
@pytest.mark.parametrize("name", ["coffee.png", "chelsea.png", "rocket.jpg", "brick.png"])
def test_matches_pil_resize_and_crop(name, edge, crop):
    processor = VQGANImageProcessor(size={"shortest_edge": edge}, crop_size={"height": crop, "width": crop})
    image = Image.open(SAMPLES / name)
    pixels = processor(image, return_tensors="np")["pixel_values"]
    assert pixels.shape == (1, crop, crop, 3) and pixels.dtype == np.float32
    expected = _pil_reference(image, edge, crop).astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(pixels[0], expected, atol=1e-6)
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    # load_image (CLI, dataset encoding) takes the same path.
    np.testing.assert_allclose(load_image(str(SAMPLES / name), 80), _pil_reference(image, 80, 80) / 127.5 - 1.0,
                               atol=1e-6)  # fmt: skip


def test_zero_to_one_range_and_postprocess_round_trip():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for low, high in ((0.0, 1.0), (-1.0, 1.0)):
        processor = VQGANImageProcessor(do_resize=False, do_center_crop=False, pixel_range=(low, high))
        pixels = processor([image, image])["pixel_values"]
        assert pixels.shape == (2, 32, 32, 3) and pixels.min() >= low and pixels.max() <= high
        np.testing.assert_array_equal(processor.postprocess(pixels)[1], image)
        pil = processor.postprocess(pixels, output_type="pil")
        assert isinstance(pil[0], Image.Image) and np.array_equal(np.asarray(pil[0]), image)
    with pytest.raises(ValueError, match="output_type must be 'np' or 'pil'"):
        processor.postprocess(pixels, output_type="pt")
    with pytest.raises(ValueError, match="pixel_range must be"):
        VQGANImageProcessor(pixel_range=(1, 0))


def _roundtrip(image: Image.Image, fmt: str = "PNG", **save) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    buffer.seek(0)
    return Image.open(buffer)


def test_image_modes():
    processor = VQGANImageProcessor(do_resize=False, do_center_crop=False)
    gray = Image.fromarray(np.full((8, 8), 200, np.uint8))
    np.testing.assert_allclose(processor(gray)["pixel_values"][0], np.full((8, 8, 3), 200 / 127.5 - 1), atol=1e-6)
    rgba = Image.fromarray(np.dstack([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)]), "RGBA")
    assert processor(rgba)["pixel_values"].max() == 1.0  # fully transparent → white background
    sixteen = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    assert processor(_roundtrip(sixteen))["pixel_values"].min() == 1.0  # full 16-bit range, not clipped
    palette = Image.fromarray(np.full((8, 8, 3), (255, 0, 0), np.uint8)).convert("P")
    np.testing.assert_allclose(processor(palette)["pixel_values"][0, 0, 0], [1.0, -1.0, -1.0])


def test_exif_orientation_is_applied():
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, :10] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    stored = _roundtrip(Image.fromarray(image), "JPEG", exif=exif, quality=100)
    pixels = VQGANImageProcessor(do_resize=False, do_center_crop=False)(stored)["pixel_values"][0]
    assert pixels.shape == (20, 10, 3)
    assert pixels[:10].mean() > 0.9 and pixels[10:].mean() < -0.9  # the white half is now on top


def test_save_and_load(tmp_path):
    processor = VQGANImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, pixel_range=(0, 1)
    )
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    loaded = VQGANImageProcessor.from_pretrained(tmp_path)
    assert loaded.size == {"shortest_edge": 64} and loaded.pixel_range == [0.0, 1.0]
    with pytest.raises(ValueError, match="array images must be uint8"):
        loaded(np.zeros((4, 4, 3), np.float32))


def test_processor_for_model_reads_the_folder_then_the_overrides(tmp_path):
    from vqgan_flax import FlaxVQGANModel, VQGANConfig
    from vqgan_flax.data.processing import processor_for_model

    config = VQGANConfig.from_preset("tiny")
    bare = processor_for_model(FlaxVQGANModel(config, seed=0))  # no folder: the resolution and taming's range
    assert bare.output_size == (config.resolution, config.resolution) and bare.pixel_range == [-1.0, 1.0]
    FlaxVQGANModel(config, seed=0).save_pretrained(tmp_path)
    VQGANImageProcessor(pixel_range=(0, 1), crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    model = FlaxVQGANModel.from_pretrained(tmp_path)
    owned = processor_for_model(model)
    assert owned.pixel_range == [0.0, 1.0] and owned.output_size == (32, 32)
    resized = processor_for_model(model, 48, pixel_range=(-1, 1))
    assert resized.output_size == (48, 48) and resized.pixel_range == [-1.0, 1.0]
    assert processor_for_model(model).pixel_range == [0.0, 1.0]  # an override changes no later processor
    for bad in ([1.0, -1.0], [0.0, 0.0], [float("nan"), float("nan")]):
        with pytest.raises(ValueError, match=r"pixel_range must be \(low, high\) with low < high"):
            processor_for_model(model, pixel_range=bad)
        with pytest.raises(ValueError, match=r"pixel_range must be \(low, high\) with low < high"):
            VQGANImageProcessor(pixel_range=bad)  # the constructor applies the same rule


def test_checked_pixel_range_names_what_it_checks():
    from vqgan_flax.data.processing import checked_pixel_range

    assert checked_pixel_range((0, 1)) == [0.0, 1.0] and checked_pixel_range(["-1", 1.0]) == [-1.0, 1.0]
    for bad in ([1, 0], [0.5], [0, 1, 2], ["a", 1], [float("nan"), 1.0]):
        with pytest.raises(ValueError, match=r"^t.npz: recorded pixel_range must be \(low, high\) with low < high"):
            checked_pixel_range(bad, "t.npz: recorded pixel_range")
