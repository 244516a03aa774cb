"""Tokenizing a dataset: a stream of [`Item`]s in, token rows out, in bounded memory.

Items are loaded by a few threads ahead of the model (Pillow decodes outside the GIL), batched,
encoded and handed to a writer as they come. An item that cannot be read is skipped and
reported (``errors``), never fatal unless ``strict``; items the writer already holds (a resumed
run) are skipped before they are read. Several processes share a dataset by item number:
process ``i`` of ``n`` takes the items whose position ``p`` has ``p % n == i``, so they need no
communication and one failing leaves the others' shards intact.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from .sources import Item


@dataclass
class TokenizeSummary:
    """What a run did: ``encoded`` items written now, ``already_done`` skipped because an earlier
    run wrote them, and ``errors`` as ``(key, message)`` for the items that could not be read."""

    encoded: int = 0
    already_done: int = 0
    errors: List[Tuple[str, str]] = field(default_factory=list)


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
    items: Iterable[Item], processor: Any, workers: int, lookahead: int, sampling: FrameSampling
) -> Iterator[Tuple[Item, Any]]:
    """``(item, pixels or the exception)`` in input order, at most ``lookahead`` items ahead."""
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        pending: Deque[Tuple[Item, concurrent.futures.Future]] = collections.deque()
        for item in items:
            pending.append((item, pool.submit(_pixels, item, processor, sampling)))
            if len(pending) >= lookahead:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())


def _result(item: Item, future: concurrent.futures.Future) -> Tuple[Item, Any]:
    try:
        return item, future.result()
    except Exception as err:  # any failure to read or decode is the item's, not the run's
        return item, err


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
    [`data.writers`]). The caller closes the writer, which writes what is still queued.

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
    if isinstance(processor, int):
        from .processing import VQGANImageProcessor

        size = {"shortest_edge": processor}
        processor = VQGANImageProcessor(size=size, crop_size={"height": processor, "width": processor})
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    summary = TokenizeSummary()
    seen = set()

    def mine() -> Iterator[Item]:
        for item in itertools.islice(items, process_index, None, process_count):
            if item.key in writer.done:
                summary.already_done += 1
                if progress:
                    progress(1)
            elif item.key in seen:
                fail(item.key, "duplicate key: an earlier item has the same key")
            elif not _is_utf8(item.key):  # a file name of undecodable bytes: no token file can store it
                fail(item.key.encode("utf-8", "backslashreplace").decode(), "the name is not UTF-8 text")
            else:
                seen.add(item.key)
                yield item

    def fail(key: str, message: str) -> None:
        if strict:
            raise ValueError(f"{key}: {message}")
        summary.errors.append((key, message))
        if progress:
            progress(1)

    batch: List[Tuple[Item, np.ndarray]] = []

    def write(item: Item, tokens: np.ndarray) -> None:
        try:
            writer.add(item.key, tokens, item.caption, item.origin)
        except ValueError as err:
            fail(item.key, str(err))
            return
        summary.encoded += 1
        if progress:
            progress(1)

    def run_batch() -> None:
        tokens = np.asarray(encode(processor.to_pixel_values(np.stack([pixels for _, pixels in batch]))))
        for (item, _), grid in zip(batch, tokens):
            write(item, grid[None])
        batch.clear()

    def run_video(item: Item, frames: np.ndarray) -> None:
        chunks = [
            encode(processor.to_pixel_values(frames[i : i + batch_size])) for i in range(0, len(frames), batch_size)
        ]
        write(item, np.concatenate([np.asarray(c) for c in chunks]))

    for item, pixels in _loaded(mine(), processor, workers, lookahead or 2 * batch_size, sampling):
        if isinstance(pixels, Exception):
            fail(item.key, f"{type(pixels).__name__}: {pixels}")
            continue
        if item.video:
            run_video(item, pixels)
            continue
        batch.append((item, pixels))
        if len(batch) == batch_size:
            run_batch()
    if batch:
        run_batch()
    return summary


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


__all__: Tuple[str, ...] = ("FrameSampling", "TokenizeSummary", "errors_jsonl", "summary_lines", "tokenize_items")
