"""Where the items of a dataset come from: files and folders, webdataset ``.tar`` shards, and
Hugging Face ``datasets`` on disk. Every source is a stream of [`Item`]s: a key that names the
item uniquely within the source, and a ``load`` that reads its image only when called, so a
dataset is never held in memory and an unreadable item fails alone.
"""

from __future__ import annotations

import functools
import glob
import gzip
import io
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from ..utils.extras import require
from .columns import MAX_KEPT_CHARS
from .image_io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, decode_rgb, find_images, open_rgb, to_rgb
from .storage import find_remote, input_name, is_remote, open_input

# A sample member larger than this is refused, not read: a crafted tar header can claim any size.
MAX_MEMBER_BYTES = 256 << 20


@dataclass(frozen=True)
class Item:
    """One image or video of a dataset. ``load()`` returns an RGB PIL image, or for a video
    (``video=True``) an iterator of RGB PIL frames, and raises for an unreadable one; ``caption``
    is the text that came with it, where the source has one; ``origin`` says where it was read
    from (a path, ``SHARD:MEMBER``, ``DATASET:ROW``); ``extra`` the values of the columns kept
    beside the tokens (``--keep-columns``)."""

    key: str
    load: Callable[[], Any]
    caption: Optional[str] = None
    origin: str = ""
    video: bool = False
    extra: Optional[Dict[str, Any]] = None


@dataclass(frozen=True)
class InputShard:
    """A part of a dataset that one process reads whole: ``name`` is unique in the job and stable
    across runs (it names the shard in completion markers); ``items()`` opens it and streams its
    items (nothing is opened before the call)."""

    name: str
    items: Callable[[], Iterator[Item]]


def _open_image(data: bytes, where: str = "image") -> Any:
    """Encoded image bytes → RGB PIL image, decoded now (a truncated file fails here), within the
    decode budget ([`decode_rgb`])."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return decode_rgb(image, where)


def file_items(paths: Sequence[str], media: str = "image", frame_stride: int = 1) -> Iterator[Item]:
    """Files and folders (recursively); keys as [`find_images`] gives them. ``media``: ``image``
    (image files), ``video`` (video files and GIFs, every ``frame_stride``-th frame) or ``auto``
    (both; a GIF is then an image). The files are listed (and missing inputs refused) at the
    call, before anything is read."""
    if media not in ("image", "video", "auto"):
        raise ValueError(f"media must be image, video or auto; got {media!r}")
    remote = [os.fspath(p) for p in paths if is_remote(os.fspath(p))]
    if remote:
        return _remote_files(remote, [os.fspath(p) for p in paths], media)
    suffixes = {"image": IMAGE_SUFFIXES, "video": VIDEO_SUFFIXES}.get(media, IMAGE_SUFFIXES + VIDEO_SUFFIXES)
    found = find_images(paths, suffixes)
    if media != "image" and any(_is_video(path, media) for path, _ in found):
        require("av")  # now, not as one skipped item per video

    def item(path: str, key: str) -> Item:
        if _is_video(path, media):
            return Item(key, lambda: video_frames(path, frame_stride), origin=path, video=True)
        return Item(key, lambda: open_rgb(path), origin=path)

    return (item(path, key) for path, key in found)


def _remote_files(remote: List[str], paths: List[str], media: str) -> Iterator[Item]:
    """Images in object stores (``s3://bucket/photos/``): keys relative to each URL given (its file
    name for a URL naming one image); listed at the call, each read whole (at most
    ``MAX_MEMBER_BYTES``) when loaded."""
    if len(remote) != len(paths):
        raise ValueError(f"give local files and folders or URLs, not both: {paths}")
    if media == "video":
        raise ValueError("--media video reads local video files; URLs are read as images")
    found = []
    for url in remote:
        if url.startswith("pipe:"):
            raise ValueError(f"{url}: a pipe: command streams a tar shard, not an image folder")
        urls = find_remote(url, IMAGE_SUFFIXES)
        if not urls:
            raise FileNotFoundError(f"{url}: no images there")
        base = url.rstrip("/") + "/"
        found += [(u, u[len(base) :] if u.startswith(base) else input_name(u)) for u in urls]
    return (Item(key, functools.partial(_remote_image, url), origin=url) for url, key in found)


def _remote_image(url: str) -> Any:
    with open_input(url) as f:
        data = f.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise ValueError(f"{url}: over {MAX_MEMBER_BYTES} bytes, not read")
    return _open_image(data, url)


def _is_video(path: str, media: str) -> bool:
    """Whether ``file_items`` reads ``path`` as a video (with ``media=auto``, a GIF is an image)."""
    return media == "video" or (media == "auto" and path.lower().endswith(VIDEO_SUFFIXES[:-1]))


def video_frames(path: str, stride: int = 1) -> Iterator[Any]:
    """Every ``stride``-th frame of a video file as an RGB PIL image, decoded one at a time
    (PyAV, whose wheels bundle ffmpeg). Frames larger than Pillow's pixel limit are refused."""
    require("av")
    import av
    from PIL import Image

    if stride < 1:
        raise ValueError(f"frame stride must be positive; got {stride}")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            stream = container.streams.video[0]
            limit = Image.MAX_IMAGE_PIXELS  # None: the user turned Pillow's limit off
            if limit is not None and stream.codec_context.width * stream.codec_context.height > limit:
                size = f"{stream.codec_context.width}x{stream.codec_context.height}"
                raise ValueError(f"{path}: {size} frames are over Pillow's pixel limit")
            for number, frame in enumerate(container.decode(stream)):
                if number % stride == 0:
                    yield frame.to_image()
    except av.FFmpegError as err:
        raise ValueError(f"{path}: unreadable video ({type(err).__name__}: {err})") from None


_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}|\{([^{}]*,[^{}]*)\}")


def expand_braces(pattern: str) -> List[str]:
    """webdataset's shard patterns: ``shard-{000..009}.tar`` (zero-padded ranges) and
    ``{train,val}-0.tar`` (alternatives), any number of each."""
    match = _BRACES.search(pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    if match.group(3) is not None:
        choices = match.group(3).split(",")
    else:
        first, last = match.group(1), match.group(2)
        if int(last) < int(first):
            raise ValueError(f"{pattern}: range {{{first}..{last}}} runs backwards")
        if int(last) - int(first) >= 1_000_000:
            raise ValueError(f"{pattern}: range {{{first}..{last}}} has more than a million shards")
        width = len(first) if first.startswith("0") else 0
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def _sample_key(name: str) -> tuple:
    """webdataset's split of a member name: ``dir/0001.jpg`` → (``dir/0001``, ``jpg``); the key
    ends at the first dot of the file name, so ``0001.seg.png`` belongs to sample ``0001``."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def tar_items(
    patterns: Sequence[str], image_extensions: Optional[Sequence[str]] = None, keep: Sequence[str] = ()
) -> Iterator[Item]:
    """Samples of webdataset ``.tar`` shards, read as a stream with :mod:`tarfile` (members of one
    sample are consecutive). An item's key is ``SHARD/SAMPLE_KEY`` (sample keys repeat across
    shards); its image is the first member with an image extension, its caption a ``.txt``
    member; ``keep`` names member extensions (``json``, ``cls``) whose text becomes the item's
    ``extra``. Links, devices and members over 256 MB are skipped, never followed or read.
    """
    shards = tar_shards(patterns, image_extensions, keep)
    return (item for shard in shards for item in shard.items())


def tar_shards(
    patterns: Sequence[str], image_extensions: Optional[Sequence[str]] = None, keep: Sequence[str] = ()
) -> List[InputShard]:
    """The shards of [`tar_items`] as [`InputShard`]s named by file name, in the order given
    (patterns expanded). Local paths, URLs (``s3://``, ``gs://``, ``https://``, ``hf://``: see
    [`data.storage`]) and ``pipe:CMD``; each is opened only when its items are iterated. Missing
    local shards and two shards of one file name (their keys would collide) are refused here; a
    remote shard that cannot be opened stops the run when it is reached, naming it (it is not
    marked finished, so a rerun tries it again)."""
    extensions = tuple(e.lstrip(".").lower() for e in (image_extensions or [s[1:] for s in IMAGE_SUFFIXES]))
    paths = [path for pattern in patterns for path in expand_braces(os.fspath(pattern))]
    for path in paths:
        if not is_remote(path) and not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such shard")
    names = [input_name(path) for path in paths]
    if len(set(names)) != len(paths):
        raise ValueError(f"shards with the same file name would give the same keys: {paths}")
    read = functools.partial(_tar_samples, extensions=extensions, keep=tuple(keep))
    return [InputShard(name, functools.partial(read, path)) for name, path in zip(names, paths)]


def _tar_samples(shard: str, extensions: Sequence[str], keep: Sequence[str] = ()) -> Iterator[Item]:
    name = input_name(shard)
    try:
        stream = open_input(shard)
    except ValueError as err:  # not a regular file: the shard's one unreadable item
        yield Item(f"{name}/<unreadable>", _raiser(err), origin=shard)
        return
    except OSError as err:  # missing, or the network: the run stops, the shard stays unfinished
        raise OSError(f"{shard}: cannot open the shard ({type(err).__name__}: {err})") from None
    with stream:
        try:
            archive = tarfile.open(fileobj=stream, mode="r|*")
        except tarfile.TarError as err:
            yield Item(f"{name}/<unreadable>", _raiser(ValueError(f"{shard}: not a tar file ({err})")), origin=shard)
            return
        with archive:
            for key, members in _samples(archive, shard, extensions, keep):
                yield _sample(f"{name}/{key}", members, extensions, f"{shard}:{key}", keep)


def _samples(
    archive: tarfile.TarFile, shard: str, extensions: Sequence[str], keep: Sequence[str] = ()
) -> Iterator[tuple]:
    """``(sample key, [(extension, bytes or the error)])`` per sample, members in archive order.
    Only what a sample is used for is read — its first image member, its first ``.txt`` and the
    first member of each kept extension — so a
    sample of a thousand members costs one image, whatever the shard's compression; the others
    are skipped unread (their extensions are kept, a few, for the error message). A shard cut
    short or corrupt ends with one ``<unreadable>`` sample: what came before stands."""
    key: Optional[str] = None
    members: List[tuple] = []
    try:
        for member in archive:
            if not member.isfile():
                continue
            sample, extension = _sample_key(member.name)
            if sample != key:
                if key is not None:
                    yield key, members
                key, members = sample, []
            have = {ext for ext, data in members if data is not None}
            wanted = (extension in extensions and not have & set(extensions)) or (
                extension in ("txt", *keep) and extension not in have
            )
            if not wanted:
                if len(members) < 16:
                    members.append((extension, None))
                continue
            limit = MAX_MEMBER_BYTES if extension in extensions or extension == "txt" else MAX_KEPT_CHARS
            if member.size > limit:
                members.append(
                    (extension, ValueError(f"{shard}: member {member.name} is {member.size} bytes, over the limit"))
                )
                continue
            handle = archive.extractfile(member)
            members.append((extension, handle.read() if handle else b""))
    except gzip.BadGzipFile as err:  # an OSError, but the archive's fault
        members, key = [("", ValueError(f"{shard}: corrupt or cut short (BadGzipFile: {err})"))], "<unreadable>"
    except OSError as err:  # reading failed (a disk, the network), not the archive: stop, naming it
        raise OSError(f"{shard}: reading failed ({type(err).__name__}: {err})") from None
    except (tarfile.TarError, EOFError) as err:
        if key is not None and members:  # what was read of the sample the error cut
            yield key, members
        key, members = (
            "<unreadable>",
            [("", ValueError(f"{shard}: corrupt or cut short ({type(err).__name__}: {err})"))],
        )
    if key is not None:
        yield key, members


def _raiser(error: Exception) -> Callable[[], Any]:
    def load() -> Any:
        raise error

    return load


def _sample(key: str, members: List[tuple], extensions: Sequence[str], origin: str, keep: Sequence[str] = ()) -> Item:
    text = next((data for ext, data in members if ext == "txt" and isinstance(data, bytes)), None)
    caption = text.decode("utf-8", "replace") if text is not None else None
    extra: Dict[str, Any] = {}
    for wanted in keep:
        data = next((data for ext, data in members if ext == wanted and data is not None), None)
        try:
            if isinstance(data, Exception):
                raise data
            extra[wanted] = data.decode("utf-8") if data is not None else None
        except (ValueError, UnicodeDecodeError) as err:
            why = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else str(err)
            return Item(key, _raiser(ValueError(f"{origin}: member .{wanted}: {why}")), caption, origin)
    extra_or_none = extra or None
    for extension, data in members:
        if extension in extensions and data is not None:
            if isinstance(data, Exception):
                return Item(key, _raiser(data), caption, origin)
            return Item(key, functools.partial(_open_image, data, origin), caption, origin, extra=extra_or_none)
    error = next((data for ext, data in members if ext == "" and isinstance(data, Exception)), None)
    if error is not None:
        return Item(key, _raiser(error), caption, origin)
    found = sorted({ext for ext, _ in members})
    return Item(key, _raiser(ValueError(f"sample {key} has no image member (found {found})")), caption, origin)


def is_saved_dataset(path: str) -> bool:
    """A folder written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    markers = ("dataset_info.json", "dataset_dict.json", "state.json")
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, m)) for m in markers)


def hf_items(
    path: str, image_column: str = "image", split: Optional[str] = None, caption_column: Optional[str] = None,
    keep: Sequence[str] = (),
) -> Iterator[Item]:  # fmt: skip
    """Rows of a Hugging Face dataset: a folder written by ``save_to_disk``, or parquet files (one
    file, or a folder of them). Keys are ``SPLIT/ROW`` for a saved dataset and ``FILE/ROW`` for
    parquet (``FILE`` relative to the folder given). Rows are read as they are iterated."""
    shards = hf_shards(path, image_column, split, caption_column, keep=keep)
    return (item for shard in shards for item in shard.items())


def hf_shards(
    path: str,
    image_column: str = "image",
    split: Optional[str] = None,
    caption_column: Optional[str] = None,
    rows_per_shard: int = 10_000,
    keep: Sequence[str] = (),
) -> List[InputShard]:
    """The shards of [`hf_items`]: each parquet file is one (read with pyarrow a few hundred rows
    at a time, with only the columns used: no ``datasets`` cache is built, and no process reads
    another's files); a saved dataset is cut into ranges of ``rows_per_shard`` rows
    (``SPLIT/rows-START``), memory-mapped by ``datasets`` as ``load_from_disk`` does. A saved
    dataset's split and columns are checked at the call, a parquet file's when it is opened.
    ``keep`` names columns whose values become each item's ``extra``."""
    if rows_per_shard < 1:
        raise ValueError(f"rows per shard must be positive; got {rows_per_shard}")
    files = _parquet_files(path)
    if files is not None:
        read = functools.partial(_parquet_rows, image_column=image_column, caption_column=caption_column, keep=keep)
        return [InputShard(name, functools.partial(read, file, name)) for file, name in files]
    loaded, split = _saved_split(path, split, (image_column, caption_column, *keep))
    loaded = _undecoded(loaded, image_column)
    rows = functools.partial(_hf_rows, loaded, split, image_column, caption_column, path, keep=keep)
    bounds = [(a, min(a + rows_per_shard, len(loaded))) for a in range(0, len(loaded), rows_per_shard)]
    return [InputShard(f"{split}/rows-{a:09d}", functools.partial(rows, a, b)) for a, b in bounds]


def _parquet_files(path: str) -> Optional[List[tuple]]:
    """``(file, name)`` of a parquet dataset's files, or ``None`` for a saved dataset folder."""
    if is_remote(path):
        found = find_remote(path, ".parquet")
        if not found:
            raise FileNotFoundError(f"{path}: no .parquet files there")
        base = path.rstrip("/") + "/"
        return [(url, url[len(base) :] if url.startswith(base) else input_name(url)) for url in found]
    if is_saved_dataset(path):
        return None
    if path.endswith(".parquet") and os.path.isfile(path):
        return [(path, os.path.basename(path))]
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
        if not found:
            raise FileNotFoundError(f"{path}: no .parquet files in the folder")
        return [(file, os.path.relpath(file, path).replace(os.sep, "/")) for file in found]
    raise FileNotFoundError(f"{path}: not a saved dataset folder or parquet file(s)")


def hf_kept_kinds(path: str, keep: Sequence[str], split: Optional[str] = None) -> Dict[str, str]:
    """The kind ([`data.columns`]) of each kept column of a Hugging Face dataset, from its declared
    schema: a saved dataset's features, or the first parquet file's footer (every process reads
    the same one, so all agree)."""
    import pyarrow.parquet as pq

    from .columns import arrow_kind

    files = _parquet_files(path)
    if files is None:
        loaded, _ = _saved_split(path, split, tuple(keep))
        schema, where = loaded.features.arrow_schema, path
    else:
        first = files[0][0]
        with open_input(first) as f:
            schema, where = pq.read_schema(f), first
    kinds = {}
    for name in keep:
        if name not in schema.names:
            raise ValueError(f"{where}: no column {name!r} to keep (columns: {schema.names})")
        kinds[name] = arrow_kind(name, schema.field(name).type, where)
    return kinds


def _saved_split(path: str, split: Optional[str], columns: Sequence[Optional[str]]) -> tuple:
    require("datasets")
    import datasets

    loaded = datasets.load_from_disk(path)
    if isinstance(loaded, datasets.DatasetDict):
        if split is None and len(loaded) != 1:
            raise ValueError(f"{path}: choose a split with --split ({sorted(loaded)})")
        split = split or next(iter(loaded))
        if split not in loaded:
            raise ValueError(f"{path}: no split {split!r} ({sorted(loaded)})")
        loaded = loaded[split]
    for column in filter(None, columns):
        if column not in loaded.column_names:
            raise ValueError(f"{path}: no column {column!r} (columns: {loaded.column_names})")
    return loaded, split or "train"


def _undecoded(loaded: Any, image_column: str) -> Any:
    """Undecoded images: bytes or paths, decoded one at a time by ``Item.load``."""
    import datasets

    if isinstance(loaded.features[image_column], datasets.Image):
        loaded = loaded.cast_column(image_column, datasets.Image(decode=False))
    return loaded


def _hf_rows(
    loaded: Any, split: str, image_column: str, caption_column: Optional[str], path: str, start: int, stop: int,
    keep: Sequence[str] = (),
) -> Iterator[Item]:  # fmt: skip
    for offset, example in enumerate(loaded.select(range(start, stop))):
        row = start + offset
        caption = example[caption_column] if caption_column else None
        extra = {name: example[name] for name in keep} or None
        load = functools.partial(_hf_image, example[image_column])
        yield Item(f"{split}/{row}", load, caption, f"{path}:{split}/{row}", extra=extra)


def _parquet_rows(
    file: str, name: str, image_column: str, caption_column: Optional[str], keep: Sequence[str] = ()
) -> Iterator[Item]:
    """The rows of one parquet file of a Hugging Face dataset, streamed by record batch."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(open_input(file) if is_remote(file) else file)
    except OSError as err:  # missing, or the network: the run stops, the shard stays unfinished
        raise OSError(f"{file}: cannot open the shard ({type(err).__name__}: {err})") from None
    except Exception as err:
        raise ValueError(f"{file}: not a parquet file ({type(err).__name__}: {err})") from None
    names = table.schema_arrow.names
    columns = list(dict.fromkeys(c for c in (image_column, caption_column, *keep) if c))
    for column in columns:
        if column not in names:
            raise ValueError(f"{file}: no column {column!r} (columns: {names})")
    row = 0
    for batch in table.iter_batches(batch_size=256, columns=columns):
        images = batch.column(image_column).to_pylist()
        captions = batch.column(caption_column).to_pylist() if caption_column else [None] * len(images)
        kept = [batch.column(k).to_pylist() for k in keep]
        for i, (image, caption) in enumerate(zip(images, captions)):
            extra = {k: values[i] for k, values in zip(keep, kept)} or None
            yield Item(f"{name}/{row}", functools.partial(_hf_image, image), caption, f"{file}:{row}", extra=extra)
            row += 1


def _hf_image(value: Any) -> Any:
    return image_from_value(value)


def image_from_value(value: Any, where: str = "image") -> Any:
    """An RGB PIL image from what a dataset's image column holds: encoded bytes, Hugging Face's
    ``{"bytes", "path"}``, a local path, a uint8 array (H, W) or (H, W, 1 | 3 | 4), or a PIL image.
    Decoding is bounded as for files ([`decode_rgb`]); anything else is refused naming its type."""
    from PIL import Image

    if isinstance(value, dict) and value.get("bytes"):
        return _open_image(value["bytes"], where)
    if isinstance(value, dict) and value.get("path"):
        return open_rgb(value["path"])
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _open_image(bytes(value), where)
    if isinstance(value, str):
        return open_rgb(value)
    if hasattr(value, "convert"):  # already a PIL image
        return to_rgb(value)
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{where}: cannot read an image from a {type(value).__name__}")
    array = value[..., 0] if value.ndim == 3 and value.shape[2] == 1 else value
    if array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        return to_rgb(Image.fromarray(array))
    raise ValueError(f"{where}: an array of {value.dtype} {value.shape}; expected uint8 (H, W) or (H, W, 1|3|4)")
