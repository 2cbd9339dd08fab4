"""Atomic writes: a temporary path in the same folder, then ``os.replace``.

A process killed mid-write leaves either the old complete file (or folder) or the
new complete one, never a truncated one. Temporary names start with ``.tmp-`` so
readers skip them and the next run can clean them up.

A write that fails because the disk is full (``ENOSPC``/``EDQUOT``, also when raised
by a library such as safetensors as its own error) removes its temporary and raises
:class:`DiskFull`, one line saying so; the previous file or folder is untouched.

Replacing an existing folder is one atomic swap on Linux (``renameat2`` with
``RENAME_EXCHANGE``). Elsewhere it takes two renames (old folder aside, new one in);
a process killed between them leaves the old folder under ``.tmp-<name>.old``, and
:func:`restore_interrupted_dir` (called by :func:`atomic_dir` and by readers that
need the folder) puts it back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compress.errors import UserError

TMP_PREFIX = ".tmp-"

_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXT = ("no space left on device", "disk quota exceeded", "storagefull", "os error 28",
              "os error 122")


class DiskFull(UserError):
    """A write failed because the disk (or quota) is full; nothing half-written is left."""


def is_disk_full(exc: BaseException) -> bool:
    """True for ``ENOSPC``/``EDQUOT``, also wrapped by a library (safetensors reports
    ``No space left on device (os error 28)`` as its own error type)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return True
        if any(t in str(exc).lower() for t in _FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def disk_full(path: str | os.PathLike) -> DiskFull:
    """The one-line error for a full disk while writing ``path``."""
    path = Path(path)
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else ".").free
        room = f"{free / 2**20:.1f} MiB free"
    except OSError:
        room = "free space unknown"
    return DiskFull(f"disk full while writing {path} ({room}); the previous version is intact "
                    "and no temporary file is left; free space and run again")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path) from None
        raise
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise disk_full(path) from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no libc symbol (old glibc, musl)
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    renameat2.restype = ctypes.c_int
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _old_name(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{path.name}.old")


def restore_interrupted_dir(path: str | os.PathLike) -> bool:
    """Put back the old folder a killed :func:`atomic_dir` left aside; True if it did.

    Only acts when ``path`` is missing and ``.tmp-<name>.old`` (complete: it was moved
    aside whole) exists.
    """
    path = Path(path)
    old = _old_name(path)
    if path.exists() or not old.is_dir():
        return False
    os.replace(old, path)
    return True


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` whole.

    >>> with atomic_dir("out/model") as tmp:       # doctest: +SKIP
    ...     model.save_pretrained(tmp)
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        restore_interrupted_dir(path)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent))
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path) from None
        raise
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise disk_full(path) from None
        raise
    if path.is_dir() and _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # ``tmp`` now holds the old folder
        return
    old = None
    if path.exists():
        old = _old_name(path)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale_tmp(folder: str | os.PathLike) -> int:
    """Remove temporary leftovers of killed writers in ``folder``; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.iterdir():
        stale_old = p.name.startswith(TMP_PREFIX) and p.name.endswith(".old")
        name = p.name[len(TMP_PREFIX) : -len(".old")] if stale_old else ""
        if name and p.is_dir() and restore_interrupted_dir(folder / name):
            continue  # the only complete copy of a folder whose swap was cut short
        if p.name.startswith(TMP_PREFIX):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    return n
