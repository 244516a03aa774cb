"""Token files as untrusted input (issue 32, part 3): tokens beyond int32 are refused on the stored
dtype before a cast could wrap them to valid codes; every size (grid, row, JSONL line, npz member,
parquet row group) is bounded before it is allocated; the decoder refuses grids far beyond the
model's own; a recorded model must be a folder or a Hub id; output names must not collide on disk
and never go through a symlink or replace what is not a regular file."""

from __future__ import annotations

import json
import os
import re
import zipfile

import numpy as np
import pytest

from vqgan_flax.cli import main
from vqgan_flax.data import readers
from vqgan_flax.data.image_io import check_output_layout, output_names
from vqgan_flax.data.readers import open_tokens


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _jsonl(folder, *records) -> str:
    folder.mkdir(exist_ok=True)
    lines = [
        json.dumps({"key": "ok.png", "vision": [0] * 64, "frames": 1, "height": 8, "width": 8, **r}) for r in records
    ]
    (folder / "part-000-00000.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder)


def _rows(path):
    source = open_tokens(str(path))
    return list(source.rows())


def test_tokens_beyond_int32_are_refused_before_the_cast(tmp_path):
    """2**32 + 5 cast to int32 is 5, a valid code: it must be refused as stored."""
    np.savez(tmp_path / "wide.npz", tokens=np.full((1, 2, 2), 2**32 + 5, np.int64))
    with pytest.raises(ValueError, match=r"wide.npz: tokens: token 4294967301 is not a codebook index"):
        open_tokens(str(tmp_path / "wide.npz"))
    np.savez(tmp_path / "negative.npz", tokens=np.full((1, 2, 2), -1, np.int64))
    with pytest.raises(ValueError, match=r"negative.npz: tokens: token -1 is not a codebook index"):
        open_tokens(str(tmp_path / "negative.npz"))
    with pytest.raises(ValueError, match=r"line 1: token 4294967301 is not a codebook index"):
        _rows(_jsonl(tmp_path / "shards", {"vision": [2**32 + 5] * 64}))


@pytest.mark.parametrize(
    "record, message",
    [
        ({"frames": 1e400}, r"line 1: frames must be an integer; got float inf"),
        ({"height": 4.9}, r"line 1: height must be an integer; got float 4.9"),
        ({"width": True}, r"line 1: width must be an integer; got bool True"),
        ({"vision": [[0] * 8] * 8}, r"line 1: 8 tokens for a 1x8x8 grid"),
        ({"vision": [0] * 63 + [[1]]}, r"line 1: tokens must be a flat list of integers"),
        ({"vision": "0" * 64}, r"line 1: vision must be a list of tokens; got str"),
        ({"frames": 1 << 11, "height": 128, "width": 128}, r"line 1: 2048x128x128 tokens, more than a row.s 16777216"),
    ],
)
def test_jsonl_fields_are_checked_naming_the_line(tmp_path, record, message):
    with pytest.raises(ValueError, match=message):
        _rows(_jsonl(tmp_path / "shards", record))


def test_a_jsonl_line_longer_than_a_record_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_JSONL_LINE_BYTES", 1000)
    with pytest.raises(ValueError, match=r"line 1: longer than a token record's 1000 characters"):
        _rows(_jsonl(tmp_path / "shards", {"caption": "x" * 2000}))


def _npz_with_header(path, shape) -> None:
    """An npz whose tokens header claims ``shape`` over 64 bytes of data."""
    with zipfile.ZipFile(path, "w") as archive, archive.open("tokens.npy", "w") as member:
        np.lib.format.write_array_header_1_0(
            member, np.lib.format.header_data_from_array_1_0(np.zeros(shape, np.int32))
        )
        member.write(b"\0" * 64)


def test_an_npz_member_is_checked_from_its_header_before_it_is_inflated(tmp_path, monkeypatch):
    """A compressed npz of zeros inflates a hundredfold: refused from the zip entry's declared size;
    a header promising more than the member holds is refused too."""
    np.savez_compressed(tmp_path / "bomb.npz", tokens=np.zeros((64, 64, 64), np.int32))
    assert (tmp_path / "bomb.npz").stat().st_size < 10_000
    monkeypatch.setattr(readers, "MAX_NPZ_MEMBER_BYTES", 1 << 20)
    with pytest.raises(ValueError, match=r"bomb.npz: tokens inflates to 1048704 bytes, more than an npz token file's"):
        open_tokens(str(tmp_path / "bomb.npz"))
    monkeypatch.undo()
    _npz_with_header(tmp_path / "liar.npz", (1, 2048, 1024))
    with pytest.raises(ValueError, match=r"liar.npz: tokens: grids of shape \(2048, 1024\) are not token grids"):
        open_tokens(str(tmp_path / "liar.npz"))
    _npz_with_header(tmp_path / "short.npz", (1000, 8, 8))
    with pytest.raises(ValueError, match=r"short.npz: tokens: its header promises 256000 bytes, the member holds at"):
        open_tokens(str(tmp_path / "short.npz"))
    with zipfile.ZipFile(tmp_path / "objects.npz", "w") as archive:
        with archive.open("tokens.npy", "w") as member:
            np.lib.format.write_array(member, np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects.npz: tokens: holds Python objects"):
        open_tokens(str(tmp_path / "objects.npz"))
    honest = tmp_path / "honest.npz"  # what encode writes still reads, compressed or not
    np.savez_compressed(honest, tokens=np.arange(128, dtype=np.int32).reshape(2, 8, 8) % 32, keys=np.array(["a", "b"]))
    assert [key for key, _ in _rows(honest)] == ["a", "b"]


def test_parquet_row_groups_and_rows_are_bounded_from_the_metadata(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "shards"
    folder.mkdir()
    tokens = pa.array([[0] * 4096], pa.list_(pa.int32()))
    table = pa.table({"key": ["big.png"], "tokens": tokens, "frames": [1], "height": [64], "width": [64]})
    pq.write_table(table, folder / "part-000-00000.parquet")
    monkeypatch.setattr(readers, "MAX_ROW_GROUP_TOKENS", 1000)
    with pytest.raises(ValueError, match=r"part-000-00000.parquet: row group 0 holds 4096 tokens, more than 1000"):
        _rows(folder)
    monkeypatch.setattr(readers, "MAX_ROW_GROUP_TOKENS", 1 << 20)
    monkeypatch.setattr(readers, "MAX_ROW_TOKENS", 1000)
    with pytest.raises(ValueError, match=r"part-000-00000.parquet: row 0: 4096 tokens, more than a row's 1000"):
        _rows(folder)
    monkeypatch.undo()
    assert _rows(folder)[0][1].shape == (1, 64, 64)


def test_our_parquet_writer_keeps_row_groups_small(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from vqgan_flax.data import writers

    monkeypatch.setattr(writers, "ROW_GROUP_TOKENS", 256)
    writer = writers.ShardedTokenWriter(str(tmp_path / "out"), "parquet", {"model": "m"})
    for i in range(10):
        writer.add(f"{i}.png", np.zeros((1, 8, 8), np.int32))
    writer.close()
    (shard,) = sorted((tmp_path / "out").glob("part-*.parquet"))
    metadata = pq.ParquetFile(shard).metadata
    assert metadata.num_row_groups == 3 and metadata.row_group(0).num_rows == 4
    assert [key for key, _ in _rows(tmp_path / "out")] == [f"{i}.png" for i in range(10)]


def test_decode_refuses_grids_far_beyond_the_models_own(tiny, tmp_path, capsys):
    """A 1.7 KB npz claiming a 512 x 512 grid: the decoder would need gigabytes."""
    np.savez_compressed(tmp_path / "huge.npz", tokens=np.zeros((1, 512, 512), np.int32))
    assert (tmp_path / "huge.npz").stat().st_size < 4096
    code, err = _run(capsys, "decode", tmp_path / "huge.npz", "--out", tmp_path / "out", "--model", tiny, "--quiet")
    assert code == 1 and re.search(
        r"huge.npz: 000000: a 512x512 grid, more than 1024 tokens a frame for this model", err
    )
    assert not (tmp_path / "out").exists()
    np.savez(tmp_path / "wider.npz", tokens=np.zeros((1, 16, 16), np.int32))  # 4 x the side: within the default
    argv = ["decode", tmp_path / "wider.npz", "--out", tmp_path / "out", "--model", tiny, "--quiet"]
    assert _run(capsys, *argv, "--max-tokens-per-frame", 100)[0] == 1
    assert _run(capsys, *argv)[0] == 0 and (tmp_path / "out" / "000000.png").is_file()


def test_decode_refuses_a_recorded_model_that_is_a_file(tmp_path, capsys):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 4096)
    np.savez(tmp_path / "t.npz", tokens=np.zeros((1, 8, 8), np.int32), model=np.array(str(big)))
    code, err = _run(capsys, "decode", tmp_path / "t.npz", "--out", tmp_path / "out", "--quiet")
    assert code == 1 and "its recorded model" in err and "is a file, not a model folder or Hub id; give --model" in err


def test_output_names_that_collide_on_disk_are_refused_before_writing(tiny, tmp_path, capsys):
    with pytest.raises(
        ValueError, match=r"inputs: 'a.png' would be written as a file and as the folder of 'a.png/b.png'"
    ):
        output_names(["a.png", "a.png/b.png"])
    with pytest.raises(ValueError, match=r"'V/0000.png' and 'v/0000.png' would be written to one file"):
        check_output_layout(["V/0000.png", "v/0000.png"], "t")
    # A video's frames (v/0000.png, v/0001.png) against an image written as v/0001.png.
    shards = _jsonl(tmp_path / "mixed", {"key": "v.mp4", "vision": [0] * 128, "frames": 2}, {"key": "v/0001.jpg"})
    code, err = _run(capsys, "decode", shards, "--out", tmp_path / "out", "--model", tiny, "--quiet")
    assert code == 1 and "'v/0001.png' and 'v/0001.png' would be written to one file" in err
    assert not (tmp_path / "out").exists()


def test_outputs_never_go_through_a_symlink_or_replace_a_special_file(tiny, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(elsewhere)
    np.savez(tmp_path / "t.npz", tokens=np.zeros((1, 8, 8), np.int32), keys=np.array(["sub/deeper/a.png"]))
    code, err = _run(capsys, "decode", tmp_path / "t.npz", "--out", out, "--model", tiny, "--quiet")
    assert code == 1 and "'sub/deeper/a.png' would be written through a symlink to outside it" in err
    assert os.listdir(elsewhere) == []
    os.unlink(out / "sub")
    os.mkfifo(out / "a.png")
    np.savez(tmp_path / "t.npz", tokens=np.zeros((1, 8, 8), np.int32), keys=np.array(["a.png"]))
    code, err = _run(capsys, "decode", tmp_path / "t.npz", "--out", out, "--model", tiny, "--quiet")
    assert code == 1 and "'a.png' exists and is not a regular file; not replacing it" in err


def test_a_resumed_run_checks_each_parquet_shard_it_counts_as_done(tmp_path):
    """Shards copied in from a run with another model carry that model in their own schema: the
    resumed run refuses them instead of counting their keys as done."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from vqgan_flax.data.writers import ShardedTokenWriter

    settings = {"model": "m", "model_digest": "a" * 16, "grid": [8, 8]}
    for folder, digest in (("mine", "a" * 16), ("theirs", "b" * 16)):
        writer = ShardedTokenWriter(str(tmp_path / folder), "parquet", {**settings, "model_digest": digest})
        writer.add("x.png", np.zeros((1, 8, 8), np.int32))
        writer.close()
    shutil.copy(tmp_path / "theirs" / "part-000-00000.parquet", tmp_path / "mine" / "part-000-00007.parquet")
    with pytest.raises(ValueError, match=r"part-000-00007.parquet holds tokens made with model_digest='bbbb"):
        ShardedTokenWriter(str(tmp_path / "mine"), "parquet", settings)
    table = pa.table({"key": ["y.png"], "tokens": pa.array([[0] * 64], pa.list_(pa.int32())), "frames": [1],
                      "height": [8], "width": [8]})  # fmt: skip
    pq.write_table(table, tmp_path / "mine" / "part-000-00007.parquet")
    with pytest.raises(ValueError, match=r"part-000-00007.parquet: a shard without its settings"):
        ShardedTokenWriter(str(tmp_path / "mine"), "parquet", settings)
    (tmp_path / "mine" / "part-000-00007.parquet").unlink()
    assert ShardedTokenWriter(str(tmp_path / "mine"), "parquet", settings).done == {"x.png"}
