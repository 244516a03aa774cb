"""Columns kept beside the tokens (``--keep-columns``): labels, ids, URLs carried from the input
into every output row. A kept column has one of four kinds for the whole job — ``string``,
``int64``, ``double``, ``bool`` — taken from what the source declares (a dataset's schema; a tar
member is text), so every part of every process has the same schema; a value of another kind is
its item's error, never a silently changed row.

May import: nothing else of vqgan_flax.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

KINDS = ("string", "int64", "double", "bool")
# Output fields of our own (parquet columns and LWM record fields) a kept column may not take.
RESERVED = frozenset({"key", "tokens", "frames", "height", "width", "caption", "vision", "fields"})
# A kept value longer than this (a text member, a string cell) is refused: it is metadata.
MAX_KEPT_CHARS = 1 << 20


def check_names(names: Sequence[str]) -> None:
    """Refuse kept column names that repeat or would overwrite one of our output fields."""
    seen = set()
    for name in names:
        if not name or name in RESERVED:
            raise ValueError(f"--keep-columns {name!r}: {'an empty name' if not name else 'one of our output columns'}"
                             f" (ours: {', '.join(sorted(RESERVED))})")  # fmt: skip
        if name in seen:
            raise ValueError(f"--keep-columns {name!r}: given twice")
        seen.add(name)


def arrow_kind(name: str, arrow_type: Any, where: str) -> str:
    """The kind of a dataset column from its Arrow type; nested and binary columns are refused."""
    import pyarrow as pa

    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "int64"
    if pa.types.is_floating(arrow_type):
        return "double"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    raise ValueError(
        f"{where}: column {name!r} is {arrow_type}; only text, integer, float and boolean columns can be kept"
    )


def checked_value(name: str, kind: str, value: Any) -> Any:
    """``value`` as column ``name`` of ``kind`` stores it (``None`` stays ``None``), or a
    ``ValueError`` naming the column and the value."""
    if value is None:
        return None
    if kind == "string" and isinstance(value, str) and len(value) <= MAX_KEPT_CHARS:
        return value
    if kind == "int64" and isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    if kind == "double" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "bool" and isinstance(value, bool):
        return value
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise ValueError(f"kept column {name!r} ({kind}): {shown} is not one")


def checked_row(kinds: Dict[str, str], extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Every kept column's value for one row (missing ones ``None``), checked."""
    extra = extra or {}
    return {name: checked_value(name, kind, extra.get(name)) for name, kind in kinds.items()}


def parquet_fields(kinds: Dict[str, str]) -> list:
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64(), "bool": pa.bool_()}
    return [pa.field(name, types[kind]) for name, kind in kinds.items()]


__all__ = ("KINDS", "MAX_KEPT_CHARS", "RESERVED", "arrow_kind", "check_names", "checked_row", "checked_value",
           "parquet_fields")  # fmt: skip
