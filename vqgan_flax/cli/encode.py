"""``vqgan-flax encode``: images, videos, webdataset shards or a Hugging Face dataset → tokens
(npz, parquet shards or LWM JSONL); see [`data.tokenize`]."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Optional, Union

from ..data.writers import FORMATS, INFO_DIR, remove_shards
from ..utils.files import atomic_write
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
    """The items of ``encode``'s inputs, by ``--source`` (``auto``: ``.tar`` inputs are webdataset
    shards, a saved dataset folder or ``.parquet`` file is a Hugging Face dataset, anything else
    image files and folders). Missing inputs are refused here, before the model loads."""
    from ..data.sources import file_items, hf_items, tar_items

    source = args.source
    if source == "auto":
        if all(re.search(r"\.tar(\.gz)?$", path) for path in args.inputs):
            source = "tar"
        elif len(args.inputs) == 1 and _looks_like_dataset(args.inputs[0]):
            source = "hf"
        else:
            source = "files"
    if source == "tar":
        if args.media == "video":
            raise ValueError("--media video reads video files; tar shards are read as images")
        return source, tar_items(args.inputs)
    if source == "hf":
        if len(args.inputs) != 1:
            raise ValueError(f"--source hf takes one dataset; got {len(args.inputs)} inputs")
        if args.media == "video":
            raise ValueError("--media video reads video files; a Hugging Face dataset is read as images")
        return source, hf_items(args.inputs[0], args.image_column, args.split, args.caption_column)
    return source, file_items(args.inputs, args.media, args.frame_stride)


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
    if not 0 <= args.process_index < args.process_count:
        raise ValueError(f"--process-index {args.process_index} is not in [0, --process-count {args.process_count})")
    args.format = output_format(args.out, args.format)
    if args.process_count > 1 and args.format == "npz":
        raise ValueError("--process-count > 1 needs a sharded --format (parquet or jsonl): each process writes its own")
    if args.format == "npz":
        if args.out != "-":
            check_output_file(args.out)
    else:
        check_output_folder(args.out)
        from ..data.writers import check_token_folder

        try:
            check_token_folder(args.out)
        except ValueError as err:
            raise ValueError(f"--out {err}") from None


def cmd_encode(args: argparse.Namespace) -> None:
    from .. import __version__
    from ..data.tokenize import FrameSampling, errors_jsonl, summary_lines, tokenize_items
    from ..data.writers import NpzTokenWriter, ShardedTokenWriter
    from ..hub.identity import token_settings

    _check_format(args)
    source, items = _source_items(args)
    model = load_model(args)
    processor = image_processor(args, model)
    height, width = processor.output_size
    grid = model.config.latent_shape(height, width)
    if args.format != "npz":  # created only once the inputs and the model are accepted
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
        writer = ShardedTokenWriter(args.out, args.format, metadata, args.shard_size, process=args.process_index)
    index, count, total = args.process_index, args.process_count, None
    if source == "files":  # a known number: partition here, so that the progress bar has a total
        items = list(items)[index::count]
        index, count, total = 0, 1, len(items)
    with progress_bar(total, "encode", not args.quiet) as bar:
        summary = tokenize_items(
            items, lambda pixels: runner.encode(pixels, grid), writer, processor, args.batch_size, strict=args.strict,
            workers=args.workers, process_index=index, process_count=count, progress=bar.update,
            sampling=FrameSampling(args.frames, args.frame_stride, args.max_frames),
            lookahead=None if args.media == "image" else args.workers + 1,
        )  # fmt: skip
    where = ""
    if isinstance(writer, ShardedTokenWriter):
        errors_file = os.path.join(args.out, INFO_DIR, f"errors-{writer.process:03d}.jsonl")
        if summary.errors:
            atomic_write(errors_file, lambda f: f.write(errors_jsonl(summary)))
            where = f" (all in {errors_file})"
        elif os.path.exists(errors_file):
            os.unlink(errors_file)  # an earlier run's failures: retried, and read this time
    if not summary.encoded and not summary.already_done and summary.errors:
        key, message = summary.errors[0]
        count = len(summary.errors)
        raise ValueError(f"none of the {count} item(s) could be read{where}; the first: {key}: {message}")
    writer.close()
    for line in summary_lines(summary, where):
        print(line, file=sys.stderr)
    done = f" ({summary.already_done} already there from an earlier run)" if summary.already_done else ""
    report = f"wrote {summary.encoded} x {grid[0]}x{grid[1]} tokens to {args.out}{done}"
    print(report, file=sys.stderr if args.out == "-" else sys.stdout)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image or video files, folders, .tar shards, or a dataset")
    p.add_argument("--out", required=True, help="a .npz file (-: standard output), or a folder of shards")
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
    p.add_argument("--process-index", type=COUNT, default=0, help="this process's number (many hosts)")
    p.add_argument("--process-count", type=POSITIVE_INT, default=1, help="processes sharing the inputs")
    p.add_argument("--overwrite", action="store_true", help="delete the shards already in --out and start over")
    p.set_defaults(func=cmd_encode)
