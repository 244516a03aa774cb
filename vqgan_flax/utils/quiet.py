"""Keeping transformers' advisory messages off stderr while vqgan-flax imports its pieces."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

_ADVICE = "TRANSFORMERS_NO_ADVISORY_WARNINGS"


@contextlib.contextmanager
def quiet_transformers_advice() -> Iterator[None]:
    """Set ``TRANSFORMERS_NO_ADVISORY_WARNINGS=1`` for the block, then restore what the user had."""
    previous = os.environ.get(_ADVICE)
    os.environ[_ADVICE] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_ADVICE, None)
        else:
            os.environ[_ADVICE] = previous
