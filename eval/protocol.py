"""The measurement protocols a run is benchmarked and profiled with.

* ``full``: the reference protocol (``recipes/default.toml``, the committed reports): the
  decoder's 24 x 512-token windows per corpus, 2,000 test tweets, 300 punctuation pairs,
  10 timed latency and generation rounds.
* ``lean``: the main job's (``recipes/main.toml``): a subset of the full protocol's items
  from the same splits (every third of its 24 evenly spaced perplexity windows, which
  ``max_windows=8`` selects; the first 1,000 of 2,000 tweets; the first 100 of 300
  sentences) and about half the timed rounds, so a lean number is an estimate of the full
  one with a wider interval
  (every metric carries its 95% interval; :mod:`eval.refcheck` compares the two).
* ``quick``: smoke runs (``--quick``), not for comparisons.

A run's protocol is part of its key (``full`` and ``quick`` keep the keys they always
had) and of its report (``protocol``), and a run is compared only with a dense baseline of
the same protocol. :func:`use` sets the protocol ``eval.run`` measures with; the
benchmark suites and the profiler read it through :func:`of`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from compress.errors import UserError

PROTOCOLS = ("full", "lean", "quick")
#: which baseline wins when a folder holds several: full over lean over quick
RANK = {"quick": 0, "lean": 1, "full": 2}

_current: ContextVar[str] = ContextVar("eval_protocol", default="full")


def check(name: str) -> str:
    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}: use one of {', '.join(PROTOCOLS)}")
    return name


def of(quick: bool) -> str:
    """The protocol in force: ``quick`` when the flag is set, else the one :func:`use` set."""
    return "quick" if quick else _current.get()


@contextmanager
def use(name: str) -> Iterator[None]:
    """Measure with protocol ``name`` inside the block (``quick`` is the flag's business)."""
    token = _current.set(check(name))
    try:
        yield
    finally:
        _current.reset(token)


def of_report(report: dict[str, Any]) -> str:
    """The protocol a report was measured with (reports before lean existed: full/quick)."""
    return "quick" if report.get("quick") else str(report.get("protocol") or "full")


def key_part(protocol: str) -> dict[str, str]:
    """What the protocol adds to a run key: nothing for full and quick (their keys are
    unchanged), ``{"protocol": "lean"}`` for lean."""
    return {"protocol": protocol} if protocol not in ("full", "quick") else {}

