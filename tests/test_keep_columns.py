"""``--keep-columns`` (issue 33): labels, ids and URLs carried from tar members and dataset columns
into every output row, with one kind per column for the whole job."""

from __future__ import annotations

import io
import json
import re
import tarfile

import numpy as np
import pytest
from utils import random_png as _png
from utils import run_cli as _run

from vqgan_flax.data.columns import checked_row, checked_value
from vqgan_flax.data.sources import hf_kept_kinds, tar_items
from vqgan_flax.data.writers import NpzTokenWriter


def _tar(path, samples):
    with tarfile.open(path, "w") as archive:
        for key, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def test_tar_members_are_kept_as_text_in_parquet_and_jsonl(tiny, tmp_path, capsys):
    import pyarrow.parquet as pq

    _tar(tmp_path / "s.tar", [("0001", {"png": _png(1), "cls": b"7", "json": b'{"url": "u1"}'}),
                              ("0002", {"png": _png(2), "cls": b"3"}),
                              ("0003", {"png": _png(3), "cls": b"\xff\xfe"})])  # fmt: skip
    for fmt in ("parquet", "jsonl"):
        code, out, err = _run(capsys, "encode", tmp_path / "s.tar", "--out", tmp_path / fmt, "--format", fmt,
                              "--model", tiny, "--quiet", "--keep-columns", "cls", "json")  # fmt: skip
        assert code == 0 and "wrote 2 x 8x8 tokens" in out, err
        assert "s.tar/0003: ValueError: " in err and "member .cls: not UTF-8 text" in err  # the item's error
    table = pq.read_table(tmp_path / "parquet" / "part-000-00000.parquet")
    assert table.column("cls").to_pylist() == ["7", "3"] and table.column("json").to_pylist() == ['{"url": "u1"}', None]
    assert str(table.schema.field("cls").type) == "string"
    meta = json.loads((tmp_path / "parquet" / ".vqgan_flax" / "metadata.json").read_text())
    assert meta["kept_columns"] == {"cls": "string", "json": "string"}
    records = [json.loads(line) for line in (tmp_path / "jsonl" / "part-000-00000.jsonl").read_text().splitlines()]
    assert [(r["key"], r["cls"]) for r in records] == [("s.tar/0001", "7"), ("s.tar/0002", "3")]
    # a resumed run must keep the same columns
    code, _, err = _run(capsys, "encode", tmp_path / "s.tar", "--out", tmp_path / "parquet", "--model", tiny,
                        "--quiet", "--keep-columns", "cls")  # fmt: skip
    assert (
        code == 1
        and "its parts keep the columns {'cls': 'string', 'json': 'string'}, this run {'cls': 'string'}" in err
    )
    items = list(tar_items([str(tmp_path / "s.tar")], keep=["cls"]))
    assert items[0].extra == {"cls": "7"} and items[1].extra == {"cls": "3"}


def test_dataset_columns_keep_their_declared_kind(tiny, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"image": [{"bytes": _png(s), "path": None} for s in range(3)], "label": [4, 5, None],
                      "url": ["a", "b", "c"], "score": [0.5, 1.0, 2.0], "tags": [["x"], [], ["y"]]})  # fmt: skip
    pq.write_table(table, tmp_path / "data.parquet")
    assert hf_kept_kinds(str(tmp_path / "data.parquet"), ["label", "url", "score"]) == {
        "label": "int64", "url": "string", "score": "double",
    }  # fmt: skip
    code, out, err = _run(capsys, "encode", tmp_path / "data.parquet", "--out", tmp_path / "o", "--model", tiny,
                          "--quiet", "--keep-columns", "label", "url", "score")  # fmt: skip
    assert code == 0 and "wrote 3 x 8x8 tokens" in out, err
    written = pq.read_table(tmp_path / "o" / "part-000-00000.parquet")
    assert written.column("label").to_pylist() == [4, 5, None] and str(written.schema.field("label").type) == "int64"
    assert written.column("url").to_pylist() == ["a", "b", "c"] and written.column("score").to_pylist() == [
        0.5,
        1.0,
        2.0,
    ]
    code, _, err = _run(capsys, "encode", tmp_path / "data.parquet", "--out", tmp_path / "p", "--model", tiny,
                        "--keep-columns", "tags")  # fmt: skip
    assert code == 1 and "column 'tags' is list<element: string>; only text, integer, float and boolean" in err
    code, _, err = _run(capsys, "encode", tmp_path / "data.parquet", "--out", tmp_path / "p", "--model", tiny,
                        "--keep-columns", "nope")  # fmt: skip
    assert code == 1 and "data.parquet: no column 'nope' to keep" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--keep-columns", "tokens"], r"--keep-columns 'tokens': one of our output columns"),
        (["--keep-columns", "a", "a"], r"--keep-columns 'a': given twice"),
        (["--keep-columns", "a", "--out", "x.npz"], r"--keep-columns needs a sharded --format"),
        (["--keep-columns", "a"], r"--keep-columns: image files have no columns"),
    ],
)
def test_keep_columns_refusals(tiny, tmp_path, capsys, argv, message):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(_png(0))
    out = [] if "--out" in argv else ["--out", tmp_path / "o"]
    code, _, err = _run(capsys, "encode", tmp_path / "in", *out, "--model", tiny, *argv)
    assert code == 1 and re.search(message, err), err


def test_kept_values_are_checked_against_their_kind():
    assert checked_value("n", "double", 3) == 3.0 and checked_value("b", "bool", True) is True
    assert checked_row({"a": "int64", "b": "string"}, {"a": 2}) == {"a": 2, "b": None}
    for kind, value in (("int64", True), ("int64", "3"), ("string", 3), ("bool", 1), ("int64", 2**63)):
        with pytest.raises(ValueError, match=rf"kept column 'c' \({kind}\): .* is not one"):
            checked_value("c", kind, value)
    with pytest.raises(ValueError, match=r"an npz token file keeps no columns \(\['a'\]\)"):
        NpzTokenWriter("unused.npz", {"grid": [1, 1]}).add("k", np.zeros((1, 1, 1)), extra={"a": 1})
