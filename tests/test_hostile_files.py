"""Special files, memory and concurrency (issue 32, parts 4 and 5): FIFOs and devices are refused
as inputs without blocking and never replaced as outputs; an image's decode is bounded from its
header; a tar sample reads only what it uses; two runs on one output folder cannot both write."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
from PIL import Image

from vqgan_flax.data import image_io, sources
from vqgan_flax.data.image_io import decode_cost, open_rgb
from vqgan_flax.data.writers import ShardedTokenWriter, remove_shards
from vqgan_flax.utils.files import NotRegularFileError, atomic_write, open_regular
from vqgan_flax.utils.weights import read_weights, weight_files


@pytest.fixture(autouse=True)
def no_hang(request):
    """Each of these once hung forever; a regression fails the test instead of the suite. Tests that
    run encode in subprocesses bound those with their own timeouts (marked `own_timeout`): under CI's
    load they take longer than this alarm allows."""
    if request.node.get_closest_marker("own_timeout"):
        yield
        return
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("blocked: a special file was read"))
    signal.alarm(60)
    yield
    signal.alarm(0)


def _png(path, size=(20, 24), mode="RGB") -> None:
    if mode == "I;16":
        Image.fromarray(np.zeros(size, np.uint16)).save(path)
    else:
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3)).astype(np.uint8)).save(path, "PNG")


def test_a_fifo_or_a_device_is_refused_as_an_input_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(NotRegularFileError, match=r"pipe.png: a FIFO, not a regular file"):
        open_rgb(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    with pytest.raises(NotRegularFileError, match=r"zero.png: a character device, not a regular file"):
        open_rgb(tmp_path / "zero.png")
    with pytest.raises(NotRegularFileError, match=r"a folder, not a regular file"):
        open_regular(tmp_path)
    with pytest.raises(NotRegularFileError, match=r"pipe.png: a FIFO"):
        sources._hf_image({"path": str(tmp_path / "pipe.png")})  # a dataset row naming a FIFO
    _png(tmp_path / "real.png")
    with open_regular(tmp_path / "real.png") as f:  # blocking again once checked
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_encode_rejects_the_fifo_and_encodes_the_rest(tiny, tmp_path, capsys):
    from vqgan_flax.cli import main

    data = tmp_path / "data"
    data.mkdir()
    _png(data / "a.png")
    os.mkfifo(data / "b.png")
    out = tmp_path / "out"
    assert main(["encode", str(data), "--out", str(out), "--format", "jsonl", "--model", tiny, "--quiet"]) == 0
    errors = (out / ".vqgan_flax" / "errors-000.jsonl").read_text()
    assert "b.png: a FIFO, not a regular file" in errors
    assert '"key": "a.png"' in (out / "part-000-00000.jsonl").read_text()


def test_training_data_that_is_a_fifo_is_refused(tmp_path):
    from vqgan_flax.train.trainer import ImageCrops

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(NotRegularFileError, match=r"pipe.png: a FIFO"):
        ImageCrops([str(tmp_path / "pipe.png")], crop_size=8)


def test_weight_files_that_are_not_regular_are_refused(tiny, tmp_path):
    folder = tmp_path / "model"
    import shutil

    shutil.copytree(tiny, folder)
    os.unlink(folder / "flax_model.msgpack")
    (folder / "flax_model.msgpack").symlink_to("/dev/zero")
    with pytest.raises(OSError, match=r"has no model weights"):
        weight_files(str(folder))
    with pytest.raises(NotRegularFileError, match=r"flax_model.msgpack: a character device"):
        read_weights(str(folder / "flax_model.msgpack"))
    os.unlink(folder / "flax_model.msgpack")
    (folder / "flax_model.msgpack.index.json").write_text(
        '{"weight_map": {"a/b": "flax_model-00001-of-00001.msgpack"}}'
    )
    os.mkfifo(folder / "flax_model-00001-of-00001.msgpack")
    with pytest.raises(OSError, match=r"lists flax_model-00001-of-00001.msgpack, which is not a regular file"):
        weight_files(str(folder))


def test_outputs_never_replace_a_device_a_fifo_or_a_symlink(tiny, tmp_path, capsys):
    from vqgan_flax.cli import main

    os.mkfifo(tmp_path / "pipe.npz")
    (tmp_path / "link.npz").symlink_to(tmp_path / "target.npz")
    _png(tmp_path / "a.png")
    for out, kind in ((tmp_path / "pipe.npz", "a FIFO"), (tmp_path / "link.npz", "a symlink")):
        code = main(["encode", str(tmp_path / "a.png"), "--out", str(out), "--model", tiny, "--quiet"])
        assert code == 1 and f"--out {out}: {kind}" in capsys.readouterr().err
    code = main(["encode", str(tmp_path / "a.png"), "--out", "/dev/null", "--model", tiny, "--quiet"])
    assert code == 1 and "--out /dev/null: exists and is not a folder" in capsys.readouterr().err
    assert os.path.islink(tmp_path / "link.npz") and not (tmp_path / "target.npz").exists()
    with pytest.raises(NotRegularFileError, match=r"pipe.npz: a FIFO; not replacing it with a file"):
        atomic_write(str(tmp_path / "pipe.npz"), lambda f: f.write(b"x"))


def test_an_image_decode_is_bounded_from_its_header(tmp_path, monkeypatch):
    """A 16-bit grayscale PNG of 2000 x 2000 costs 2 + 8 bytes a pixel to decode: refused over the
    budget before its pixels are decoded, in every place images are opened."""
    _png(tmp_path / "deep.png", (2000, 2000), "I;16")
    assert (tmp_path / "deep.png").stat().st_size < 100_000
    with Image.open(tmp_path / "deep.png") as image:
        assert decode_cost(image) == 2000 * 2000 * (2 + 8)
    monkeypatch.setattr(image_io, "MAX_DECODE_BYTES", 32 << 20)
    with pytest.raises(ValueError, match=r"deep.png: a 2000x2000 I;16 image needs 38 MiB to decode, more than 32 MiB"):
        open_rgb(tmp_path / "deep.png")
    with pytest.raises(ValueError, match=r"shard.tar:0001: a 2000x2000 I;16 image needs 38 MiB"):
        sources._open_image((tmp_path / "deep.png").read_bytes(), "shard.tar:0001")
    monkeypatch.undo()
    assert open_rgb(tmp_path / "deep.png").size == (2000, 2000)


def test_sixteen_bit_images_scale_as_before():
    """The integer scaling equals the float rounding it replaced, for every 16-bit value."""
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.clip(np.round(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    rgb = np.asarray(image_io.to_rgb(Image.fromarray(values)))
    np.testing.assert_array_equal(rgb[..., 0], expected)


def _tiff32(path, values, sample_format):
    """A baseline one-strip grayscale TIFF of 32-bit integers, written by hand (Pillow writes only
    signed ones)."""
    height, width = values.shape
    data = values.astype("<u4" if sample_format == 1 else "<i4").tobytes()
    tags = [(256, 4, width), (257, 4, height), (258, 3, 32), (259, 3, 1), (262, 3, 1), (273, 4, 8),
            (277, 3, 1), (278, 4, height), (279, 4, len(data)), (339, 3, sample_format)]  # fmt: skip
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + struct.pack("<I" if kind == 4 else "<HH", *((v,) if kind == 4 else (v, 0)))
        for tag, kind, v in tags
    )
    path.write_bytes(b"II*\0" + struct.pack("<I", 8 + len(data)) + data + ifd + b"\0\0\0\0")


def test_thirty_two_bit_images_scale_by_their_declared_range(tmp_path):
    """32-bit integer TIFFs are scaled from their own range (they used to be taken as 16-bit, so
    every value over 65535 was white); signed ones with negative pixels are refused."""
    top = 2**32 - 1
    _tiff32(tmp_path / "u32.tif", np.array([[0, 70000, top // 2, top]], np.uint64), 1)
    assert np.asarray(open_rgb(tmp_path / "u32.tif"))[0, :, 0].tolist() == [0, 0, 127, 255]
    _tiff32(tmp_path / "i32.tif", np.array([[0, 70000, 2**30, 2**31 - 1]], np.int64), 2)
    assert np.asarray(open_rgb(tmp_path / "i32.tif"))[0, :, 0].tolist() == [0, 0, 128, 255]
    _tiff32(tmp_path / "neg.tif", np.array([[0, -5]], np.int64), 2)
    with pytest.raises(ValueError, match=r"neg.tif: .*negative pixel values"):
        open_rgb(tmp_path / "neg.tif")


def test_a_tar_sample_reads_only_its_first_image_and_caption(tmp_path, monkeypatch):
    """A .tar.gz whose members all belong to one sample: only one image and one caption are read."""
    buffer = io.BytesIO()
    _png(buffer)
    with tarfile.open(tmp_path / "one.tar.gz", "w:gz") as archive:
        for number in range(40):
            image = buffer.getvalue() if number == 0 else b"\0" * (1 << 20)
            caption = b"the caption" if number == 0 else b"more"
            for name, data in (("0001.png", image), ("0001.txt", caption), ("0001.json", b"{}")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    assert (tmp_path / "one.tar.gz").stat().st_size < 1 << 20
    reads = []
    original = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: reads.append(m.name) or original(self, m))
    (item,) = sources.tar_items([str(tmp_path / "one.tar.gz")])
    assert reads == ["0001.png", "0001.txt"] and item.caption == "the caption"
    assert item.load().size == (24, 20)


LOCKER = textwrap.dedent("""
    import sys, time
    from vqgan_flax.data.writers import ShardedTokenWriter
    writer = ShardedTokenWriter(sys.argv[1], "jsonl", {"model": "m"}, process_count=2)
    print("locked", flush=True)
    time.sleep(600)
""")


def test_a_second_run_on_one_output_folder_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=rf"another run \(process id {holder.pid}\) is writing it as process "
                                               r"index 0"):  # fmt: skip
            ShardedTokenWriter(str(folder), "jsonl", {"model": "m"}, process_count=2)
        with pytest.raises(RuntimeError, match=r"a running encode holds .*lock-000; not removing its shards"):
            remove_shards(str(folder))
        ShardedTokenWriter(str(folder), "jsonl", {"model": "m"}, process=1, process_count=2).close()  # another index
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # A killed holder's lock is gone with it.
    writer = ShardedTokenWriter(str(folder), "jsonl", {"model": "m"}, process_count=2)
    writer.add("a.png", np.zeros((1, 2, 2), np.int32))
    writer.close()
    # Within one process the newest writer takes over an interrupted one's lock.
    ShardedTokenWriter(str(folder), "jsonl", {"model": "m"}, process_count=2)
    again = ShardedTokenWriter(str(folder), "jsonl", {"model": "m"}, process_count=2)
    assert again.done == {"a.png"}
    again.close()


def _encode_peak_mb(inputs, out, tiny) -> tuple:
    """Exit status and peak resident memory (MiB) of ``vqgan-flax encode`` in its own process."""
    script = textwrap.dedent("""
        import resource, sys
        from vqgan_flax.cli import main
        code = main(sys.argv[1:])
        print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """)
    argv = ["encode", *map(str, inputs), "--out", str(out), "--format", "jsonl", "--model", tiny, "--quiet",
            "--size", "16", "--workers", "2"]  # fmt: skip
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300)
    code, peak = result.stdout.split()[-2:]
    return int(code), float(peak)


@pytest.mark.own_timeout
def test_encode_memory_stays_within_the_documented_bound_on_the_worst_inputs(tiny, tmp_path):
    """docs/reliability.md: encode's peak memory is its baseline (the model, its compiled programs)
    plus at most workers x MAX_DECODE_BYTES for decoding. Fed the worst inputs of the adversarial
    pass — a 12000 x 12000 16-bit PNG (refused from its header) and two 6000 x 6000 photographs
    that are decoded, with 2 workers — it stays inside it; a tar sample followed by 1 GiB of members
    of the same sample (a few MB compressed) costs what the sample alone costs."""
    small = tmp_path / "small"
    small.mkdir()
    _png(small / "a.png")
    code, baseline = _encode_peak_mb([small], tmp_path / "out-small", tiny)
    assert code == 0
    worst = tmp_path / "worst"
    worst.mkdir()
    Image.fromarray(np.zeros((12000, 12000), np.uint16)).save(worst / "deep.png")
    gradient = np.broadcast_to(np.arange(6000, dtype=np.uint8)[None, :, None], (6000, 6000, 3))
    for name in ("big1.png", "big2.png"):
        Image.fromarray(np.ascontiguousarray(gradient)).save(worst / name)
    code, peak = _encode_peak_mb([worst], tmp_path / "out-worst", tiny)
    assert code == 0
    errors = (tmp_path / "out-worst" / ".vqgan_flax" / "errors-000.jsonl").read_text()
    assert "deep.png: a 12000x12000" in errors and "more than 1024 MiB" in errors
    assert peak - baseline < 2 * image_io.MAX_DECODE_BYTES / 2**20, (baseline, peak)
    image = io.BytesIO()
    _png(image)
    for name, extra in (("one.tar.gz", 0), ("bomb.tar.gz", 8)):
        with tarfile.open(tmp_path / name, "w:gz", compresslevel=1) as archive:
            for data in [image.getvalue()] + [b"\0" * (128 << 20)] * extra:
                info = tarfile.TarInfo("0001.png")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    code, one = _encode_peak_mb([tmp_path / "one.tar.gz"], tmp_path / "out-one", tiny)
    code, bomb = _encode_peak_mb([tmp_path / "bomb.tar.gz"], tmp_path / "out-bomb", tiny)
    assert code == 0 and bomb - one < 100, (one, bomb)


def test_a_file_name_that_is_not_utf8_is_rejected_alone(tiny, tmp_path):
    """Such a name once failed every parquet write of the run; now that item alone is rejected."""
    from vqgan_flax.cli import main

    data = tmp_path / "data"
    data.mkdir()
    _png(data / "a.png")
    _png(os.path.join(os.fsencode(data), b"caf\xe9.png"))
    out = tmp_path / "out"
    assert main(["encode", str(data), "--out", str(out), "--format", "parquet", "--model", tiny, "--quiet"]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out).column("key").to_pylist() == ["a.png"]
    assert "caf\\\\udce9.png" in (out / ".vqgan_flax" / "errors-000.jsonl").read_text()


def test_float_images_in_zero_one_are_not_encoded_black(tmp_path):
    values = np.linspace(0, 1, 24 * 20, dtype=np.float32).reshape(24, 20)
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    rgb = np.asarray(open_rgb(tmp_path / "float.tif"))
    np.testing.assert_array_equal(rgb[..., 0], np.round(values * 255).astype(np.uint8))
    Image.fromarray(values * 200, mode="F").save(tmp_path / "wide.tif")  # values beyond 1: taken as 0..255
    assert np.asarray(open_rgb(tmp_path / "wide.tif")).max() == 200
    values[0, 0] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match=r"nan.tif: not a readable image \(ValueError: a float image with NaN"):
        open_rgb(tmp_path / "nan.tif")
