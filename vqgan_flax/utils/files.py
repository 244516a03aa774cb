"""Writing files safely: whole or not at all (a temporary file renamed into place), with the
permissions a plain ``open`` would give."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

__all__ = ["atomic_write", "honour_umask"]


def honour_umask(path: str) -> None:
    """Give ``path`` the permissions a plain ``open`` would (0666 less the umask): ``mkstemp`` and
    safetensors' ``save_file`` create files readable by their owner only."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place: an
    interrupted write never leaves a partial ``path``.

    The temporary name is hidden and ends in ``.partial``, so what a killed process leaves behind
    is never taken for an image by a later run ([`list_images`] skips it); the result gets the
    permissions the umask allows (``mkstemp`` alone would leave every output at 0600)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        honour_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
