"""Was the machine quiet while a benchmark timed? CPU used by *other* processes.

A load average cannot tell: on a 2-core machine a 2-thread benchmark alone makes it
about 2, and a job that ended just before the benchmark started still counts for a
minute. :class:`OtherCPU` instead reads the machine's busy time (``/proc/stat``) and
subtracts this process's own CPU time (``getrusage``), so what remains is what other
processes used during the interval, in cores.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path


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
