"""Tokenizing a dataset: a stream of [`Item`]s in, token rows out, in bounded memory.

Items are loaded by a few threads ahead of the model (Pillow decodes outside the GIL), batched,
encoded and handed to a writer as they come. An item that cannot be read is skipped and
reported (``errors``), never fatal unless ``strict``; items the writer already holds (a resumed
run) are skipped before they are read. Several processes share a dataset without talking to each
other ([`data.shards`]): ``tokenize_shards`` gives each process whole input shards (a finished
one is skipped unopened, and marked finished once its rows are written), ``tokenize_items``
splits a plain stream of items by a hash of their keys.
"""

from __future__ import annotations

import collections
import concurrent.futures
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from .sources import InputShard, Item


@dataclass
class TokenizeSummary:
    """What a run did: ``encoded`` items written now, ``already_done`` skipped because an earlier
    run wrote them, and ``errors`` as ``(key, message)`` for the items that could not be read;
    with input shards, ``shards`` in this process's share and ``shards_done_before`` of them
    skipped unopened (an earlier run finished them; their items are not counted above)."""

    encoded: int = 0
    already_done: int = 0
    errors: List[Tuple[str, str]] = field(default_factory=list)
    shards: int = 0
    shards_done_before: int = 0


@dataclass(frozen=True)
class FrameSampling:
    """Which frames of a video are encoded: every ``stride``-th decoded frame (the source applies
    it), at most ``max_frames`` of them (a longer video is an error for that item: memory is
    bounded), then ``frames`` evenly spaced ones where given (all where the video has fewer)."""

    frames: Optional[int] = None
    stride: int = 1
    max_frames: int = 1024


def _pixels(item: Item, processor: Any, sampling: FrameSampling) -> np.ndarray:
    """uint8 (size, size, 3) for an image, (frames, size, size, 3) for a video: each frame is
    cropped as it is decoded, so a long high-resolution video never sits in memory whole."""
    if not item.video:
        return np.asarray(processor.resize_crop(item.load()), np.uint8)
    kept: List[np.ndarray] = []
    for frame in item.load():
        if len(kept) == sampling.max_frames:
            raise ValueError(
                f"more than {sampling.max_frames} frames at stride {sampling.stride}; "
                "sample fewer (frame stride) or raise the maximum"
            )
        kept.append(np.asarray(processor.resize_crop(frame), np.uint8))
    if not kept:
        raise ValueError("the video has no frames")
    if sampling.frames and len(kept) > sampling.frames:
        kept = [kept[i] for i in np.linspace(0, len(kept) - 1, sampling.frames).round().astype(int)]
    return np.stack(kept)


def _loaded(
    items: Iterable[Any], processor: Any, workers: int, lookahead: int, sampling: FrameSampling
) -> Iterator[Tuple[Any, Any]]:
    """``(item, pixels or the exception)`` in input order, at most ``lookahead`` items ahead;
    anything that is not an [`Item`] (a shard's end) passes through in its place, as ``(it, None)``."""
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        pending: Deque[Tuple[Any, Optional[concurrent.futures.Future]]] = collections.deque()
        try:
            for item in items:
                future = pool.submit(_pixels, item, processor, sampling) if isinstance(item, Item) else None
                pending.append((item, future))
                if len(pending) >= lookahead:
                    yield _result(*pending.popleft())
        except Exception:  # the stream failed (a shard that cannot be opened): finish what came before
            while pending:
                yield _result(*pending.popleft())
            raise
        while pending:
            yield _result(*pending.popleft())


def _result(item: Any, future: Optional[concurrent.futures.Future]) -> Tuple[Any, Any]:
    if future is None:
        return item, None
    try:
        return item, future.result()
    except Exception as err:  # any failure to read or decode is the item's, not the run's
        return item, err


class _ShardEnd:
    """Passed along the item stream after a shard's last item: its rows are written, then it is
    marked finished."""

    def __init__(self, name: str, first_error: int) -> None:
        self.name, self.first_error = name, first_error


def tokenize_items(
    items: Iterable[Item],
    encode: Callable[[np.ndarray], np.ndarray],
    writer: Any,
    processor: Union[int, Any],
    batch_size: int = 8,
    strict: bool = False,
    workers: int = 4,
    process_index: int = 0,
    process_count: int = 1,
    progress: Optional[Callable[[int], None]] = None,
    sampling: FrameSampling = FrameSampling(),
    lookahead: Optional[int] = None,
) -> TokenizeSummary:
    """Encode ``items`` with ``encode`` ((B, H, W, 3) pixel values → (B, h, w) tokens) and add
    each to ``writer`` (``add(key, tokens (frames, h, w), caption, origin)`` and ``done``; see
    [`data.writers`]). The caller closes the writer, which writes what is still queued. With
    ``process_count`` > 1 this process takes the items whose key [`data.shards.key_owner`] gives
    to ``process_index`` (every process lists every item, none loads another's).

    Images are batched ``batch_size`` at a time; a video is encoded on its own, ``batch_size``
    frames at a time, as the LWM wrapper encodes (B, T, H, W, C) (each frame independently), and
    written as one row of (frames, h, w) tokens. With ``strict``, the first unreadable item
    raises ``ValueError`` naming it. A key seen twice in one run is an error for its second
    occurrence (each key names one output row); so is a row the writer refuses (an npz file
    holds one grid shape). ``lookahead`` items (default ``2 * batch_size``) are decoded ahead of
    the model: keep it small for videos, each of which is held whole (uint8, cropped).

    ``processor`` is the model's ``VQGANImageProcessor``: its ``resize_crop`` runs in the decoding
    threads, its ``to_pixel_values`` on each batch. An int ``S`` stands for resize to ``S`` and
    center-crop ``S``², in [-1, 1].
    """
    from .shards import key_owner

    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    run = _Run(encode, writer, processor, batch_size, strict, progress)
    if process_count > 1:
        items = (item for item in items if key_owner(item.key, process_count) == process_index)
    run.feed(items, workers, lookahead, sampling)
    if hasattr(writer, "finish_process"):
        writer.finish_process({"split": "key hash", "encoded": run.summary.encoded, "errors": len(run.summary.errors)})
    return run.summary


def tokenize_shards(
    shards: Sequence[InputShard],
    encode: Callable[[np.ndarray], np.ndarray],
    writer: Any,
    processor: Union[int, Any],
    batch_size: int = 8,
    strict: bool = False,
    workers: int = 4,
    process_index: int = 0,
    process_count: int = 1,
    progress: Optional[Callable[[int], None]] = None,
    sampling: FrameSampling = FrameSampling(),
    lookahead: Optional[int] = None,
) -> TokenizeSummary:
    """[`tokenize_items`] over whole input shards: process ``process_index`` of ``process_count``
    reads only the shards [`data.shards.shard_share`] gives it, skips those the writer's markers
    say are finished without opening them, and marks each shard finished once its rows are
    written (``writer.finish_shard``), then its share (``writer.finish_process``). A writer
    without markers (npz) just receives the rows."""
    from .shards import shard_share, shards_digest

    share = shard_share(shards, process_index, process_count)
    run = _Run(encode, writer, processor, batch_size, strict, progress)
    run.summary.shards = len(share)
    finished: Set[str] = getattr(writer, "finished", set())

    def stream() -> Iterator[Union[Item, _ShardEnd]]:
        from .manifest import marker_name

        for shard in share:
            if marker_name(shard.name) in finished:
                run.summary.shards_done_before += 1
                continue
            first_error = len(run.summary.errors)
            yield from shard.items()
            yield _ShardEnd(shard.name, first_error)

    run.feed(stream(), workers, lookahead, sampling)
    if hasattr(writer, "finish_process"):
        digest = shards_digest([s.name for s in shards])
        plan = {"split": "shards", "input_shards": len(shards), "shards_digest": digest,
                "shard_names": [s.name for s in share], "encoded": run.summary.encoded,
                "errors": len(run.summary.errors)}  # fmt: skip
        writer.finish_process(plan)
    return run.summary


class _Run:
    """One tokenizing run: the batch being filled, the keys seen, the summary."""

    def __init__(self, encode: Callable, writer: Any, processor: Any, batch_size: int, strict: bool,
                 progress: Optional[Callable[[int], None]]) -> None:  # fmt: skip
        if isinstance(processor, int):
            from .processing import VQGANImageProcessor

            size = {"shortest_edge": processor}
            processor = VQGANImageProcessor(size=size, crop_size={"height": processor, "width": processor})
        self.encode, self.writer, self.processor = encode, writer, processor
        self.batch_size, self.strict, self.progress = batch_size, strict, progress
        self.summary = TokenizeSummary()
        self.seen: Set[str] = set()
        self.batch: List[Tuple[Item, np.ndarray]] = []

    def _tick(self) -> None:
        if self.progress:
            self.progress(1)

    def fail(self, key: str, message: str) -> None:
        if self.strict:
            raise ValueError(f"{key}: {message}")
        self.summary.errors.append((key, message))
        self._tick()

    def _mine(self, items: Iterable[Union[Item, _ShardEnd]]) -> Iterator[Union[Item, _ShardEnd]]:
        """The items still to encode (and the shard ends), the others counted or refused."""
        for item in items:
            if isinstance(item, _ShardEnd):
                yield item
            elif item.key in self.writer.done:
                self.summary.already_done += 1
                if hasattr(self.writer, "skipped"):
                    self.writer.skipped(item.key)
                self._tick()
            elif item.key in self.seen:
                self.fail(item.key, "duplicate key: an earlier item has the same key")
            elif not _is_utf8(item.key):  # a file name of undecodable bytes: no token file can store it
                self.fail(item.key.encode("utf-8", "backslashreplace").decode(), "the name is not UTF-8 text")
            else:
                self.seen.add(item.key)
                yield item

    def _write(self, item: Item, tokens: np.ndarray) -> None:
        try:
            kept = {"extra": item.extra} if item.extra else {}  # only writers that keep columns get them
            self.writer.add(item.key, tokens, item.caption, item.origin, **kept)
        except ValueError as err:
            self.fail(item.key, str(err))
            return
        self.summary.encoded += 1
        self._tick()

    def _run_batch(self) -> None:
        if not self.batch:
            return
        pixels = self.processor.to_pixel_values(np.stack([pixels for _, pixels in self.batch]))
        tokens = np.asarray(self.encode(pixels))
        for (item, _), grid in zip(self.batch, tokens):
            self._write(item, grid[None])
        self.batch.clear()

    def _run_video(self, item: Item, frames: np.ndarray) -> None:
        size = self.batch_size
        chunks = [
            self.encode(self.processor.to_pixel_values(frames[i : i + size])) for i in range(0, len(frames), size)
        ]
        self._write(item, np.concatenate([np.asarray(c) for c in chunks]))

    def feed(self, items: Iterable[Union[Item, _ShardEnd]], workers: int, lookahead: Optional[int],
             sampling: FrameSampling) -> None:  # fmt: skip
        ahead = lookahead or 2 * self.batch_size
        for item, pixels in _loaded(self._mine(items), self.processor, workers, ahead, sampling):
            if isinstance(item, _ShardEnd):
                self._run_batch()  # the shard's rows all written before it is marked finished
                if hasattr(self.writer, "finish_shard"):
                    self.writer.finish_shard(item.name, self.summary.errors[item.first_error :])
            elif isinstance(pixels, Exception):
                self.fail(item.key, f"{type(pixels).__name__}: {pixels}")
            elif item.video:
                self._run_video(item, pixels)
            else:
                self.batch.append((item, pixels))
                if len(self.batch) == self.batch_size:
                    self._run_batch()
        self._run_batch()


def summary_lines(summary: TokenizeSummary, where: str, limit: int = 5) -> List[str]:
    """Human-readable lines about skipped items, for standard error."""
    if not summary.errors:
        return []
    lines = [f"skipped {len(summary.errors)} item(s) that could not be read{where}:"]
    lines += [f"  {key}: {message}" for key, message in summary.errors[:limit]]
    if len(summary.errors) > limit:
        lines.append(f"  ... and {len(summary.errors) - limit} more")
    return lines


def errors_jsonl(summary: TokenizeSummary) -> bytes:
    import json

    return "".join(json.dumps({"key": k, "error": m}) + "\n" for k, m in summary.errors).encode()


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # surrogates: os.fsdecode's escapes for bytes that are not UTF-8
        return False
    return True


__all__: Tuple[str, ...] = (
    "FrameSampling", "TokenizeSummary", "errors_jsonl", "summary_lines", "tokenize_items", "tokenize_shards",
)  # fmt: skip
