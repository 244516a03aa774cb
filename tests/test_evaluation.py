"""The rate-matched evaluation (vqgan_flax.evaluation.compare) and the photographs it runs on (sample_data)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.evaluation import compare as evaluation
from vqgan_flax.evaluation import sample_data
from vqgan_flax.evaluation.metrics import chroma_psnr, psnr


def _tiled(colours: np.ndarray, grid: tuple, patch: int, seed: int = 0) -> np.ndarray:
    """An image of grid[0] x grid[1] flat patch x patch blocks, each one of ``colours``."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(colours), size=grid)
    return np.kron(colours[picks], np.ones((patch, patch, 1))).astype(np.uint8)


def test_kmeans_recovers_a_codebook_of_flat_patches_exactly():
    colours = np.random.default_rng(1).integers(0, 256, size=(6, 3))
    images = [_tiled(colours, (10, 12), 4, seed=s) for s in range(3)]
    centroids = evaluation.fit_patch_kmeans(images, patch=4, n_codes=6, seed=0, shifted=False)
    assert centroids.shape == (6, 48)
    coded = evaluation.patch_codec(images[0], centroids, 4)
    np.testing.assert_array_equal(coded, images[0])


def test_kmeans_codec_rate_and_refusals():
    assert evaluation.vq_bits_per_pixel(8, 1024) == 10 / 64
    assert evaluation.vq_bits_per_pixel(4, 256) == 0.5
    flat = [np.zeros((16, 16, 3), np.uint8)]
    with pytest.raises(ValueError, match="only 1 distinct 4x4 patches for 8 codes"):
        evaluation.fit_patch_kmeans(flat, patch=4, n_codes=8)
    with pytest.raises(ValueError, match=r"shape \(10, 16, 3\) is not a whole number of 4x4 patches"):
        evaluation.patch_codec(np.zeros((10, 16, 3), np.uint8), np.zeros((2, 48), np.float32), 4)


def test_kmeans_codec_gets_better_with_more_codes():
    image = sample_data.load_image("coffee")[:128, :128]
    few = evaluation.fit_patch_kmeans([image], 4, 8, iterations=5)
    many = evaluation.fit_patch_kmeans([image], 4, 128, iterations=5)
    assert psnr(image, evaluation.patch_codec(image, many, 4)) > psnr(image, evaluation.patch_codec(image, few, 4)) + 1


def test_jpeg_at_rate_matches_the_rate_it_can_reach():
    image = sample_data.load_image("chelsea")[:256, :256]
    decoded, bpp, quality = evaluation.jpeg_at_rate(image, 1.0)
    assert decoded.shape == image.shape and 1 <= quality <= 95
    assert abs(bpp - 1.0) < 0.15, bpp
    low, low_bpp, low_quality = evaluation.jpeg_at_rate(image, 0.3)
    assert low_bpp < bpp and low_quality < quality and psnr(image, low) < psnr(image, decoded)


def test_fixed_crops_and_whole_images():
    images = [sample_data.load_image("rocket"), sample_data.load_image("brick")]
    crops = evaluation.fixed_crops(images, 64, 3, seed=7)
    again = evaluation.fixed_crops(images, 64, 3, seed=7)
    assert len(crops) == 6 and all(c.shape == (64, 64, 3) for c in crops)
    assert all(np.array_equal(a, b) for a, b in zip(crops, again))
    with pytest.raises(ValueError, match=r"shape \(32, 32, 3\) is smaller than a 64x64 crop"):
        evaluation.fixed_crops([np.zeros((32, 32, 3), np.uint8)], 64, 1)
    assert [w.shape for w in evaluation.whole_images(images, 96)] == [(96, 96, 3), (96, 96, 3)]


def test_score_and_compare_on_a_small_model():
    images = evaluation.fixed_crops([sample_data.load_image("coffee")], 32, 2)
    assert evaluation.score(images, images) == {"psnr": math.inf, "ssim": 1.0, "chroma_psnr": math.inf}
    grey = [np.repeat(image.mean(-1, keepdims=True), 3, -1).astype(np.uint8) for image in images]
    assert evaluation.score(images, grey)["chroma_psnr"] == pytest.approx(chroma_psnr(images, grey))
    config = VQGANConfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=8, embed_dim=4,
                         n_embed=16, resolution=32)  # fmt: skip
    centroids = evaluation.fit_patch_kmeans(images, 2, 16, iterations=3)
    result = evaluation.compare(images, FlaxVQGANModel(config, seed=0), centroids)
    assert result["rate_bpp"] == 1.0  # 4 bits per 2x2 block
    assert set(result) == {"rate_bpp", "ours", "kmeans", "jpeg"}
    assert result["kmeans"]["psnr"] > result["ours"]["psnr"]  # an untrained model loses to k-means
    assert 0 < result["jpeg"]["bpp"] < 8
    # Subsets: each image coded once, every subset's row equal to compare() on those images alone.
    model = FlaxVQGANModel(config, seed=0)
    rows = evaluation.compare_subsets(images, model, centroids, {"first": [0], "both": [0, 1]})
    assert rows["both"] == evaluation.compare(images, model, centroids)
    alone = evaluation.compare(images[:1], model, centroids)
    assert rows["first"]["kmeans"] == alone["kmeans"] and rows["first"]["jpeg"] == alone["jpeg"]
    # The model codes a batch of 2 there and of 1 here: equal up to XLA's batch-size rounding.
    assert rows["first"]["ours"]["psnr"] == pytest.approx(alone["ours"]["psnr"], abs=0.01)
    with pytest.raises(ValueError, match=r"subset 'x': indices must be a non-empty selection of the 2 images"):
        evaluation.compare_subsets(images, model, centroids, {"x": [2]})


def test_sample_data_splits_are_disjoint_and_load():
    names = [name for split in sample_data.SPLIT.values() for name in split]
    assert len(names) == len(set(names))
    assert {image.name for image in sample_data.IMAGES} == set(names)
    assert all(image.licence for image in sample_data.IMAGES)
    for split in sample_data.SPLIT:
        for image in sample_data.split_images(split):
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_sample_data_refusals(monkeypatch):
    with pytest.raises(KeyError, match="no sample image 'lena'"):
        sample_data.load_image("lena")
    with pytest.raises(KeyError, match="no split 'dev'"):
        sample_data.split_images("dev")
    import importlib

    real = importlib.import_module

    def without_sklearn(name, *args):
        if name == "sklearn":
            raise ImportError("simulated")
        return real(name, *args)

    monkeypatch.setattr(sample_data.importlib, "import_module", without_sklearn)
    with pytest.raises(ImportError, match="'china' ships with scikit-learn: pip install scikit-learn"):
        sample_data.image_path("china")


def test_model_codec_codes_in_the_pixel_range_of_the_model_folder(tmp_path):
    """A [0, 1] model is evaluated on [0, 1] pixels, and its outputs read back from [0, 1]."""
    from vqgan_flax import VQGANImageProcessor

    images = evaluation.fixed_crops([sample_data.load_image("coffee")], 16, 2)
    config = VQGANConfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=8, embed_dim=4,
                         n_embed=16, resolution=16)  # fmt: skip
    FlaxVQGANModel(config, seed=0).save_pretrained(tmp_path)
    taming_range = evaluation.model_codec(FlaxVQGANModel.from_pretrained(tmp_path))(images)
    VQGANImageProcessor(pixel_range=(0.0, 1.0), size={"shortest_edge": 16},
                        crop_size={"height": 16, "width": 16}).save_pretrained(tmp_path)  # fmt: skip
    model = FlaxVQGANModel.from_pretrained(tmp_path)
    coded = evaluation.model_codec(model)(images)
    pixels = np.stack(images).astype(np.float32) / 255.0
    want = np.clip(np.round(np.asarray(model(pixels).reconstruction) * 255.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.stack(coded), want)
    assert not np.array_equal(np.stack(coded), np.stack(taming_range))  # the range did change what is coded
