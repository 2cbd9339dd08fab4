"""Per-run claims on a shared reports folder: several sweeps, one set of reports.

Before a sweep runs a job it takes an exclusive ``flock`` on
``<reports>/.locks/<key>.lock``; while it holds the lock no other sweep runs that job.
A sweep that finds a job claimed goes on with the others and, at the end, waits for
the claim: when the holder has finished, the report is there and the job is skipped;
when the holder died (Ctrl-C, ``kill -9``, a lost node), the kernel released its lock
with the process and the job runs here. Claims are never stale: there is no lock file
to clean up by hand, since the lock lives in the kernel, not in the file.

After taking a claim the sweep looks for the job's report again (another sweep may
have finished it since this one started), so a job is never run twice and a report
never written twice. Reports themselves are written atomically (:mod:`compress.fileio`).

This works on one machine and on shared file systems whose ``flock`` is honoured
across machines (local disks, NFSv4, CephFS; Lustre and GPFS with their ``flock``
mount options), which is what ``eval.sweep --shard K/N`` on a cluster relies on.

>>> with try_claim(Path("reports"), "0123456789abcdef") as claim:   # doctest: +SKIP
...     if claim: run_the_job()
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: folder inside the reports folder holding one lock file per run key.
LOCKS = ".locks"


@dataclass
class Claim:
    """An exclusive lock on one run (release it with :meth:`release` or ``with``)."""

    key: str
    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_path(reports: Path, key: str) -> Path:
    return Path(reports) / LOCKS / f"{key}.lock"


def _open(reports: Path, key: str) -> tuple[Path, int]:
    path = lock_path(reports, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _note_holder(fd: int) -> None:
    """Who holds the claim, for people reading the lock file (the lock itself is flock)."""
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode()
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)


def try_claim(reports: Path, key: str) -> Claim | None:
    """Claim ``key`` without waiting; None when another process holds it."""
    path, fd = _open(reports, key)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    _note_holder(fd)
    return Claim(key, path, fd)


def wait_claim(reports: Path, key: str) -> Claim:
    """Claim ``key``, waiting as long as another process holds it."""
    path, fd = _open(reports, key)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    _note_holder(fd)
    return Claim(key, path, fd)


def held_elsewhere(reports: Path, key: str) -> bool:
    """True while another process holds the claim on ``key`` (a run in progress)."""
    if not lock_path(reports, key).exists():
        return False
    claim = try_claim(reports, key)
    if claim is None:
        return True
    claim.release()
    return False


def holder(reports: Path, key: str) -> str:
    """"pid 123 on host-a" from the lock file, for messages ("" when unknown)."""
    try:
        info = json.loads(lock_path(reports, key).read_text() or "{}")
        return f"pid {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


@contextlib.contextmanager
def folder_lock(reports: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock named ``name`` in the reports folder (e.g. while a manifest
    is merged and rewritten)."""
    claim = wait_claim(reports, name)
    try:
        yield
    finally:
        claim.release()


def shard_of(key: str, shards: int) -> int:
    """The shard (0-based) a run key belongs to when a sweep is split ``shards`` ways:
    the key (a hex digest) modulo ``shards``, the same on every machine and every run."""
    return int(key, 16) % shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/3"`` -> ``(2, 3)`` (1-based index, count); a one-line error otherwise."""
    from compress.errors import UserError

    try:
        k, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected K/N, e.g. 1/3 (shard 1 of 3)") from None
    if n < 1 or not 1 <= k <= n:
        raise UserError(f"--shard {text!r}: K must be between 1 and N (N >= 1)")
    return k, n
