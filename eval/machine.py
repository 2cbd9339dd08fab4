"""Was the machine quiet while a benchmark timed? The suite's one definition of busy.

A load average cannot tell: on a 2-core machine a 2-thread benchmark alone makes it
about 2, and a job that ended just before the benchmark started still counts for a
minute. :class:`OtherCPU` instead reads the machine's busy time (``/proc/stat``) and
subtracts this process's own CPU time (``getrusage``), so what remains is what other
processes used during the interval, in cores. :func:`is_busy` is the rule every timing
uses (the profiler, the ``bench/`` scripts): other processes above
:data:`BUSY_OTHER_CORES` cores, or, where ``/proc/stat`` cannot be read, a load average
above 1.5x the cores; :class:`BusyMeter` measures an interval and applies it, and
:func:`quiet_reading` is the same verdict as the record a bench JSON carries.
:func:`cpu_info` names the CPU and the ISA flags (AVX2, AVX-512, VNNI, AMX) every
report and bench records beside its timings: int8 gains depend on them.
"""

from __future__ import annotations

import os
import platform
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


#: ISA features that decide whether int8 / int4 / bf16 kernels win, as ``/proc/cpuinfo`` names them
ISA_FLAGS = {
    "avx2": ("avx2",),
    "fma": ("fma",),
    "avx512": ("avx512f",),
    "avx512_vnni": ("avx512_vnni",),
    "avx_vnni": ("avx_vnni",),
    "avx512_bf16": ("avx512_bf16",),
    "amx": ("amx_tile",),
    "amx_int8": ("amx_int8",),
    "amx_bf16": ("amx_bf16",),
}


def _cpuinfo_text() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_info() -> dict[str, object]:
    """CPU model, vendor, logical cores and the ISA flags int8 gains depend on.

    ``vnni`` is true for AVX512-VNNI or AVX-VNNI (the int8 dot-product instructions
    ONNX Runtime, oneDNN and OpenVINO use; without them u8 x s8 kernels go through
    saturating int16 pairs). A ratio measured on one CPU is comparable only with one
    measured on a CPU with the same flags.

    >>> sorted(cpu_info()["isa"])                        # doctest: +SKIP
    ['amx', 'amx_bf16', 'amx_int8', 'avx2', 'avx512', 'avx512_bf16', 'avx512_vnni', ...]
    """
    text = _cpuinfo_text()
    fields: dict[str, str] = {}
    if text:
        for line in text.splitlines():
            if not line.strip():
                break  # the first processor's block is enough
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    isa = {name: any(f in flags for f in names) for name, names in ISA_FLAGS.items()}
    isa["vnni"] = isa["avx512_vnni"] or isa["avx_vnni"]
    summary = [label for key, label in (("avx2", "AVX2"), ("avx512", "AVX-512"),
                                        ("vnni", "VNNI"), ("avx512_bf16", "AVX512-BF16"),
                                        ("amx", "AMX")) if isa[key]]
    return {
        "model": fields.get("model name") or platform.processor() or platform.machine(),
        "vendor": fields.get("vendor_id"),
        "family_model": (f"{fields['cpu family']}/{fields['model']}"
                         if "cpu family" in fields and "model" in fields else None),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "isa": isa if flags else None,
        "isa_summary": ", ".join(summary) if flags else "unknown (no /proc/cpuinfo flags)",
    }


def quiet_reading(other_cores: float | None, loads: Iterable[float | None] = ()) -> dict[str, Any]:
    """The machine-quiet record a report or bench JSON carries for its timings: quiet is
    ``not`` :func:`is_busy` (``None`` where neither other processes' CPU nor a load average
    is known).

    >>> quiet_reading(0.02)["quiet"]
    True
    """
    loads = list(loads)
    known = other_cores is not None or any(x is not None for x in loads)
    return {
        "other_processes_cores": other_cores,
        "quiet_threshold_cores": BUSY_OTHER_CORES,
        "quiet": (not is_busy(other_cores, loads)) if known else None,
        "rule": BUSY_RULE,
        "method": "CPU time of other processes while timing (/proc/stat busy time minus this "
        "process's own CPU time), mean cores",
    }
