"""Tokenizing at scale (issue 33): processes split the inputs by whole shards and never open
another's, finish and resume shard by shard, take their index from a launcher's environment,
and `vqgan-flax verify` checks the folder they wrote together."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
from utils import random_png as _png
from utils import run_cli as _run

from vqgan_flax import FlaxVQGANModel
from vqgan_flax.data import sources
from vqgan_flax.data.distributed import merge_token_shards
from vqgan_flax.data.shards import key_owner, launcher_process, shard_share, shards_digest
from vqgan_flax.data.sources import InputShard, Item, hf_shards, tar_shards
from vqgan_flax.data.tokenize import tokenize_shards
from vqgan_flax.data.verify import verify_token_folder
from vqgan_flax.data.writers import ShardedTokenWriter

METADATA = {"model": "m", "grid": [8, 8], "image_size": 16, "pixel_range": [-1, 1], "n_embed": 32}


@pytest.fixture(scope="module")
def six_shards(tmp_path_factory):
    """Six webdataset shards of three samples each (image + caption)."""
    root = tmp_path_factory.mktemp("shards")
    for shard in range(6):
        with tarfile.open(root / f"s-{shard}.tar", "w") as archive:
            for sample in range(3):
                for name, data in ((f"{sample:04d}.png", _png(10 * shard + sample)), (f"{sample:04d}.txt", b"c")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
    return root


@pytest.fixture(scope="module")
def model(tiny):
    return FlaxVQGANModel.from_pretrained(tiny)


def _opened(monkeypatch):
    """The input shards opened from now on (by file name)."""
    opened = []
    original = sources.open_input
    monkeypatch.setattr(sources, "open_input", lambda path: opened.append(os.path.basename(path)) or original(path))
    return opened


def _rows(folder):
    import pandas as pd

    frame = pd.read_parquet(folder)
    return {key: np.asarray(tokens) for key, tokens in zip(frame["key"], frame["tokens"])}


def test_two_processes_over_six_shards_read_disjoint_shards_and_write_every_sample_once(
    tiny, six_shards, tmp_path, capsys, monkeypatch
):
    pattern = six_shards / "s-{0..5}.tar"
    opened = {}
    for index in range(2):
        opened[index] = _opened(monkeypatch)
        code, out, err = _run(capsys, "encode", pattern, "--out", tmp_path / "two", "--model", tiny, "--quiet",
                              "--process-index", index, "--process-count", 2, "--batch-size", 2)  # fmt: skip
        assert code == 0, err
        assert "wrote 9 x 8x8 tokens" in out
        monkeypatch.undo()
    assert opened == {0: ["s-0.tar", "s-2.tar", "s-4.tar"], 1: ["s-1.tar", "s-3.tar", "s-5.tar"]}
    code, out, err = _run(capsys, "encode", pattern, "--out", tmp_path / "one", "--model", tiny, "--quiet",
                          "--batch-size", 2)  # fmt: skip
    two, one = _rows(tmp_path / "two"), _rows(tmp_path / "one")
    assert len(two) == 18 and sorted(two) == sorted(one)  # every sample once (pandas reads every part)
    assert all(np.array_equal(two[key], one[key]) for key in one)
    # one part per input shard, named by its marker; the job marked complete
    assert sorted(n for n in os.listdir(tmp_path / "two") if n.startswith("part-")) == [
        f"part-{p:03d}-{n:05d}.parquet" for p in range(2) for n in range(3)
    ]
    assert (tmp_path / "two" / ".vqgan_flax" / "complete.json").is_file()
    code, out, _ = _run(capsys, "verify", tmp_path / "two")
    assert code == 0 and "2 of 2 processes finished, 6 of 6 input shards, 18 rows in 6 parts" in out, out
    assert out.splitlines()[0].endswith("complete")
    # merge_token_shards reads the CLI's folder: by key, whatever the process count
    keys, merged = merge_token_shards(tmp_path / "two", return_ids=True)
    assert keys.tolist() == sorted(one) and merged.shape == (18, 8, 8) and merged.dtype == np.int32
    np.testing.assert_array_equal(merged, np.stack([one[key].reshape(8, 8) for key in sorted(one)]))
    np.testing.assert_array_equal(merge_token_shards(tmp_path / "one"), merged)
    # a rerun opens nothing: every shard of its share is finished
    opened = _opened(monkeypatch)
    code, out, _ = _run(capsys, "encode", pattern, "--out", tmp_path / "two", "--model", tiny, "--quiet",
                        "--process-index", 1, "--process-count", 2)  # fmt: skip
    assert code == 0 and opened == [] and "(3 of 3 input shards finished by an earlier run)" in out
    # another process count on the same folder is refused, naming the one it was written with
    code, _, err = _run(capsys, "encode", pattern, "--out", tmp_path / "two", "--model", tiny, "--quiet",
                        "--process-index", 0, "--process-count", 3)  # fmt: skip
    assert code == 1 and "was written by 2 process(es); resume it with --process-count 2" in err


class _Killed(Exception):
    pass


def test_a_run_killed_inside_a_shard_resumes_it_and_skips_the_finished_ones(model, six_shards, tmp_path):
    shards = tar_shards([str(six_shards / f"s-{i}.tar") for i in range(3)])
    calls = []

    def encode(pixels):
        calls.append(len(pixels))
        if len(calls) == 6:  # shard 0 (3 batches of 1), then two rows of shard 1 (rows_per_shard 1)
            raise _Killed
        return np.asarray(model.encode(pixels).indices).reshape(len(pixels), 8, 8)

    writer = ShardedTokenWriter(str(tmp_path), "parquet", METADATA, rows_per_shard=1)
    with pytest.raises(_Killed):
        tokenize_shards(shards, encode, writer, 16, batch_size=1)
    writer.close()
    assert verify_token_folder(str(tmp_path)).problems == [
        "process 0 has not finished its share (no process-000.json)",
        "part-000-00003.parquet: rows of no finished input shard (a run stopped inside a shard; rerun it)",
        "part-000-00004.parquet: rows of no finished input shard (a run stopped inside a shard; rerun it)",
    ]
    opened = []
    counted = [InputShard(s.name, lambda s=s: opened.append(s.name) or s.items()) for s in shards]
    resumed = ShardedTokenWriter(str(tmp_path), "parquet", METADATA, rows_per_shard=1)
    assert resumed.done == {"s-1.tar/0000", "s-1.tar/0001"}  # only the unfinished shard's keys were read
    summary = tokenize_shards(counted, encode, resumed, 16, batch_size=1)
    resumed.close()
    assert opened == ["s-1.tar", "s-2.tar"] and (summary.encoded, summary.already_done) == (4, 2)
    assert (summary.shards, summary.shards_done_before) == (3, 1)
    report = verify_token_folder(str(tmp_path))
    assert report.ok and (report.rows, report.shards_finished, report.input_shards) == (9, 3, 3), report.problems
    marker = json.loads(next((tmp_path / ".vqgan_flax" / "done").glob("*.json")).read_text())
    assert set(marker) == {"shard", "process", "outputs", "rows", "errors"}


def test_verify_fails_on_a_folder_missing_one_shards_rows(tiny, six_shards, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "encode", six_shards / "s-{0..2}.tar", "--out", out, "--model", tiny, "--quiet")
    assert code == 0, err
    good = tmp_path / "good"
    shutil.copytree(out, good)
    (out / "part-000-00001.parquet").unlink()
    code, stdout, _ = _run(capsys, "verify", out)
    assert code == 1 and "input shard s-1.tar: its part part-000-00001.parquet is missing or unreadable" in stdout
    with pytest.raises(ValueError, match=r"1 problem\(s\); input shard s-1.tar: its part part-000-00001.parquet"):
        merge_token_shards(out)
    # a part copied in twice: its keys appear twice and it is named by no marker
    shutil.copy(good / "part-000-00000.parquet", good / "part-000-00009.parquet")
    code, stdout, _ = _run(capsys, "verify", good, "--json")
    report = json.loads(stdout)
    assert code == 1 and not report["ok"]
    assert "key s-0.tar/0000 is in both part-000-00000.parquet and part-000-00009.parquet" in report["problems"]
    code, _, err = _run(capsys, "verify", tmp_path / "nothing")
    assert code == 1 and "nothing: no such folder" in err
    (tmp_path / "empty").mkdir()
    code, stdout, _ = _run(capsys, "verify", tmp_path / "empty")
    assert code == 1 and "not a token folder written by vqgan-flax encode" in stdout


def test_shards_are_split_by_position_and_names_must_be_unique():
    shards = [InputShard(f"s{i}", lambda: iter(())) for i in range(7)]
    assert [s.name for s in shard_share(shards, 1, 3)] == ["s1", "s4"]
    assert [s.name for s in shard_share(shards, 0, 3)] == ["s0", "s3", "s6"]
    with pytest.raises(ValueError, match=r"input shards 0 and 2 are both named 's0'"):
        shard_share([shards[0], shards[1], shards[0]], 0, 1)
    with pytest.raises(ValueError, match=r"process index 3 is not in \[0, 3\)"):
        shard_share(shards, 3, 3)
    assert shards_digest(["a", "b"]) != shards_digest(["b", "a"]) != shards_digest(["ab"])
    assert key_owner("0.png", 3) == 1 and key_owner("x", 1) == 0


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, (0, 1, "")),
        ({"RANK": "3", "WORLD_SIZE": "8", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, (3, 8, "torchrun")),
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, (1, 2, "SLURM")),
        ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4"}, (0, 4, "Open MPI")),
        ({"TPU_WORKER_ID": "2", "TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3"}, (2, 4, "Cloud TPU")),
        ({"VQGAN_FLAX_PROCESS_INDEX": "1", "VQGAN_FLAX_PROCESS_COUNT": "2", "RANK": "0", "WORLD_SIZE": "1"},
         (1, 2, "vqgan-flax")),
    ],
)  # fmt: skip
def test_the_process_comes_from_the_launchers_environment(environ, expected):
    assert launcher_process(environ) == expected


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"RANK": "1"}, r"torchrun: RANK is set but WORLD_SIZE is not"),
        ({"SLURM_NTASKS": "2"}, r"SLURM: SLURM_NTASKS is set but SLURM_PROCID is not"),
        ({"RANK": "one", "WORLD_SIZE": "2"}, r"torchrun: RANK='one', WORLD_SIZE='2' are not numbers"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, r"torchrun: RANK=2 is not in \[0, WORLD_SIZE=2\)"),
    ],
)
def test_a_half_set_launcher_environment_is_refused(environ, message):
    with pytest.raises(ValueError, match=message):
        launcher_process(environ)


def test_the_cli_takes_its_share_from_the_environment(tiny, six_shards, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "3")
    opened = _opened(monkeypatch)
    code, out, err = _run(capsys, "encode", six_shards / "s-{0..5}.tar", "--out", tmp_path / "o", "--model", tiny,
                          "--quiet")  # fmt: skip
    assert code == 0 and opened == ["s-1.tar", "s-4.tar"] and "wrote 6 x 8x8 tokens" in out, err
    assert json.loads((tmp_path / "o" / ".vqgan_flax" / "metadata.json").read_text())["process_count"] == 3
    code, out, _ = _run(capsys, "verify", tmp_path / "o")
    assert code == 1 and "1 of 3 processes finished, 2 of 6 input shards" in out
    assert "process 0 has not finished its share (no process-000.json)" in out


def test_files_are_split_by_key_hash_and_verified(tiny, tmp_path, capsys):
    for i in range(8):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"{i}.png").write_bytes(_png(i))
    for index in range(2):
        code, _, err = _run(capsys, "encode", tmp_path / "in", "--out", tmp_path / "o", "--model", tiny, "--quiet",
                            "--process-index", index, "--process-count", 2)  # fmt: skip
        assert code == 0, err
    rows = _rows(tmp_path / "o")
    assert sorted(rows) == [f"{i}.png" for i in range(8)]
    for part in (tmp_path / "o").glob("part-*.parquet"):
        import pyarrow.parquet as pq

        process = int(part.name.split("-")[1])
        assert all(key_owner(k, 2) == process for k in pq.read_table(part).column("key").to_pylist())
    code, out, _ = _run(capsys, "verify", tmp_path / "o")
    assert code == 0 and "2 of 2 processes finished, 8 rows in 2 parts" in out, out


def test_parquet_datasets_are_shards_by_file_and_saved_datasets_by_row_range(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "pq" / "b").mkdir(parents=True)
    for name, seeds in (("a.parquet", [0, 1]), ("b/c.parquet", [2])):
        table = pa.table({"image": [{"bytes": _png(s), "path": None} for s in seeds], "text": [f"t{s}" for s in seeds]})
        pq.write_table(table, tmp_path / "pq" / name)
    shards = hf_shards(str(tmp_path / "pq"), caption_column="text")
    assert [s.name for s in shards] == ["a.parquet", "b/c.parquet"]
    items = [item for shard in shards for item in shard.items()]
    assert [(i.key, i.caption) for i in items] == [
        ("a.parquet/0", "t0"),
        ("a.parquet/1", "t1"),
        ("b/c.parquet/0", "t2"),
    ]
    assert np.asarray(items[2].load()).shape == (20, 24, 3)
    (missing,) = hf_shards(str(tmp_path / "pq" / "a.parquet"), image_column="img")
    with pytest.raises(ValueError, match=r"a.parquet: no column 'img'"):
        list(missing.items())
    features = datasets.Features({"image": datasets.Image()})
    saved = datasets.Dataset.from_dict(
        {"image": [{"bytes": _png(s), "path": None} for s in range(5)]}, features=features
    )
    saved.save_to_disk(str(tmp_path / "saved"))
    ranges = hf_shards(str(tmp_path / "saved"), rows_per_shard=2)
    assert [s.name for s in ranges] == ["train/rows-000000000", "train/rows-000000002", "train/rows-000000004"]
    assert [i.key for i in ranges[1].items()] == ["train/2", "train/3"]
    with pytest.raises(ValueError, match=r"rows per shard must be positive; got 0"):
        hf_shards(str(tmp_path / "saved"), rows_per_shard=0)


def test_tar_items_chain_the_tar_shards(six_shards):
    shards = tar_shards([str(six_shards / "s-{0..1}.tar")])
    assert [s.name for s in shards] == ["s-0.tar", "s-1.tar"]
    assert [i.key for i in sources.tar_items([str(six_shards / "s-{0..1}.tar")])] == [
        f"s-{s}.tar/{n:04d}" for s in range(2) for n in range(3)
    ]
    assert isinstance(next(iter(shards[0].items())), Item)
