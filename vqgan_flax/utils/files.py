"""Files from outside handled safely: inputs opened only when they are regular files (a FIFO
would block forever, a device read forever), outputs written whole or not at all (a temporary
file renamed into place) with the permissions a plain ``open`` would give, never replacing
something that is not a regular file."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import IO, Any, Callable, Dict, Iterator, Union

__all__ = [
    "NotRegularFileError",
    "atomic_write",
    "check_replaceable",
    "current_umask",
    "errors_naming",
    "honour_umask",
    "open_regular",
    "read_json_object",
]


class NotRegularFileError(ValueError):
    """A path that names a FIFO, a device, a socket or a folder where a regular file is needed."""


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def open_regular(path: Union[str, os.PathLike]) -> IO[bytes]:
    """Open ``path`` for reading if, symlinks followed, it is a regular file. The open itself does
    not block (``O_NONBLOCK``: a FIFO with no writer would otherwise hang it, Ctrl-C included);
    what it opened is checked with ``fstat`` before a byte is read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{os.fspath(path)}: {_kind(mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# A JSON side file (a config, a token folder's metadata, a weight index) larger than this is
# refused unread: none of ours comes near it, and json.load would hold it all in memory.
MAX_JSON_BYTES = 16 << 20


def read_json_object(path: Union[str, os.PathLike], what: str = "a JSON file") -> Dict[str, Any]:
    """A JSON object from a regular file of at most ``MAX_JSON_BYTES``; anything else (a FIFO, a
    huge file, bytes that are not UTF-8, JSON that is not an object) is refused as one
    ``ValueError`` naming the file."""
    import json

    name = os.fspath(path)
    try:
        with open_regular(path) as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError as err:
        raise ValueError(f"{name}: {what}: unreadable ({err.strerror or err})") from None
    if len(data) > MAX_JSON_BYTES:
        raise ValueError(f"{name}: {what} of over {MAX_JSON_BYTES >> 20} MiB; not reading it")
    try:
        loaded = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{name}: {what}: not UTF-8 text") from None
    except ValueError as err:
        raise ValueError(f"{name}: {what}: not JSON ({err})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{name}: {what}: not a JSON object (a {type(loaded).__name__})")
    return loaded


def check_replaceable(path: str) -> None:
    """Refuse to replace ``path`` when it exists and is not a regular file (a device, a FIFO, a
    folder) or is a symlink: an output never replaces ``/dev/null`` or a link with a file."""
    if os.path.islink(path):
        raise NotRegularFileError(f"{path}: a symlink; not replacing it with a file")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise NotRegularFileError(f"{path}: {_kind(os.stat(path).st_mode)}; not replacing it with a file")


@contextlib.contextmanager
def errors_naming(where: str, file: str) -> Iterator[None]:
    """Re-raise a ``ValueError`` / ``TypeError`` that does not name ``where`` as one line that does:
    ``WHERE: FILE: message`` (transformers' loaders name neither for a field they refuse)."""
    try:
        yield
    except (ValueError, TypeError) as err:
        if where in str(err):
            raise
        raise ValueError(f"{where}: {file}: {err}") from None


def current_umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def honour_umask(path: str) -> None:
    """Give ``path`` the permissions a plain ``open`` would (0666 less the umask): ``mkstemp`` and
    safetensors' ``save_file`` create files readable by their owner only."""
    os.chmod(path, 0o666 & ~current_umask())


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place: an
    interrupted write never leaves a partial ``path``.

    The temporary name is hidden and ends in ``.partial``, so what a killed process leaves behind
    is never taken for an image by a later run ([`list_images`] skips it); the result gets the
    permissions the umask allows (``mkstemp`` alone would leave every output at 0600)."""
    check_replaceable(path)
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
