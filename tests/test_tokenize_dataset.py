"""Tokenizing datasets: sources (folders, webdataset tar shards, Hugging Face datasets), parquet /
LWM JSONL / npz outputs, resuming exactly once, bad items skipped, processes sharing a dataset."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image
from utils import random_png as _png

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.cli import main
from vqgan_flax.data.image_io import load_image
from vqgan_flax.data.sources import Item, expand_braces, file_items, hf_items, tar_items
from vqgan_flax.data.tokenize import tokenize_items
from vqgan_flax.data.writers import NpzTokenWriter, ShardedTokenWriter, lwm_record


@pytest.fixture(scope="module")
def model(tiny):
    return FlaxVQGANModel.from_pretrained(tiny)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for i in range(5):
        (root / f"{i}.png").write_bytes(_png(i))
    (root / "sub").mkdir()
    (root / "sub" / "0.png").write_bytes(_png(10))
    return root


def _expected(model, paths):
    pixels = np.stack([load_image(str(p), 16) for p in paths])
    return np.asarray(model.encode(pixels).indices).reshape(len(paths), 8, 8)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_expand_braces():
    assert expand_braces("s-{000..003}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar", "s-003.tar"]
    assert expand_braces("{a,b}-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar", "b-9.tar", "b-10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError, match=r"range \{5..1\} runs backwards"):
        expand_braces("s-{5..1}.tar")
    with pytest.raises(ValueError, match="more than a million shards"):
        expand_braces("s-{0..99999999}.tar")


def _tar(path, members):
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            if data is None:  # a symlink, which must never be followed
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                archive.addfile(info)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_tar_shards_stream_samples_with_captions(tmp_path, model):
    _tar(tmp_path / "shard-000.tar", [("a/0001.png", _png(1)), ("a/0001.txt", b"a red square"),
                                      ("a/0002.json", b"{}"), ("a/0002.png", _png(2))])  # fmt: skip
    _tar(tmp_path / "shard-001.tar", [("a/0001.jpg", _png(3)), ("link.png", None), ("0003.txt", b"no image"),
                                      ("0004.png", _png(4)[:40])])  # fmt: skip
    items = list(tar_items([str(tmp_path / "shard-{000..001}.tar")]))
    assert [i.key for i in items] == ["shard-000.tar/a/0001", "shard-000.tar/a/0002", "shard-001.tar/a/0001",
                                      "shard-001.tar/0003", "shard-001.tar/0004"]  # fmt: skip
    assert items[0].caption == "a red square" and items[1].caption is None
    assert items[0].origin == f"{tmp_path / 'shard-000.tar'}:a/0001"
    np.testing.assert_array_equal(np.asarray(items[0].load()), np.asarray(Image.open(io.BytesIO(_png(1)))))
    with pytest.raises(ValueError, match=r"sample shard-001.tar/0003 has no image member \(found \['txt'\]\)"):
        items[3].load()
    with pytest.raises(OSError):
        items[4].load()  # truncated PNG: fails when loaded, alone
    with pytest.raises(FileNotFoundError, match="shard-002.tar: no such shard"):
        tar_items([str(tmp_path / "shard-{000..002}.tar")])


def test_a_corrupt_tar_keeps_what_came_before(tmp_path):
    _tar(tmp_path / "s.tar", [("0001.png", _png(1)), ("0002.png", _png(2))])
    data = (tmp_path / "s.tar").read_bytes()
    first_end = 512 + -(-len(_png(1)) // 512) * 512  # header + padded data
    (tmp_path / "cut.tar").write_bytes(data[: first_end + 700])  # the first member whole, the second cut
    items = list(tar_items([str(tmp_path / "cut.tar")]))
    assert items[0].key == "cut.tar/0001" and items[0].load().size == (24, 20)
    assert [i.key for i in items] == ["cut.tar/0001", "cut.tar/<unreadable>"]
    with pytest.raises(ValueError, match=r"cut.tar: corrupt or cut short"):
        items[-1].load()
    (tmp_path / "junk.tar").write_bytes(b"\x00junk" * 10)
    assert [i.key for i in tar_items([str(tmp_path / "junk.tar")])] == ["junk.tar/<unreadable>"]


def test_hugging_face_dataset_on_disk_and_parquet(tmp_path, folder):
    import datasets

    paths = sorted(str(p) for p in folder.glob("*.png"))
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": paths, "text": [f"t{i}" for i in range(5)]}, features=features)
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=r"choose a split with --split \(\['test', 'train'\]\)"):
        hf_items(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=r"no column 'img'"):
        hf_items(str(tmp_path / "saved"), image_column="img", split="train")
    items = list(hf_items(str(tmp_path / "saved"), split="train", caption_column="text"))
    assert [i.key for i in items] == [f"train/{i}" for i in range(5)] and items[2].caption == "t2"
    np.testing.assert_array_equal(np.asarray(items[3].load()), np.asarray(Image.open(paths[3]).convert("RGB")))
    ds.to_parquet(str(tmp_path / "data.parquet"))
    from_parquet = list(hf_items(str(tmp_path / "data.parquet")))
    assert len(from_parquet) == 5
    np.testing.assert_array_equal(np.asarray(from_parquet[1].load()), np.asarray(items[1].load()))


def test_parquet_output_is_a_dataset_with_the_right_tokens_and_metadata(tiny, model, folder, tmp_path, capsys):
    out = tmp_path / "tokens"
    code, stdout, _ = _run(capsys, "encode", folder, "--out", out, "--format", "parquet", "--model", tiny,
                           "--quiet", "--shard-size", 4, "--batch-size", 2)  # fmt: skip
    assert code == 0 and "wrote 6 x 8x8 tokens" in stdout
    assert sorted(os.listdir(out)) == [".vqgan_flax", "part-000-00000.parquet", "part-000-00001.parquet"]
    import datasets
    import pandas as pd
    import pyarrow.parquet as pq

    loaded = datasets.load_dataset("parquet", data_dir=str(out), split="train")  # sees only the shards
    assert loaded.num_rows == 6 and set(loaded.column_names) >= {"key", "tokens", "frames", "height", "width"}
    frame = pd.read_parquet(out)
    assert list(frame["key"]) == ["0.png", "1.png", "2.png", "3.png", "4.png", "sub/0.png"]
    files = [folder / k for k in frame["key"]]
    expected = _expected(model, files)
    for row, tokens in zip(frame.itertuples(), expected):
        assert (row.frames, row.height, row.width) == (1, 8, 8)
        np.testing.assert_array_equal(np.asarray(row.tokens).reshape(8, 8), tokens)
    schema = pq.read_schema(out / "part-000-00000.parquet")
    assert str(schema.field("tokens").type) == "list<element: int32>" and str(schema.field("key").type) == "string"
    meta = json.loads(schema.metadata[b"vqgan_flax"])
    assert meta == json.loads((out / ".vqgan_flax" / "metadata.json").read_text())
    assert meta["model"] == tiny and meta["n_embed"] == 32 and meta["downsampling_factor"] == 2
    assert meta["grid"] == [8, 8] and meta["image_size"] == 16 and meta["pixel_range"] == [-1.0, 1.0]
    assert meta["vqgan_flax_version"] == __import__("vqgan_flax").__version__ and meta["format"] == "parquet"


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_and_every_item_is_written_once(model, folder, tmp_path):
    items = lambda: file_items([str(folder)])  # noqa: E731
    metadata = {"model": "m", "grid": [8, 8], "image_size": 16, "pixel_range": [-1, 1], "n_embed": 32}
    calls = []

    def encode(pixels):
        calls.append(len(pixels))
        if len(calls) == 3:
            raise _Interrupt  # killed after two batches (one shard of 2 rows, one of 2)
        return np.asarray(model.encode(pixels).indices).reshape(len(pixels), 8, 8)

    writer = ShardedTokenWriter(str(tmp_path), "parquet", metadata, rows_per_shard=2)
    with pytest.raises(_Interrupt):
        tokenize_items(items(), encode, writer, 16, batch_size=2)
    assert sorted(os.listdir(tmp_path)) == [".vqgan_flax", "part-000-00000.parquet", "part-000-00001.parquet"]
    resumed = ShardedTokenWriter(str(tmp_path), "parquet", metadata, rows_per_shard=2)
    assert resumed.done == {"0.png", "1.png", "2.png", "3.png"}
    summary = tokenize_items(items(), encode, resumed, 16, batch_size=2)
    resumed.close()
    assert (summary.encoded, summary.already_done, summary.errors) == (2, 4, [])
    import pandas as pd

    frame = pd.read_parquet(tmp_path)
    assert sorted(frame["key"]) == ["0.png", "1.png", "2.png", "3.png", "4.png", "sub/0.png"]  # once each
    other = dict(metadata, image_size=32)
    with pytest.raises(ValueError, match=r"holds tokens made with image_size=16, this run has 32"):
        ShardedTokenWriter(str(tmp_path), "parquet", other)
    with pytest.raises(ValueError, match=r"holds tokens made with format='parquet', this run has 'jsonl'"):
        ShardedTokenWriter(str(tmp_path), "jsonl", metadata)


def test_shards_go_only_into_a_new_empty_or_token_folder(tmp_path, capsys):
    """A folder holding the user's own files, or shards whose metadata is gone, is refused (by the
    writer and, before any work, by the CLI) instead of being written into and mixed."""
    from vqgan_flax.data.writers import check_token_folder

    metadata = {"model": "m", "grid": [2, 2], "image_size": 16, "pixel_range": [-1, 1], "n_embed": 32}
    check_token_folder(str(tmp_path / "new"))  # missing: fine
    (tmp_path / "empty" / ".vqgan_flax").mkdir(parents=True)
    check_token_folder(str(tmp_path / "empty"))  # only the info folder: another process is writing it
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photos / "a.png")
    (photos / "b.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"photos: holds a.png \(and 1 more\) but is no token folder"):
        ShardedTokenWriter(str(photos), "parquet", metadata)
    assert sorted(os.listdir(photos)) == ["a.png", "b.txt"]  # nothing written
    writer = ShardedTokenWriter(str(tmp_path / "tokens"), "jsonl", metadata, rows_per_shard=1)
    writer.add("k", np.zeros((1, 2, 2), np.int32))
    writer.close()
    ShardedTokenWriter(str(tmp_path / "tokens"), "jsonl", metadata).close()  # ours: resumes
    copied = tmp_path / "copied"
    copied.mkdir()
    for shard in (tmp_path / "tokens").glob("part-*"):
        (copied / shard.name).write_bytes(shard.read_bytes())  # the shards without .vqgan_flax/
    with pytest.raises(ValueError, match=r"copied: holds part-000-00000.jsonl but is no token folder"):
        ShardedTokenWriter(str(copied), "jsonl", metadata)
    # the CLI refuses before it loads a model (there is none) or creates anything
    code, _, err = _run(capsys, "encode", photos, "--out", photos, "--model", tmp_path / "nowhere")
    assert code == 1 and f"--out {photos}: holds a.png (and 1 more) but is no token folder" in err
    assert sorted(os.listdir(photos)) == ["a.png", "b.txt"]


def test_bad_items_are_skipped_and_listed_or_fatal_with_strict(tiny, folder, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "b.png"):
        (data / name).write_bytes((folder / "0.png").read_bytes())
    (data / "truncated.png").write_bytes((folder / "1.png").read_bytes()[:100])
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "encode", data, "--out", out, "--format", "parquet", "--model", tiny, "--quiet")
    assert code == 0 and "wrote 2 x 8x8 tokens" in stdout
    assert f"skipped 1 item(s) that could not be read (all in {out}/.vqgan_flax/errors-000.jsonl):" in err
    assert "truncated.png" in err.splitlines()[1]
    errors = (out / ".vqgan_flax" / "errors-000.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in errors] == ["truncated.png"]
    code, _, err = _run(capsys, "encode", data, "--out", tmp_path / "s.npz", "--model", tiny, "--quiet", "--strict")
    assert code == 1 and err.startswith("vqgan-flax encode: error: truncated.png: ") and err.count("\n") == 1
    assert not (tmp_path / "s.npz").exists()
    (data / "a.png").unlink()
    (data / "b.png").unlink()
    code, _, err = _run(capsys, "encode", data, "--out", tmp_path / "n.npz", "--model", tiny, "--quiet")
    assert code == 1 and err.count("\n") == 1
    assert "error: none of the 1 item(s) could be read; the first: truncated.png: " in err


def test_lwm_jsonl_records(tiny, model, folder, tmp_path, capsys):
    out = tmp_path / "lwm"
    assert _run(capsys, "encode", folder, "--out", out, "--format", "jsonl", "--model", tiny, "--quiet")[0] == 0
    records = [json.loads(line) for line in (out / "part-000-00000.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == ["0.png", "1.png", "2.png", "3.png", "4.png", "sub/0.png"]
    expected = _expected(model, [folder / r["key"] for r in records])
    for record, tokens in zip(records, expected):
        assert record["fields"] == "vision" and (record["frames"], record["height"], record["width"]) == (1, 8, 8)
        assert record["vision"] == tokens.reshape(-1).tolist()
    video = lwm_record("clip", np.arange(2 * 2 * 3).reshape(2, 2, 3), "a caption")
    assert video["vision"] == list(range(12)) and video["frames"] == 2 and video["fields"] == "[caption],vision"


def test_npz_to_standard_output(tiny, folder, tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "vqgan-flax")
    result = subprocess.run([script, "encode", str(folder), "--out", "-", "--model", tiny, "--quiet"],
                            capture_output=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    record = np.load(io.BytesIO(result.stdout))
    assert record["tokens"].shape == (6, 8, 8) and "wrote 6 x 8x8 tokens to -" in result.stderr.decode()
    assert not os.path.exists("-")


def test_processes_share_a_dataset_by_key_hash(model, folder, tmp_path):
    from vqgan_flax.data.shards import key_owner

    metadata = {"model": "m", "grid": [8, 8], "image_size": 16, "pixel_range": [-1, 1], "n_embed": 32}
    encode = lambda x: np.asarray(model.encode(x).indices).reshape(len(x), 8, 8)  # noqa: E731
    keys_of = {}
    for index in range(3):
        writer = ShardedTokenWriter(str(tmp_path), "jsonl", metadata, process=index, process_count=3)
        loaded = []
        items = [Item(i.key, lambda i=i, loaded=loaded: loaded.append(i.key) or i.load(), origin=i.origin)
                 for i in file_items([str(folder)])]  # fmt: skip
        summary = tokenize_items(items, encode, writer, 16, process_index=index, process_count=3)
        writer.close()
        keys_of[index] = sorted(loaded)
        assert summary.encoded == len(loaded) and all(key_owner(k, 3) == index for k in loaded)
    names = sorted(n for n in os.listdir(tmp_path) if n.startswith("part-"))
    keys = [json.loads(line)["key"] for n in names for line in (tmp_path / n).read_text().splitlines()]
    assert sorted(keys) == ["0.png", "1.png", "2.png", "3.png", "4.png", "sub/0.png"]
    assert sorted(k for ks in keys_of.values() for k in ks) == sorted(keys)  # each loaded by its process only
    assert [key_owner(k, 3) for k in ["0.png", "3.png", "4.png"]] == [1, 0, 2]  # stable: sha256, not hash()
    with pytest.raises(ValueError, match=r"process_index 3 is not in \[0, 3\)"):
        tokenize_items([], encode, writer, 16, process_index=3, process_count=3)


def test_duplicate_keys_and_npz_writer_shapes(model):
    items = [Item("x", lambda: Image.new("RGB", (16, 16))), Item("x", lambda: Image.new("RGB", (16, 16)))]
    writer = NpzTokenWriter("unused.npz", {"grid": [8, 8]})
    encode = lambda x: np.asarray(model.encode(x).indices).reshape(len(x), 8, 8)  # noqa: E731
    summary = tokenize_items(items, encode, writer, 16)
    assert summary.encoded == 1 and summary.errors == [("x", "duplicate key: an earlier item has the same key")]
    with pytest.raises(ValueError, match=r"y: token grid \(1, 4, 4\) differs from the first item's \(1, 8, 8\)"):
        writer.add("y", np.zeros((1, 4, 4)))


def test_cli_processes_and_tar_source(tiny, folder, tmp_path, capsys):
    _tar(tmp_path / "s-0.tar", [(f"{i:04d}.png", (folder / f"{i}.png").read_bytes()) for i in range(3)])
    _tar(tmp_path / "s-1.tar", [(f"{i:04d}.png", (folder / f"{i}.png").read_bytes()) for i in range(3, 5)])
    out = tmp_path / "out"
    for index in range(2):
        shards = (tmp_path / "s-0.tar", tmp_path / "s-1.tar")
        code, stdout, _ = _run(capsys, "encode", *shards, "--out", out, "--format", "jsonl", "--model", tiny,
                               "--quiet", "--process-index", index, "--process-count", 2)  # fmt: skip
        assert code == 0 and f"wrote {3 - index} x 8x8 tokens" in stdout
    keys = sorted(json.loads(line)["key"] for n in ("part-000-00000.jsonl", "part-001-00000.jsonl")
                  for line in (out / n).read_text().splitlines())  # fmt: skip
    assert keys == ["s-0.tar/0000", "s-0.tar/0001", "s-0.tar/0002", "s-1.tar/0003", "s-1.tar/0004"]
    code, _, err = _run(capsys, "encode", folder, "--out", tmp_path / "t.npz", "--process-count", 2, "--model", tiny)
    assert code == 1 and "--process-count needs --process-index too" in err
    code, _, err = _run(capsys, "encode", folder, "--out", tmp_path / "t.npz", "--process-index", 0,
                        "--process-count", 2, "--model", tiny)  # fmt: skip
    assert code == 1 and "--process-count > 1 needs a sharded --format" in err
    code, _, err = _run(capsys, "encode", folder, "--out", tmp_path / "o", "--format", "parquet", "--process-index",
                        2, "--process-count", 2)  # fmt: skip
    assert code == 1 and "--process-index 2 is not in [0, --process-count 2)" in err
    code, _, err = _run(capsys, "encode", folder, "--out", "-", "--format", "parquet", "--model", tiny)
    assert code == 1 and "--out -: parquet output is a folder of shards" in err


def _video(path, frames=12, size=(24, 32)):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
        rng = np.random.default_rng(frames)
        for _ in range(frames):
            coarse = rng.integers(0, 256, (3, 4, 3)).astype(np.uint8)
            image = np.asarray(Image.fromarray(coarse).resize(size[::-1], Image.Resampling.BILINEAR))
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_videos_are_one_row_of_sampled_frames(tiny, model, tmp_path, capsys):
    pytest.importorskip("av")
    from vqgan_flax.data.image_io import resize_and_center_crop
    from vqgan_flax.data.sources import video_frames
    from vqgan_flax.vqgan import VQGAN

    clips = tmp_path / "clips"
    clips.mkdir()
    _video(clips / "a.mp4", frames=12)
    _video(clips / "b.mp4", frames=3)
    (clips / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 50)
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "encode", clips, "--out", out, "--format", "parquet", "--media", "video",
                             "--frames", 4, "--model", tiny, "--quiet", "--batch-size", 3)  # fmt: skip
    assert code == 0 and "wrote 2 x 8x8 tokens" in stdout and "broken.mp4" in err
    import pandas as pd

    frame = pd.read_parquet(out).set_index("key")
    assert frame.loc["a.mp4", "frames"] == 4 and frame.loc["b.mp4", "frames"] == 3  # b has only 3
    decoded = [np.asarray(resize_and_center_crop(f, 16, 16)) for f in video_frames(str(clips / "a.mp4"))]
    chosen = np.stack([decoded[i] for i in (0, 4, 7, 11)])  # 4 evenly spaced of 12
    pixels = chosen.astype(np.float32) / 127.5 - 1.0
    expected = np.asarray(model.encode(pixels).indices).reshape(4, 8, 8)
    np.testing.assert_array_equal(np.asarray(frame.loc["a.mp4", "tokens"]).reshape(4, 8, 8), expected)
    # The LWM wrapper's video path, (B, T, H, W, C), gives the same tokens.
    np.testing.assert_array_equal(np.asarray(VQGAN(tiny).encode(pixels[None])[1]).reshape(4, 8, 8), expected)
    code, _, err = _run(capsys, "encode", clips / "a.mp4", "--out", tmp_path / "o2", "--format", "jsonl",
                        "--media", "video", "--max-frames", 5, "--model", tiny, "--quiet")  # fmt: skip
    assert code == 1 and "more than 5 frames at stride 1" in err
    code, _, err = _run(capsys, "encode", clips / "a.mp4", clips / "b.mp4", "--out", tmp_path / "v.npz",
                        "--media", "video", "--frame-stride", 3, "--model", tiny, "--quiet")  # fmt: skip
    assert code == 0 and "b.mp4: token grid (1, 8, 8) differs from the first item's (4, 8, 8)" in err
    assert np.load(tmp_path / "v.npz")["tokens"].shape == (1, 4, 8, 8)  # a: frames 0, 3, 6, 9


def test_decode_reads_shards_and_videos_back(tiny, folder, tmp_path, capsys):
    for fmt in ("parquet", "jsonl"):
        assert _run(capsys, "encode", folder, "--out", tmp_path / fmt, "--format", fmt, "--model", tiny, "--quiet",
                    "--shard-size", 4)[0] == 0  # fmt: skip
        code, stdout, _ = _run(capsys, "decode", tmp_path / fmt, "--out", tmp_path / f"{fmt}-images", "--quiet")
        assert code == 0 and f"wrote 6 images to {tmp_path / fmt}-images" in stdout  # the recorded model
    assert _run(capsys, "encode", folder, "--out", tmp_path / "t.npz", "--model", tiny, "--quiet")[0] == 0
    assert _run(capsys, "decode", tmp_path / "t.npz", "--out", tmp_path / "npz-images", "--quiet")[0] == 0
    for name in ("0.png", "4.png", "sub/0.png"):
        reference = np.asarray(Image.open(tmp_path / "npz-images" / name))
        for fmt in ("parquet", "jsonl"):
            np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"{fmt}-images" / name)), reference)
    record = dict(np.load(tmp_path / "t.npz"))
    video = dict(record, tokens=record["tokens"][:4][None], keys=np.asarray(["clip.mp4"]), files=np.asarray(["c"]))
    np.savez(tmp_path / "video.npz", **video)
    code, stdout, _ = _run(capsys, "decode", tmp_path / "video.npz", "--out", tmp_path / "frames", "--quiet")
    assert code == 0 and "wrote 0 images and 1 videos" in stdout
    assert sorted(os.listdir(tmp_path / "frames" / "clip")) == ["0000.png", "0001.png", "0002.png", "0003.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "frames" / "clip" / "0002.png")),
                                  np.asarray(Image.open(tmp_path / "npz-images" / "2.png")))  # fmt: skip


@pytest.mark.parametrize(
    "row, message",
    [
        ({"key": "../up.png"}, r"part-000-00000.jsonl: line 1: '../up.png' is not a relative path"),
        ({"vision": [1, 2, 3]}, r"line 1: 3 tokens for a 1x8x8 grid"),
        ({"height": 10**6}, r"line 1: grid 1x1000000x8 is not a token grid"),
        ({"vision": [0.5] * 64}, r"line 1: tokens must be integers; got float64"),
        ({"vision": [99] * 64}, r"tokens: ok.png: token 99 is outside the model's codebook \[0, 32\)"),
    ],
)
def test_hostile_token_shards_are_refused(tiny, tmp_path, capsys, row, message):
    shards = tmp_path / "tokens"
    shards.mkdir()
    record = {"key": "ok.png", "vision": [0] * 64, "frames": 1, "height": 8, "width": 8, **row}
    (shards / "part-000-00000.jsonl").write_text(json.dumps(record) + "\n")
    code, _, err = _run(capsys, "decode", shards, "--out", tmp_path / "out", "--model", tiny, "--quiet")
    assert code == 1 and err.count("\n") == 1
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "up.png").exists()


def test_dalle_mini_flow_webdataset_to_parquet_equals_the_python_api(tiny, model, folder, tmp_path, capsys):
    """DALL·E-mini's encoding notebook: webdataset shards of (image, caption) → parquet of tokens."""
    names = sorted(p.name for p in folder.glob("*.png"))
    samples = [m for i, n in enumerate(names) for m in ((f"{i:05d}.png", (folder / n).read_bytes()),
                                                        (f"{i:05d}.txt", n.encode()))]  # fmt: skip
    _tar(tmp_path / "train-000.tar", samples[:6])
    _tar(tmp_path / "train-001.tar", samples[6:])
    code, _, _ = _run(capsys, "encode", str(tmp_path / "train-{000..001}.tar"), "--out", tmp_path / "encoded",
                      "--format", "parquet", "--model", tiny, "--quiet")  # fmt: skip
    assert code == 0
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "encoded")
    assert list(frame["key"]) == ["train-000.tar/00000", "train-000.tar/00001", "train-000.tar/00002",
                                  "train-001.tar/00003", "train-001.tar/00004"]  # fmt: skip
    assert list(frame["caption"]) == names
    expected = _expected(model, [folder / n for n in names])
    np.testing.assert_array_equal(np.stack([np.asarray(t) for t in frame["tokens"]]).reshape(5, 8, 8), expected)


def test_rejects_from_a_folder_and_a_tar_shard_and_every_good_item_encoded(tiny, folder, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "b.png"):
        (data / name).write_bytes((folder / "0.png").read_bytes())
    (data / "cut.png").write_bytes((folder / "1.png").read_bytes()[:90])
    (data / "text.jpg").write_text("not a picture")
    _tar(tmp_path / "s.tar", [("good.png", _png(1)), ("bad.png", b"\x89PNG garbage"), ("lonely.txt", b"caption")])
    out = tmp_path / "out"
    code, _, _ = _run(capsys, "encode", data, "--out", out / "folder", "--format", "parquet", "--model", tiny, "-q")
    assert code == 0
    assert _run(capsys, "encode", tmp_path / "s.tar", "--out", out / "tar", "--format", "parquet", "--model", tiny,
                "--quiet")[0] == 0  # fmt: skip
    import pandas as pd

    rejects = {
        kind: {json.loads(line)["key"] for line in (out / kind / ".vqgan_flax" / "errors-000.jsonl").open()}
        for kind in ("folder", "tar")
    }
    assert rejects == {"folder": {"cut.png", "text.jpg"}, "tar": {"s.tar/bad", "s.tar/lonely"}}
    assert sorted(pd.read_parquet(out / "folder")["key"]) == ["a.png", "b.png"]
    assert list(pd.read_parquet(out / "tar")["key"]) == ["s.tar/good"]


def test_a_sigkilled_encode_resumes_exactly_once_and_overwrite_starts_over(tiny, tmp_path):
    import signal
    import time

    data = tmp_path / "data"
    data.mkdir()
    for i in range(24):
        (data / f"{i:02d}.png").write_bytes(_png(i))
    script = os.path.join(os.path.dirname(sys.executable), "vqgan-flax")
    argv = [script, "encode", str(data), "--out", str(tmp_path / "out"), "--format", "parquet", "--model", tiny,
            "--quiet", "--batch-size", 2, "--shard-size", 2, "--size", 64]  # fmt: skip
    argv = [str(a) for a in argv]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(list((tmp_path / "out").glob("part-*.parquet"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list((tmp_path / "out").glob("part-*.parquet")))
    assert 3 <= done_before < 12, "the run must be killed midway"
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"({2 * done_before} already there from an earlier run)" in result.stdout
    import pandas as pd

    keys = list(pd.read_parquet(tmp_path / "out")["key"])
    assert sorted(keys) == [f"{i:02d}.png" for i in range(24)]  # every item exactly once
    assert not [n for n in os.listdir(tmp_path / "out") if n.endswith(".partial")]
    result = subprocess.run([*argv, "--overwrite"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "wrote 24 x 32x32 tokens" in result.stdout
    assert "already there" not in result.stdout
    assert len(pd.read_parquet(tmp_path / "out")) == 24


def test_info_json_and_decode_refuses_a_model_of_another_codebook(tiny, folder, tmp_path, capsys):
    code, stdout, _ = _run(capsys, "info", tiny, "--json")
    facts = json.loads(stdout)
    assert code == 0 and facts["n_embed"] == 32 and facts["grid"] == [8, 8] and facts["pixel_range"] == [-1.0, 1.0]
    bigger = tmp_path / "bigger"
    config = VQGANConfig.from_preset("tiny")
    config.n_embed = 64
    FlaxVQGANModel(config, seed=0).save_pretrained(bigger)
    code, _, _ = _run(capsys, "encode", folder, "--out", tmp_path / "t", "--format", "jsonl", "--model", tiny, "-q")
    assert code == 0
    code, _, err = _run(capsys, "decode", tmp_path / "t", "--out", tmp_path / "d", "--model", bigger, "--quiet")
    assert code == 1 and f"was made by a model with n_embed=32; --model {bigger} has 64" in err


def test_lwm_pickles_work_wherever_a_model_does(tmp_path, capsys):
    """LWM's own config names answer on our config; its params pickle is a --model, an info
    target, a from_pretrained path and a converter input."""
    from vqgan_flax.vqgan import VQGAN

    lwm = os.path.join(os.path.dirname(__file__), "fixtures", "lwm", "vqgan")
    model = FlaxVQGANModel.from_pretrained(lwm)
    lwm_fields = json.load(open(os.path.join(os.path.dirname(lwm), "config.json")))
    for name, value in lwm_fields.items():
        assert getattr(model.config, name) == value, name
    assert model.config.num_resolutions == 3
    code, stdout, _ = _run(capsys, "info", lwm, "--json")
    assert code == 0 and json.loads(stdout)["n_embed"] == 64 and json.loads(stdout)["model"] == lwm
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.png").write_bytes(_png(i, (40, 36)))
    assert _run(capsys, "encode", images, "--out", tmp_path / "t.npz", "--model", lwm, "--quiet")[0] == 0
    pixels = np.stack([load_image(str(images / f"{i}.png"), 32) for i in range(3)])
    np.testing.assert_array_equal(np.load(tmp_path / "t.npz")["tokens"], np.asarray(VQGAN(lwm).encode(pixels)[1]))
    from vqgan_flax.cli.convert import main as convert

    assert convert(["--lwm", lwm, "--output", str(tmp_path / "folder")]) == 0
    converted = FlaxVQGANModel.from_pretrained(tmp_path / "folder")
    for a, b in zip(__import__("jax").tree.leaves(converted.params), __import__("jax").tree.leaves(model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert convert(["--to-taming", lwm, "--output", str(tmp_path / "taming.safetensors")]) == 0


def test_two_processes_one_killed_and_restarted_give_what_one_process_gives(tiny, tmp_path):
    import signal
    import time

    data = tmp_path / "data"
    data.mkdir()
    for i in range(48):
        (data / f"{i:02d}.png").write_bytes(_png(100 + i))
    script = os.path.join(os.path.dirname(sys.executable), "vqgan-flax")

    def argv(out, index, count):
        # 64² images (about 45 ms a pair for the tiny model): 12 shards a process, time to kill one midway.
        options = ["--size", 64, "--batch-size", 2, "--shard-size", 2, "--process-index", index]
        options += ["--process-count", count]
        command = [script, "encode", data, "--out", out, "--format", "parquet", "--model", tiny, "-q", *options]
        return [str(a) for a in command]

    first, second = (subprocess.Popen(argv(tmp_path / "two", i, 2), stderr=subprocess.PIPE) for i in range(2))
    deadline = time.monotonic() + 300
    while not list((tmp_path / "two").glob("part-001-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.01)
    second.send_signal(signal.SIGKILL)
    second.wait()
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    assert len(list((tmp_path / "two").glob("part-001-*.parquet"))) < 12, "process 1 must be killed midway"
    again = subprocess.run(argv(tmp_path / "two", 1, 2), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already there from an earlier run" in again.stdout, again.stderr[-2000:]
    assert subprocess.run(argv(tmp_path / "one", 0, 1), capture_output=True, timeout=600).returncode == 0
    import pandas as pd

    two = pd.read_parquet(tmp_path / "two").sort_values("key")
    one = pd.read_parquet(tmp_path / "one").sort_values("key")
    assert list(two["key"]) == [f"{i:02d}.png" for i in range(48)] == list(one["key"])  # each exactly once
    for a, b in zip(two["tokens"], one["tokens"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_decode_refuses_a_recorded_pixel_range_that_is_no_range(tiny, folder, tmp_path, capsys):
    """Tokens are decoded in the range they were made with; a recorded range that is no range
    ([nan, nan], [0, 0], [1, -1]) is refused naming the file, not turned into black or inverted PNGs."""
    code, _, _ = _run(capsys, "encode", folder / "0.png", "--out", tmp_path / "t.npz", "--model", tiny, "--quiet")
    assert code == 0
    stored = dict(np.load(tmp_path / "t.npz"))
    for bad in ([np.nan, np.nan], [0.0, 0.0], [1.0, -1.0]):
        np.savez(tmp_path / "bad.npz", **{**stored, "pixel_range": np.asarray(bad)})
        code, _, err = _run(capsys, "decode", tmp_path / "bad.npz", "--out", tmp_path / "png", "--model", tiny)
        assert code == 1 and f"{tmp_path / 'bad.npz'}: recorded pixel_range" in err, err
        assert not (tmp_path / "png").exists()
    code, _, err = _run(capsys, "decode", tmp_path / "bad.npz", "--out", tmp_path / "png", "--model", tiny,
                        "--pixel-range", "1", "0")  # fmt: skip
    assert code == 1 and "--pixel-range LOW HIGH must be (low, high) with low < high; got [1.0, 0.0]" in err, err
    # --pixel-range given: the user's range is used instead
    code, _, err = _run(capsys, "decode", tmp_path / "bad.npz", "--out", tmp_path / "png", "--model", tiny,
                        "--pixel-range", "-1", "1", "--quiet")  # fmt: skip
    assert code == 0 and len(list((tmp_path / "png").iterdir())) == 1, err
