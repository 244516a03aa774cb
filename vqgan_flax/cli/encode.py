"""``vqgan-flax encode``: images, videos, webdataset shards or a Hugging Face dataset → tokens
(npz, parquet shards or LWM JSONL); see [`data.tokenize`]."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Optional, Union

from ..data.shards import LAUNCHER_VARIABLES
from ..data.writers import FORMATS, INFO_DIR, remove_shards
from .common import (
    COUNT,
    POSITIVE_INT,
    TOKEN_FILE_VERSION,
    Runner,
    add_model_options,
    check_output_file,
    check_output_folder,
    image_processor,
    load_model,
    model_name,
    prepare_output_folder,
    progress_bar,
)


def _source_items(args: argparse.Namespace):
    """``(source, shards or None, items or None)`` for ``encode``'s inputs, by ``--source``
    (``auto``: ``.tar`` inputs are webdataset shards, a saved dataset folder or ``.parquet`` file
    is a Hugging Face dataset, anything else image files and folders). Tar shards and datasets
    come as input shards (split between processes whole), files as items. Missing inputs are
    refused here, before the model loads."""
    from ..data.sources import file_items, hf_kept_kinds, hf_shards, tar_shards

    source = args.source
    if source == "auto":
        if all(re.search(r"\.tar(\.gz)?$", path) for path in args.inputs):
            source = "tar"
        elif len(args.inputs) == 1 and _looks_like_dataset(args.inputs[0]):
            source = "hf"
        else:
            source = "files"
    keep = args.keep_columns or []
    if source == "tar":
        if args.media == "video":
            raise ValueError("--media video reads video files; tar shards are read as images")
        args.kept_kinds = dict.fromkeys(keep, "string")  # members are text
        return source, tar_shards(args.inputs, keep=keep), None
    if source == "hf":
        if len(args.inputs) != 1:
            raise ValueError(f"--source hf takes one dataset; got {len(args.inputs)} inputs")
        if args.media == "video":
            raise ValueError("--media video reads video files; a Hugging Face dataset is read as images")
        args.kept_kinds = hf_kept_kinds(args.inputs[0], keep, args.split) if keep else {}
        shards = hf_shards(args.inputs[0], args.image_column, args.split, args.caption_column, args.shard_size, keep)
        return source, shards, None
    if keep:
        raise ValueError("--keep-columns: image files have no columns (it reads tar members and dataset columns)")
    args.kept_kinds = {}
    return source, None, file_items(args.inputs, args.media, args.frame_stride)


def _processes(args: argparse.Namespace) -> None:
    """``--process-index`` / ``--process-count`` where given, else from the launcher's environment
    ([`data.shards.launcher_process`]); both or neither."""
    from ..data.shards import launcher_process

    if (args.process_index is None) != (args.process_count is None):
        given = "--process-index" if args.process_count is None else "--process-count"
        raise ValueError(f"{given} needs {'--process-count' if given == '--process-index' else '--process-index'} too")
    if args.process_index is None:
        args.process_index, args.process_count, args.launcher = launcher_process()
    else:
        args.launcher = ""


def _looks_like_dataset(path: str) -> bool:
    from ..data.sources import is_saved_dataset

    return path.endswith(".parquet") or is_saved_dataset(path)


def output_format(out: str, given: Optional[str]) -> str:
    """The token format for ``--out``: ``--format`` where given, else read from ``--out`` (``-`` or
    ``*.npz``: npz; ``*.parquet`` / ``*.jsonl``: a folder of those shards; a folder, a name ending in
    ``/`` or without an extension: parquet). A name that contradicts ``--format`` is refused."""
    is_folder = out.endswith(("/", os.sep)) or os.path.isdir(out)
    extension = os.path.splitext(out.rstrip("/" + os.sep))[1].lstrip(".").lower()
    if given is None:
        if out == "-" or (extension == "npz" and not is_folder):
            return "npz"
        if extension in FORMATS:
            return extension
        if is_folder or not extension:
            return "parquet"
        raise ValueError(f"--out {out}: cannot tell the format from .{extension}; give --format npz|parquet|jsonl")
    if extension in FORMATS and extension != given:
        raise ValueError(f"--out {out} looks like {extension}, but --format is {given}; give --format {extension}")
    if given == "npz" and is_folder:
        raise ValueError(f"--out {out}: is a folder, and npz output is one file; give a .npz name or --format parquet")
    if given != "npz" and out == "-":
        raise ValueError(f"--out -: {given} output is a folder of shards; give a folder")
    return given


def _check_format(args: argparse.Namespace) -> None:
    """The output format and folder or file, checked before any work (nothing is created yet)."""
    _processes(args)
    if not 0 <= args.process_index < args.process_count:
        raise ValueError(f"--process-index {args.process_index} is not in [0, --process-count {args.process_count})")
    args.format = output_format(args.out, args.format)
    if args.process_count > 1 and args.format == "npz":
        raise ValueError("--process-count > 1 needs a sharded --format (parquet or jsonl): each process writes its own")
    if args.keep_columns and args.format == "npz":
        raise ValueError("--keep-columns needs a sharded --format (parquet or jsonl): an npz file has no columns")
    if args.keep_columns:
        from ..data.columns import check_names

        check_names(args.keep_columns)
    from ..data.storage import is_remote

    if args.format == "npz":
        if is_remote(args.out):
            raise ValueError(
                f"--out {args.out}: npz output is one local file; give a folder for parquet or jsonl shards"
            )
        if args.out != "-":
            check_output_file(args.out)
    else:
        if not is_remote(args.out):
            check_output_folder(args.out)
        from ..data.writers import check_token_folder

        try:
            check_token_folder(args.out)
        except ValueError as err:
            raise ValueError(f"--out {err}") from None


def cmd_encode(args: argparse.Namespace) -> None:
    from .. import __version__
    from ..data.storage import is_remote
    from ..data.tokenize import FrameSampling, errors_jsonl, summary_lines, tokenize_items, tokenize_shards
    from ..data.writers import NpzTokenWriter, ShardedTokenWriter
    from ..hub.identity import token_settings

    if args.engine == "ray":
        from .engine import run_on_ray

        output_format(args.out, args.format)  # refused here, not in every task
        run_on_ray(args, args.encode_parser)
        print(f"--engine ray: {args.out} written; check it with vqgan-flax verify {args.out}")
        return
    _check_format(args)
    source, shards, items = _source_items(args)
    model = load_model(args)
    processor = image_processor(args, model)
    height, width = processor.output_size
    grid = model.config.latent_shape(height, width)
    remote = is_remote(args.out)
    if args.format != "npz" and not remote:  # created only once the inputs and the model are accepted
        prepare_output_folder(args.out)
        if args.overwrite:
            remove_shards(args.out)
    runner = Runner(model, args.replicate, args.batch_size, processor)
    metadata = {
        "token_file_version": TOKEN_FILE_VERSION,
        "vqgan_flax_version": __version__,
        **token_settings(model, model_name(args), processor, grid),
        "source": source,
    }
    writer: Union[NpzTokenWriter, ShardedTokenWriter]
    if args.format == "npz":
        writer = NpzTokenWriter(args.out, metadata)
    else:
        writer = ShardedTokenWriter(
            args.out,
            args.format,
            metadata,
            args.shard_size,
            process=args.process_index,
            process_count=args.process_count,
            kept_columns=args.kept_kinds,
        )
    index, count, total = args.process_index, args.process_count, None
    if items is not None:  # files: a known number, so that the progress bar has a total
        from ..data.shards import key_owner

        items = [item for item in items if count == 1 or key_owner(item.key, count) == index]
        total = len(items)
    sampling = FrameSampling(args.frames, args.frame_stride, args.max_frames)
    lookahead = None if args.media == "image" else args.workers + 1
    options = dict(strict=args.strict, workers=args.workers, sampling=sampling, lookahead=lookahead)
    encode = lambda pixels: runner.encode(pixels, grid)  # noqa: E731
    with progress_bar(total, "encode", not args.quiet) as bar:
        if items is not None:
            summary = tokenize_items(items, encode, writer, processor, args.batch_size, progress=bar.update, **options)
        else:
            summary = tokenize_shards(shards, encode, writer, processor, args.batch_size, process_index=index,
                                      process_count=count, progress=bar.update, **options)  # fmt: skip
    where = ""
    if isinstance(writer, ShardedTokenWriter):
        errors_name = f"{INFO_DIR}/errors-{writer.process:03d}.jsonl"
        if summary.errors:
            writer.store.write(errors_name, lambda f: f.write(errors_jsonl(summary)))
            where = f" (all in {writer.store.path(errors_name)})"
        elif writer.store.exists(errors_name):
            writer.store.remove(errors_name)  # an earlier run's failures: retried, and read this time
    if not summary.encoded and not summary.already_done and summary.errors:
        key, message = summary.errors[0]
        count = len(summary.errors)
        raise ValueError(f"none of the {count} item(s) could be read{where}; the first: {key}: {message}")
    writer.close()
    for line in summary_lines(summary, where):
        print(line, file=sys.stderr)
    done = f" ({summary.already_done} already there from an earlier run)" if summary.already_done else ""
    if summary.shards_done_before:
        done += f" ({summary.shards_done_before} of {summary.shards} input shards finished by an earlier run)"
    report = f"wrote {summary.encoded} x {grid[0]}x{grid[1]} tokens to {args.out}{done}"
    print(report, file=sys.stderr if args.out == "-" else sys.stdout)


def add_arguments(p: argparse.ArgumentParser) -> None:
    inputs = ("image or video files, folders, .tar shards (local, s3://, gs://, https://, hf://, pipe:CMD; "
              "{000..099} patterns), or a dataset (a folder or URL of parquet files)")  # fmt: skip
    p.add_argument("inputs", nargs="+", help=inputs)
    out = "a .npz file (-: standard output), or a folder of shards (local, or s3://, gs://, ... through fsspec)"
    p.add_argument("--out", required=True, help=out)
    p.add_argument("--size", type=POSITIVE_INT, help="resize (shorter side) and center-crop to this size")
    add_model_options(p)
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="npz: one file (--out -: standard output); parquet, jsonl (LWM): a folder of shards "
        "(default: from --out: a .npz name or - is npz, a folder, a name ending in / or without extension parquet)",
    )
    p.add_argument(
        "--source",
        choices=("auto", "files", "tar", "hf"),
        default="auto",
        help="files/folders, webdataset .tar shards, or a Hugging Face dataset; auto: guessed from the inputs",
    )
    p.add_argument("--image-column", default="image", help="the image column of a Hugging Face dataset")
    p.add_argument("--caption-column", help="a text column to keep beside the tokens (default: none)")
    p.add_argument("--split", help="the split of a Hugging Face dataset (default: its only one)")
    p.add_argument("--keep-columns", nargs="+", metavar="NAME",
                   help="carry these into every row: dataset columns (text, integer, float, boolean; typed as the "
                   "dataset declares them) or tar member extensions (json, cls, url: as text)")  # fmt: skip
    p.add_argument("--shard-size", type=POSITIVE_INT, default=10_000, help="rows per parquet/jsonl shard")
    p.add_argument("--workers", type=POSITIVE_INT, default=4, help="threads decoding images")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable item (default: skip it)")
    p.add_argument(
        "--media",
        choices=("image", "video", "auto"),
        default="image",
        help="files to read: images; videos (mp4, webm, mkv, mov, avi, gif; needs PyAV); auto: both",
    )
    p.add_argument("--frames", type=POSITIVE_INT, help="videos: this many evenly spaced frames (default: all)")
    p.add_argument("--frame-stride", type=POSITIVE_INT, default=1, help="videos: every n-th decoded frame")
    p.add_argument(
        "--max-frames",
        type=POSITIVE_INT,
        default=1024,
        help="videos: more frames than this (after the stride) is an error for that video",
    )
    p.add_argument(
        "--process-index",
        type=COUNT,
        help="this process's number among --process-count sharing the inputs: tar shards and dataset files or "
        "row ranges are split whole (shard j to process j mod count), files by a hash of their key (default: from "
        + ", ".join(f"{i}/{c}" for i, c, _ in LAUNCHER_VARIABLES)
        + " where a launcher sets them, else 0 of 1)",
    )
    p.add_argument("--process-count", type=POSITIVE_INT, help="processes sharing the inputs (see --process-index)")
    p.add_argument("--overwrite", action="store_true", help="delete the shards already in --out and start over")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: run the --process-count processes as Ray tasks (retried on failure; pip install "
                   '"vqgan-flax[ray]"), writing what the local engine writes')  # fmt: skip
    p.add_argument("--ray-address", help="--engine ray: the cluster to join (default: start a local one)")
    p.add_argument("--ray-cpus", type=float, help="--engine ray: CPUs per task (default: the cluster's CPUs shared by "
                   "the tasks, at most a node's; Ray runs a task's OpenMP on as many threads)")  # fmt: skip
    p.add_argument("--ray-gpus", type=float, default=0, help="--engine ray: GPUs per task")
    p.add_argument("--ray-retries", type=COUNT, default=2, help="--engine ray: retries of a failed task")
    p.set_defaults(func=cmd_encode, encode_parser=p)


def cmd_verify(args: argparse.Namespace) -> int:
    """Print [`data.verify.verify_token_folder`]'s report; 1 where it found problems (or, with
    ``--strict``, unreadable items)."""
    import json

    from ..data.storage import is_remote
    from ..data.verify import verify_token_folder

    if not is_remote(args.folder) and not os.path.isdir(args.folder):
        raise ValueError(f"{args.folder}: no such folder")
    report = verify_token_folder(args.folder)
    failed = not report.ok or (args.strict and report.unreadable_items > 0)
    if args.json:
        fields = {k: v for k, v in vars(report).items() if k != "settings"}
        print(json.dumps({**fields, "ok": not failed}, indent=1))
    else:
        print("\n".join(report.lines()))
    return 1 if failed else 0


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a folder of parquet/jsonl token shards written by encode")
    p.add_argument("--strict", action="store_true", help="items that could not be read fail the check too")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_verify)
