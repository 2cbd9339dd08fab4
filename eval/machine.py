"""Was the machine quiet while a benchmark timed? The suite's one definition of busy.

A load average cannot tell: on a 2-core machine a 2-thread benchmark alone makes it
about 2, and a job that ended just before the benchmark started still counts for a
minute. :class:`OtherCPU` instead reads the machine's busy time (``/proc/stat``) and
subtracts this process's own CPU time (``getrusage``), so what remains is what other
processes used during the interval, in cores. :func:`is_busy` is the rule every timing
uses (the profiler, the ``bench/`` scripts): other processes above
:data:`BUSY_OTHER_CORES` cores, or, where ``/proc/stat`` cannot be read, a load average
above 1.5x the cores; :class:`BusyMeter` measures an interval and applies it.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: other processes keeping more than this many cores busy make timings not comparable.
BUSY_OTHER_CORES = 0.25
#: the load-average rule where /proc/stat cannot be read: above this many times the cores.
BUSY_LOAD_PER_CORE = 1.5
#: :func:`is_busy` in words, recorded beside each verdict.
BUSY_RULE = (
    f"other processes above {BUSY_OTHER_CORES} cores, or load above {BUSY_LOAD_PER_CORE}x "
    "cores where that is unknown"
)


def _busy_seconds() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    guest = sum(ticks[8:10]) if len(ticks) > 9 else 0  # already counted in user / nice
    return (sum(ticks) - idle - guest) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def load_average() -> float | None:
    """1-minute system load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def is_busy(other_cores: float | None, loads: Iterable[float | None] = ()) -> bool:
    """The one definition of a busy machine (:data:`BUSY_RULE`)."""
    if other_cores is not None:
        return other_cores > BUSY_OTHER_CORES
    known = [x for x in loads if x is not None]
    return bool(known) and max(known) > BUSY_LOAD_PER_CORE * (os.cpu_count() or 1)


class OtherCPU:
    """``start()`` ... ``cores()``: mean cores other processes kept busy in between
    (``None`` where ``/proc/stat`` is unavailable)."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._t, self._busy, self._own = time.monotonic(), _busy_seconds(), _own_seconds()

    def cores(self) -> float | None:
        busy = _busy_seconds()
        if busy is None or self._busy is None:
            return None
        wall = max(time.monotonic() - self._t, 1e-9)
        other = (busy - self._busy) - (_own_seconds() - self._own)
        return round(max(other, 0.0) / wall, 3)


class BusyMeter:
    """Measure an interval: created at its start, :meth:`stop` at its end.

    >>> meter = BusyMeter(); ...; meter.stop()["busy_machine"]        # doctest: +SKIP
    False
    """

    def __init__(self) -> None:
        self.load_before = load_average()
        self.others = OtherCPU()

    def stop(self) -> dict[str, Any]:
        """``load_average`` (before/after), ``other_processes_cores``, ``busy_machine`` and
        the rule that decided it (``busy_rule``)."""
        cores = self.others.cores()
        load_after = load_average()
        return {
            "load_average": {"before": self.load_before, "after": load_after},
            "other_processes_cores": cores,
            "busy_machine": is_busy(cores, (self.load_before, load_after)),
            "busy_rule": BUSY_RULE,
        }
