"""Where input shards and token folders live: local paths, any URL fsspec knows (``s3://``,
``gs://``, ``https://``, ``hf://datasets/...``, ``memory://``) and webdataset's ``pipe:CMD``.

Credentials and endpoints come from each file system's usual environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``HF_TOKEN``); the packages behind
``s3://`` and ``gs://`` are optional extras (``[s3]``, ``[gcs]``), asked for by name when missing.
A [`Folder`] is a token folder in either kind of place: on a local disk files are written under
a temporary name and renamed; in an object store an object is one upload, which appears only
complete (no rename needed, none attempted).

May import: ``utils``.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import shlex
import shutil
import subprocess
from typing import IO, Any, Callable, List, Tuple, Union

from ..utils.extras import require
from ..utils.files import atomic_write, open_regular

# The optional package behind each protocol (utils.extras names its pip extra when missing).
_PROTOCOL_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str) -> bool:
    """A URL (``PROTOCOL://...``) or a ``pipe:`` command rather than a local path."""
    return path.startswith("pipe:") or bool(_URL.match(path))


def _file_system(url: str) -> Tuple[Any, str]:
    import fsspec

    protocol = url.split("://", 1)[0]
    package = _PROTOCOL_PACKAGES.get(protocol)
    if package is not None:
        require(package)
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise ValueError(f"{url}: no file system for {protocol}:// ({err})") from None


def input_name(path: str) -> str:
    """The file name an input shard is known by: the last part of a path or URL; for ``pipe:``,
    that of the command's last word (``pipe:curl -s https://host/s-0001.tar`` → ``s-0001.tar``)."""
    if path.startswith("pipe:"):
        words = shlex.split(path[len("pipe:") :]) or [""]
        return posixpath.basename(words[-1].split("?")[0])
    return posixpath.basename(path.split("?")[0].rstrip("/")) if is_remote(path) else os.path.basename(path)


class _PipeReader(io.RawIOBase):
    """The standard output of a ``pipe:`` command; a failing command is an error at the end of its
    output (what it wrote stands), naming the command and its exit status."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        stdout: Any = self.process.stdout
        count = stdout.readinto(buffer)
        if count == 0:
            status = self.process.wait()
            if status != 0:
                error = self.process.stderr.read(2000).decode("utf-8", "replace").strip() if self.process.stderr else ""
                raise OSError(f"pipe:{self.command}: exit status {status}" + (f" ({error})" if error else ""))
        return count

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        super().close()


def open_input(path: str) -> IO[bytes]:
    """Open an input shard for streaming: a local regular file ([`open_regular`]), a URL through
    fsspec, or a ``pipe:`` command's output."""
    if path.startswith("pipe:"):
        return io.BufferedReader(_PipeReader(path[len("pipe:") :]), 1 << 20)
    if not is_remote(path):
        return open_regular(path)
    fs, inner = _file_system(path)
    try:
        return fs.open(inner, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such shard") from None


def find_remote(url: str, suffixes: Union[str, Tuple[str, ...]]) -> List[str]:
    """The files under ``url`` (a folder of an object store, recursively) whose names end with one
    of ``suffixes`` (any case; hidden names skipped), as URLs, sorted; ``url`` itself when it
    names such a file."""
    fs, inner = _file_system(url)
    protocol = url.split("://", 1)[0]
    wanted = (suffixes,) if isinstance(suffixes, str) else suffixes

    def matches(path: str) -> bool:
        name = posixpath.basename(path)
        return name.lower().endswith(wanted) and not name.startswith(".")

    if matches(inner) and fs.isfile(inner):
        return [url]
    found = sorted(p for p in fs.find(inner) if matches(p))
    return [f"{protocol}://{p}" if "://" not in p else p for p in found]


class Folder:
    """A token folder by its relative names: a local folder, or a prefix of an object store."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") if is_remote(root) else root
        self.remote = is_remote(root)
        if self.remote:
            if root.startswith("pipe:"):
                raise ValueError(f"{root}: a pipe: command is an input, not a place to write to")
            self.fs, self.inner = _file_system(self.root)

    def path(self, name: str) -> str:
        """The full path or URL of ``name`` (relative, ``/``-separated)."""
        return f"{self.root}/{name}" if self.remote else os.path.join(self.root, *name.split("/"))

    def _inner(self, name: str) -> str:
        return f"{self.inner.rstrip('/')}/{name}" if name else self.inner

    def listdir(self, name: str = "") -> List[str]:
        """The names in folder ``name`` (none where it does not exist)."""
        if not self.remote:
            where = self.path(name) if name else self.root
            return sorted(os.listdir(where)) if os.path.isdir(where) else []
        try:
            entries = self.fs.ls(self._inner(name), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted({posixpath.basename(e.rstrip("/")) for e in entries} - {""})

    def exists(self, name: str) -> bool:
        return os.path.lexists(self.path(name)) if not self.remote else self.fs.exists(self._inner(name))

    def read_bytes(self, name: str, limit: int) -> bytes:
        """The bytes of file ``name``, refused when over ``limit``."""
        if self.remote:
            size = self.fs.size(self._inner(name))
            if size is not None and size > limit:
                raise ValueError(f"{self.path(name)}: {size} bytes, over the {limit} bytes a record may have")
            return self.fs.cat_file(self._inner(name))
        with open_regular(self.path(name)) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"{self.path(name)}: over the {limit} bytes a record may have")
        return data

    def write(self, name: str, write: Callable[[Any], None]) -> None:
        """Write file ``name`` whole or not at all: ``write(f)`` fills it."""
        if not self.remote:
            os.makedirs(os.path.dirname(self.path(name)), exist_ok=True)
            atomic_write(self.path(name), write)
            return
        buffer = io.BytesIO()
        write(buffer)
        self.fs.pipe_file(self._inner(name), buffer.getvalue())  # one upload: visible only complete

    def remove(self, name: str) -> None:
        if self.remote:
            self.fs.rm_file(self._inner(name))
        else:
            os.unlink(self.path(name))

    def remove_tree(self, name: str) -> None:
        """Remove folder ``name`` and everything in it (nothing where it does not exist)."""
        if self.remote:
            if self.fs.exists(self._inner(name)):
                self.fs.rm(self._inner(name), recursive=True)
        else:
            shutil.rmtree(self.path(name), ignore_errors=True)

    def open(self, name: str) -> IO[bytes]:
        """File ``name`` for reading (a local one only if it is a regular file)."""
        return self.fs.open(self._inner(name), "rb") if self.remote else open_regular(self.path(name))


__all__ = ("Folder", "find_remote", "input_name", "is_remote", "open_input")
