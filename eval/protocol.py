"""The measurement protocols a run is benchmarked and profiled with.

* ``full``: the reference protocol (``recipes/default.toml``, the committed reports): the
  decoder's 24 x 512-token windows per corpus, 2,000 test tweets, 300 punctuation pairs,
  10 timed latency and generation rounds.
* ``lean``: the main job's (``recipes/main.toml``): a third of the windows and examples
  and about half the timed rounds, the same splits and the same order (the first items of the
  full protocol's), so a lean number is an estimate of the full one with a wider interval
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


def lean_saving(report: dict[str, Any]) -> float:
    """Seconds a full-protocol run would not spend under lean: the share of its benchmark
    stage lean skips (fewer windows or examples of the task's suite) and of its profile
    stage (fewer timed rounds). An estimate for time-left displays, not a measurement."""
    from eval.benchmark.suites import SUITES
    from eval.profiler import ROUNDS

    stages = report.get("stage_times_s") or {}
    task = (report.get("model") or {}).get("task")
    suite = SUITES.get(task) if isinstance(task, str) else None
    bench_share = 1.0
    if suite is not None and suite.lean is not None:
        sizes = [(suite.lean[k], v) for k, v in suite.full.items()
                 if k in ("max_windows", "n_test") and v]
        bench_share = sizes[0][0] / sizes[0][1] if sizes else 1.0
    profile_share = ROUNDS["lean"][1] / ROUNDS["full"][1]
    bench, prof = float(stages.get("benchmark") or 0.0), float(stages.get("profile") or 0.0)
    return bench * (1.0 - bench_share) + prof * (1.0 - profile_share)
