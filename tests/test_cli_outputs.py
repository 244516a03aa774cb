"""Where the command line writes: input-relative names that never collide, ``--out`` checked
before any work, hostile keys in token files refused, unreadable and huge-aspect images."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vqgan_flax.cli import check_output_file, main, prepare_output_folder
from vqgan_flax.data.image_io import check_key, find_images, load_image, output_names, resize_and_center_crop


def _image(path, seed, size=(16, 16)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_are_relative_to_the_inputs(tmp_path):
    for name in ("a/x.png", "a/sub/x.png", "b/x.png", "b/y.jpg"):
        _image(str(tmp_path / name), len(name))
    keys = lambda *args: [key for _, key in find_images([str(tmp_path / a) for a in args])]  # noqa: E731
    assert keys("a") == ["sub/x.png", "x.png"]
    assert keys("a", "b") == ["a/sub/x.png", "a/x.png", "b/x.png", "b/y.jpg"]
    assert keys("a/x.png", "b/x.png") == ["a/x.png", "b/x.png"]
    assert keys("b/y.jpg") == ["y.jpg"]
    assert keys("a", "a/x.png") == ["sub/x.png", "x.png"]  # a file given twice counts once


def test_output_names_never_collide():
    assert output_names(["cats/1.jpg", "dogs/1.jpg", "2.webp"]) == ["cats/1.png", "dogs/1.png", "2.png"]
    assert output_names(["1.jpg", "1.png", "3.png"]) == ["1.jpg.png", "1.png.png", "3.png"]
    assert output_names(["A.png", "a.jpg"]) == ["A.png.png", "a.jpg.png"]  # one file on macOS/Windows
    with pytest.raises(ValueError, match=r"'x.png' and 'x.png.jpg' would both be written as 'x.png.png'"):
        output_names(["x.jpg", "x.png", "x.png.jpg"])


@pytest.mark.parametrize("key", ["", "/etc/x", "../x", "a/../../x", "a//b", "./a", "a\\b", "a\0b"])
def test_keys_that_escape_the_output_folder_are_refused(key):
    with pytest.raises(ValueError, match=r"t.npz: keys\[3\]"):
        check_key(key, "t.npz: keys[3]")
    assert check_key("cats/1.png", "t.npz: keys[0]") == "cats/1.png"


def test_same_names_in_different_folders_all_come_back(tiny, tmp_path, capsys):
    """The data-loss case: three inputs called x.png used to give one output."""
    for i, name in enumerate(("a/x.png", "b/x.png", "b/c/x.png")):
        _image(str(tmp_path / "in" / name), i)
    code, out, _ = _run(capsys, "encode", tmp_path / "in" / "a", tmp_path / "in" / "b", "--out",
                        tmp_path / "t.npz", "--model", tiny, "--quiet", "--size", 16)  # fmt: skip
    assert code == 0 and "wrote 3 x" in out
    assert np.load(tmp_path / "t.npz")["keys"].tolist() == ["a/x.png", "b/c/x.png", "b/x.png"]
    assert _run(capsys, "decode", tmp_path / "t.npz", "--out", tmp_path / "dec", "--model", tiny, "--quiet")[0] == 0
    written = sorted(os.path.relpath(os.path.join(r, f), tmp_path / "dec") for r, _, fs in os.walk(tmp_path / "dec")
                     for f in fs)  # fmt: skip
    assert written == ["a/x.png", "b/c/x.png", "b/x.png"]
    code, _, _ = _run(capsys, "reconstruct", tmp_path / "in", "--out", tmp_path / "rec", "--model", tiny, "--quiet",
                      "--size", 16)  # fmt: skip
    assert code == 0
    for tree in ("reconstructions", "side_by_side"):
        for key in ("a/x.png", "b/x.png", "b/c/x.png"):
            assert (tmp_path / "rec" / tree / key).is_file()


def test_version_1_token_files_still_decode(tiny, tmp_path, capsys):
    np.savez(tmp_path / "v1.npz", tokens=np.zeros((2, 8, 8), np.int32), files=np.asarray(["/d/p.jpg", "/e/q.png"]))
    np.savez(tmp_path / "dup.npz", tokens=np.zeros((2, 8, 8), np.int32), files=np.asarray(["/d/p.png", "/e/p.png"]))
    assert _run(capsys, "decode", tmp_path / "v1.npz", "--out", tmp_path / "d1", "--model", tiny, "--quiet")[0] == 0
    assert sorted(os.listdir(tmp_path / "d1")) == ["p.png", "q.png"]
    assert _run(capsys, "decode", tmp_path / "dup.npz", "--out", tmp_path / "d2", "--model", tiny, "--quiet")[0] == 0
    assert sorted(os.listdir(tmp_path / "d2")) == ["000000.png", "000001.png"]


@pytest.mark.parametrize(
    "keys, message",
    [
        (["ok.png", "../../escape.png"], r"evil.npz: keys\[1\]: '../../escape.png' is not a relative path"),
        (["/tmp/abs.png", "b.png"], r"evil.npz: keys\[0\]: '/tmp/abs.png'"),
        (["a.png"], r"evil.npz: 'keys' must hold one string per token grid \(2\)"),
    ],
)
def test_token_file_keys_cannot_write_outside_the_output(tiny, tmp_path, capsys, keys, message):
    np.savez(tmp_path / "evil.npz", tokens=np.zeros((2, 8, 8), np.int32), keys=np.asarray(keys))
    code, _, err = _run(capsys, "decode", tmp_path / "evil.npz", "--out", tmp_path / "out", "--model", tiny, "--quiet")
    assert code == 1 and err.count("\n") == 1
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "out").exists()


def test_out_is_checked_before_the_model_is_loaded(tmp_path, capsys):
    """A model that does not exist would be the error if --out were checked after loading it."""
    _image(str(tmp_path / "x.png"), 0)
    (tmp_path / "file").write_text("keep")
    model = str(tmp_path / "no-such-model")
    cases = [
        (["encode", tmp_path / "x.png", "--out", tmp_path / "missing" / "t.npz"], "does not exist"),
        (
            ["encode", tmp_path / "x.png", "--out", tmp_path, "--format", "npz"],
            "is a folder, and npz output is one file",
        ),
        (["reconstruct", tmp_path / "x.png", "--out", tmp_path / "file"], "file: exists and is not a folder"),
        (["decode", tmp_path / "t.npz", "--out", tmp_path / "file" / "sub"], "cannot create the folder"),
        (["encode", tmp_path / "none", "--out", tmp_path / "t.npz"], "none: no such file or folder"),
    ]
    for argv, message in cases:
        code, _, err = _run(capsys, *argv, "--model", model)
        assert code == 1 and err.count("\n") == 1 and message in err and "no-such-model" not in err, err
    assert (tmp_path / "file").read_text() == "keep" and not (tmp_path / "missing").exists()


def test_output_checks_accept_what_is_writable(tmp_path):
    check_output_file(str(tmp_path / "t.npz"))
    prepare_output_folder(str(tmp_path / "new" / "deeper"))
    assert (tmp_path / "new" / "deeper").is_dir()
    prepare_output_folder(str(tmp_path / "new" / "deeper"))  # an existing folder is fine


@pytest.mark.parametrize(
    "content",
    [b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "truncated"],
)
def test_unreadable_images_name_the_file(tiny, tmp_path, capsys, content):
    path = tmp_path / "broken.png"
    if content == "truncated":
        _image(str(tmp_path / "full.jpg"), 0, (64, 64))
        path = tmp_path / "broken.jpg"
        path.write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=str(path)):
        load_image(str(path), 16)
    with pytest.raises(ValueError, match=str(path)):
        _run(capsys, "--debug", "reconstruct", path, "--out", tmp_path / "r", "--model", tiny, "--quiet")
    code, _, err = _run(capsys, "encode", path, "--out", tmp_path / "t.npz", "--model", tiny, "--quiet")
    assert code == 1 and err.count("\n") == 1 and f"could be read; the first: {path.name}: " in err, err
    assert not (tmp_path / "t.npz").exists()


def test_huge_aspect_crops_equal_resize_then_crop_where_that_is_small(monkeypatch):
    """Below the limit nothing changes; above it (forced here) the crop is resampled from the
    source region only: the same sampling positions, Pillow's pass order may move a few levels."""
    import vqgan_flax.data.image_io as image_io

    ramp = np.add.outer(np.linspace(0, 200, 40), np.linspace(0, 55, 700))
    image = Image.fromarray(np.stack([ramp, ramp[::-1], ramp * 0.5], -1).astype(np.uint8))
    full = np.asarray(resize_and_center_crop(image, 24, 24), np.int16)
    resized = image.resize((420, 24), Image.Resampling.BICUBIC)  # 700 * 24 / 40
    np.testing.assert_array_equal(full, np.asarray(resized.crop((198, 0, 222, 24))))
    monkeypatch.setattr(image_io, "_RESIZE_LIMIT_PIXELS", 0)
    boxed = np.asarray(resize_and_center_crop(image, 24, 24), np.int16)
    assert boxed.shape == (24, 24, 3) and np.abs(boxed - full).max() <= 2
    rect = np.asarray(resize_and_center_crop(image, 24, 20, 30), np.int16)  # height x width
    assert rect.shape == (20, 30, 3)


def test_a_tiny_png_of_extreme_aspect_resizes_in_bounded_memory(tmp_path):
    """A 1x8000 PNG (a few hundred bytes) at 256: resize-then-crop builds a 256x2,048,000 image
    (1.5 GB); the bounded path stays within a few MB of the baseline."""
    path = tmp_path / "thin.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8000, 1, 3)).astype(np.uint8)).save(path)
    script = (
        "import resource, sys; from PIL import Image; import numpy as np;"
        "from vqgan_flax.data.image_io import load_image; Image.new('RGB', (256, 256)).resize((300, 300));"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "x = load_image(sys.argv[1], 256); assert x.shape == (256, 256, 3), x.shape;"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)"
    )
    grown_mb = int(subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                                  check=True).stdout)  # fmt: skip
    assert grown_mb < 64, f"loading the 1x8000 image grew peak memory by {grown_mb} MB"


def test_image_processor_refuses_a_resize_beyond_pillows_limit():
    from vqgan_flax import VQGANImageProcessor

    processor = VQGANImageProcessor(do_center_crop=False, size={"shortest_edge": 256})
    with pytest.raises(ValueError, match=r"1x8000 image to shortest edge 256 gives 256x2048000"):
        processor(Image.new("RGB", (1, 8000)))
    cropped = VQGANImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 256, "width": 128})
    assert cropped(Image.new("RGB", (1, 8000)))["pixel_values"].shape == (1, 256, 128, 3)
