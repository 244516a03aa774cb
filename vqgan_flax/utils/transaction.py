"""Saving a model folder whole or not at all.

A save writes every file into a fresh hidden folder beside the target, then swaps that folder in
with one atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, with the
previous folder kept aside until the new one is in place). The entries of the target this save
does not rewrite (a README, the processor's config, logs) are carried into the new folder as hard
links, except the ones the caller says the save supersedes (stale weight files of another format);
those are removed by name. A save killed at any point leaves the previous folder as it was, or —
in the fallback's one-rename window — beside it under the hidden name, and the new one absent.

Refused up front: a target that is not a directory (a file, a device, a FIFO), the current
directory or one that holds it (the swap would leave this process in a deleted folder), and a
target holding more than ``MAX_CARRIED`` entries (a model belongs in a folder of its own).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
import tempfile
from typing import Callable, Union

from .files import current_umask

__all__ = ["MAX_CARRIED", "check_apart", "replace_folder"]

MAX_CARRIED = 10_000
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _partial_prefix(target: str) -> str:
    return f".{os.path.basename(target)}.save-"


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically; False where the system cannot (not Linux, old glibc, a file
    system without RENAME_EXCHANGE)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, f"cannot swap {a} into place: {os.strerror(code)}", b)


def _carry(source: str, destination: str, budget: list) -> None:
    """Recreate ``source``'s tree under ``destination`` with hard links (copies where links fail),
    symlinks as symlinks; counts entries against ``budget``."""
    for entry in os.scandir(source):
        budget[0] -= 1
        if budget[0] < 0:
            raise OSError(f"{source} holds more than {MAX_CARRIED} entries; save a model into a folder of its own")
        target = os.path.join(destination, entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            os.mkdir(target)
            _carry(entry.path, target, budget)
        elif entry.is_file():
            try:
                os.link(entry.path, target)
            except OSError:
                shutil.copy2(entry.path, target)
        # Sockets, FIFOs and devices in a model folder are not carried.


def _remove_abandoned(parent: str, target: str) -> None:
    """Hidden folders of earlier saves of ``target`` whose process is gone."""
    pattern = re.compile(re.escape(_partial_prefix(target)) + r"(\d+)-\w+\.partial$")
    for name in os.listdir(parent):
        match = pattern.match(name)
        if not match:
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # that save is still running
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        except (PermissionError, OverflowError):
            continue


def _check_target(target: str) -> None:
    if os.path.lexists(target):
        mode = os.stat(target).st_mode
        if stat.S_ISREG(mode):
            raise NotADirectoryError(f"{target} is a file, not a directory")
        if not stat.S_ISDIR(mode):
            raise NotADirectoryError(f"{target} is not a directory (a device, FIFO or socket)")
    cwd = os.path.realpath(os.getcwd())
    if cwd == target or cwd.startswith(target.rstrip(os.sep) + os.sep):
        raise OSError(f"{target} is the current directory or holds it; save into a folder of its own")


def check_apart(source: Union[str, os.PathLike], output: Union[str, os.PathLike], what: str) -> None:
    """Refuse an ``output`` that is ``source``, lies inside it, or holds it (``what`` names the
    operation in the message): writing it would replace or delete what is being read."""
    source, output = os.path.realpath(os.fspath(source)), os.path.realpath(os.fspath(output))
    if source == output:
        raise ValueError(f"{what}: the output {output} is the input")
    if output.startswith(source.rstrip(os.sep) + os.sep):
        raise ValueError(f"{what}: the output {output} is inside the input {source}")
    if source.startswith(output.rstrip(os.sep) + os.sep):
        raise ValueError(f"{what}: the output folder {output} holds the input {source}; write it elsewhere")


def replace_folder(
    target: Union[str, os.PathLike], write: Callable[[str], None], supersedes: Callable[[str], bool]
) -> None:
    """Make ``target`` the folder ``write(folder)`` writes, plus every entry ``target`` already had
    that ``write`` did not rewrite and ``supersedes(path)`` does not claim; see the module doc."""
    if os.path.islink(target) and not os.path.exists(target):
        raise NotADirectoryError(f"{target} is a symlink to nothing")
    target = os.path.realpath(os.fspath(target))  # a symlinked folder is saved where it points
    _check_target(target)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    _remove_abandoned(parent, target)
    fresh = tempfile.mkdtemp(dir=parent, prefix=f"{_partial_prefix(target)}{os.getpid()}-", suffix=".partial")
    try:
        os.chmod(fresh, 0o777 & ~current_umask())
        write(fresh)
        if not os.path.isdir(target):
            os.rename(fresh, target)
            return
        written = set(os.listdir(fresh))
        carried = tempfile.mkdtemp(dir=fresh)
        _carry(target, carried, [MAX_CARRIED])
        for name in os.listdir(carried):
            path = os.path.join(carried, name)
            if name in written or supersedes(os.path.join(target, name)):
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
            else:
                os.rename(path, os.path.join(fresh, name))
        os.rmdir(carried)
        shutil.copymode(target, fresh)
        if not _exchange(fresh, target):
            aside = fresh + ".previous"
            os.rename(target, aside)
            os.rename(fresh, target)
            fresh = aside
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
