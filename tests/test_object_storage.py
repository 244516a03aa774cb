"""Inputs and outputs in object storage (issue 33): the same job from and to ``s3://`` — a real
S3 API (moto's server, started here on 127.0.0.1) — gives the local run's tokens; ``pipe:``
shards; token folders in fsspec's memory file system."""

from __future__ import annotations

import io
import os
import sys
import tarfile

import pytest
from utils import random_png as _png
from utils import run_cli as _run

from vqgan_flax.data import sources
from vqgan_flax.data.storage import Folder, input_name, is_remote, open_input

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


def _shard(path, first: int) -> None:
    with tarfile.open(path, "w") as archive:
        for sample in range(3):
            data = _png(first + sample)
            info = tarfile.TarInfo(f"{sample:04d}.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3 server holding ``s3://data/shards/s-{0..3}.tar`` (and the same shards on disk)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION")}  # fmt: skip
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="test",
                      AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("data")
    local = tmp_path_factory.mktemp("local-shards")
    for shard in range(4):
        _shard(local / f"s-{shard}.tar", 10 * shard)
        fs.put_file(str(local / f"s-{shard}.tar"), f"data/shards/s-{shard}.tar")
    yield fs, local
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _tokens(folder: str) -> dict:
    import pyarrow.parquet as pq

    store = Folder(folder)
    rows = {}
    for name in store.listdir():
        if name.startswith("part-"):
            with store.open(name) as f:
                table = pq.read_table(f)
            rows.update(zip(table.column("key").to_pylist(), map(tuple, table.column("tokens").to_pylist())))
    return rows


def test_the_same_job_from_and_to_s3_gives_the_local_tokens(tiny, s3, tmp_path, capsys):
    fs, local = s3
    code, _, err = _run(
        capsys, "encode", local / "s-{0..3}.tar", "--out", tmp_path / "local", "--model", tiny, "--quiet"
    )
    assert code == 0, err
    for index in range(2):
        code, out, err = _run(capsys, "encode", "s3://data/shards/s-{0..3}.tar", "--out", "s3://data/tokens",
                              "--model", tiny, "--quiet", "--process-index", index, "--process-count", 2)  # fmt: skip
        assert code == 0 and "wrote 6 x 8x8 tokens to s3://data/tokens" in out, err
    remote, expected = _tokens("s3://data/tokens"), _tokens(str(tmp_path / "local"))
    assert len(remote) == 12 and remote == expected
    assert fs.exists("data/tokens/.vqgan_flax/complete.json") and fs.exists("data/tokens/.vqgan_flax/metadata.json")
    assert not [p for p in fs.find("data/tokens") if ".partial" in p]  # uploads, no temporary objects
    code, out, _ = _run(capsys, "verify", "s3://data/tokens")
    assert code == 0 and "2 of 2 processes finished, 4 of 4 input shards, 12 rows in 4 parts" in out, out
    # a rerun finds every shard finished and reads none
    code, out, _ = _run(capsys, "encode", "s3://data/shards/s-{0..3}.tar", "--out", "s3://data/tokens", "--model",
                        tiny, "--quiet", "--process-index", 0, "--process-count", 2)  # fmt: skip
    assert code == 0 and "(2 of 2 input shards finished by an earlier run)" in out
    # one part gone from the bucket: verify names it
    fs.rm_file("data/tokens/part-001-00000.parquet")
    code, out, _ = _run(capsys, "verify", "s3://data/tokens")
    assert code == 1 and "its part part-001-00000.parquet is missing or unreadable" in out


def test_a_parquet_dataset_in_s3_is_read_file_by_file(tiny, s3, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, _ = s3
    for name, seeds in (("pq/a.parquet", [0, 1]), ("pq/b.parquet", [2])):
        buffer = io.BytesIO()
        pq.write_table(pa.table({"image": [{"bytes": _png(s), "path": None} for s in seeds]}), buffer)
        fs.pipe_file(f"data/{name}", buffer.getvalue())
    code, out, err = _run(capsys, "encode", "s3://data/pq", "--source", "hf", "--out", tmp_path / "t", "--model", tiny,
                          "--quiet")  # fmt: skip
    assert code == 0 and "wrote 3 x 8x8 tokens" in out, err
    assert sorted(_tokens(str(tmp_path / "t"))) == ["a.parquet/0", "a.parquet/1", "b.parquet/0"]


def test_an_image_folder_in_s3_gives_the_local_folders_tokens(tiny, s3, tmp_path, capsys):
    fs, _ = s3
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    for seed, name in enumerate(("a.png", "b.png", "sub/c.png")):
        (tmp_path / "photos" / name).write_bytes(_png(seed))
        fs.pipe_file(f"data/photos/{name}", _png(seed))
    fs.pipe_file("data/photos/.hidden.png", b"not an image")
    for source, out in ((tmp_path / "photos", "local"), ("s3://data/photos/", "remote")):
        code, _, err = _run(capsys, "encode", source, "--out", tmp_path / out, "--model", tiny, "--quiet")
        assert code == 0, err
    remote = _tokens(str(tmp_path / "remote"))
    assert sorted(remote) == ["a.png", "b.png", "sub/c.png"] and remote == _tokens(str(tmp_path / "local"))
    code, _, err = _run(capsys, "encode", "s3://data/photos/", tmp_path / "photos", "--out", tmp_path / "x", "--model",
                        tiny)  # fmt: skip
    assert code == 1 and "give local files and folders or URLs, not both" in err


def test_decode_reads_a_token_folder_in_s3_as_it_reads_a_local_one(tiny, s3, tmp_path, capsys):
    """open_tokens and ``vqgan-flax decode`` on ``s3://`` (parquet, two processes' parts; JSONL with
    its metadata record) give the local folder's keys, tokens and images."""
    from vqgan_flax.data.readers import open_tokens

    _, local = s3
    shards = [str(local / f"s-{i}.tar") for i in (0, 1)]
    code, _, err = _run(capsys, "encode", *shards, "--out", tmp_path / "local", "--model", tiny, "--quiet")
    assert code == 0, err
    for out in ("s3://data/decode-parquet", "s3://data/decode-jsonl"):
        for index in range(2):
            jsonl = ["--format", "jsonl"] if "jsonl" in out else []
            code, _, err = _run(capsys, "encode", *shards, "--out", out, "--model", tiny, "--quiet", "--process-index",
                                index, "--process-count", 2, *jsonl)  # fmt: skip
            assert code == 0, err
    expected = open_tokens(str(tmp_path / "local"))
    for out in ("s3://data/decode-parquet", "s3://data/decode-jsonl"):
        remote = open_tokens(out)
        assert remote.path == out and sorted(remote.keys) == sorted(expected.keys)
        assert remote.metadata["model"] == expected.metadata["model"] and remote.metadata["grid"]
        rows = {key: tokens.tolist() for key, tokens in remote.rows()}
        assert rows == {key: tokens.tolist() for key, tokens in expected.rows()}
    for name, tokens in (("local", tmp_path / "local"), ("remote", "s3://data/decode-parquet")):
        code, _, err = _run(capsys, "decode", tokens, "--out", tmp_path / f"images-{name}", "--quiet")
        assert code == 0, err
    written = sorted(p.relative_to(tmp_path / "images-local") for p in (tmp_path / "images-local").rglob("*.png"))
    assert len(written) == 6
    for path in written:
        assert (tmp_path / "images-local" / path).read_bytes() == (tmp_path / "images-remote" / path).read_bytes()
    with pytest.raises(FileNotFoundError, match=r"s3://data/nothing: no part-\*.parquet or part-\*.jsonl"):
        open_tokens("s3://data/nothing")


def test_a_missing_remote_shard_stops_the_run_and_stays_unfinished(tiny, s3, tmp_path, capsys):
    code, _, err = _run(capsys, "encode", "s3://data/shards/s-{3..4}.tar", "--out", tmp_path / "t", "--model", tiny,
                        "--quiet")  # fmt: skip
    assert code == 1 and "s3://data/shards/s-4.tar: cannot open the shard (FileNotFoundError" in err, err
    assert len(Folder(str(tmp_path / "t")).listdir(".vqgan_flax/done")) == 1  # s-3 finished, s-4 not


def test_pipe_shards_stream_a_commands_output(tiny, s3, tmp_path, capsys):
    _, local = s3
    shards = [f"pipe:cat {local / f's-{i}.tar'}" for i in range(2)]
    code, out, err = _run(capsys, "encode", *shards, "--out", tmp_path / "t", "--model", tiny, "--quiet")
    assert code == 0 and "wrote 6 x 8x8 tokens" in out, err
    assert sorted(_tokens(str(tmp_path / "t")))[:2] == ["s-0.tar/0000", "s-0.tar/0001"]
    with pytest.raises(OSError, match=r"pipe:cat /no/such.tar: exit status 1 \(cat: /no/such.tar"):
        list(sources.tar_items(["pipe:cat /no/such.tar"]))


def test_storage_names_and_folders(tmp_path):
    assert [is_remote(p) for p in ("s3://b/x", "pipe:cat x", "/a/b", "a://", "C:/x", "hf://datasets/a/b")] == [
        True, True, False, True, False, True,
    ]  # fmt: skip
    assert input_name("pipe:curl -s 'https://host/s-0001.tar?x=1'") == "s-0001.tar"
    assert input_name("https://host/data/s-0002.tar?sig=1") == "s-0002.tar" and input_name("/a/b.tar") == "b.tar"
    for root in (str(tmp_path / "f"), "memory://vqgan-flax-test/f"):
        store = Folder(root)
        assert store.listdir() == [] and not store.exists("a/b.json")
        store.write("a/b.json", lambda f: f.write(b"{}"))
        assert (
            store.listdir() == ["a"] and store.listdir("a") == ["b.json"] and store.read_bytes("a/b.json", 8) == b"{}"
        )
        with pytest.raises(ValueError, match=r"b.json: .*over the 1 bytes a record may have"):
            store.read_bytes("a/b.json", 1)
        store.remove_tree("a")
        assert store.listdir() == []
    with pytest.raises(ValueError, match=r"pipe:cat x: a pipe: command is an input, not a place to write to"):
        Folder("pipe:cat x")
    with open_input(__file__) as f:
        assert f.read(3) == b'"""'


def test_a_missing_file_system_package_names_its_extra(monkeypatch):
    from vqgan_flax.utils.extras import MissingExtra

    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(
        MissingExtra, match=r'reading and writing gs:// URLs needs gcsfs, .*pip install "vqgan-flax\[gcs\]"'
    ):
        Folder("gs://bucket/tokens")
