"""A bounded cache of compiled callables, one per model: what ``FlaxVQGANModel`` and
``data/parallel.py`` compile (per method, micro-batching and static options) lives here, visible and
limited, instead of in an ever-growing private dict.

Each entry is a ``jax.jit``/``jax.pmap`` wrapper, which keeps its own executables per input shape;
evicting an entry frees those with it.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Hashable, Iterator, Tuple


class CompiledCache:
    """Least-recently-used map of ``key → compiled callable``, at most ``maxsize`` entries.

    ``get_or_build(key, build)`` returns the cached callable or calls ``build()`` once and keeps
    it; keys are tuples such as ``("encode", micro_batch_size, static_options)`` or
    ``("pmap", "encode")``.
    """

    def __init__(self, maxsize: int = 32) -> None:
        if not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"CompiledCache maxsize={maxsize!r} must be a positive integer")
        self.maxsize = maxsize
        self._entries: collections.OrderedDict = collections.OrderedDict()

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = self._entries[key] = build()
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def items(self) -> Iterator[Tuple[Hashable, Any]]:
        return iter(list(self._entries.items()))

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._entries))

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"CompiledCache({len(self)}/{self.maxsize}: {list(self._entries)})"
