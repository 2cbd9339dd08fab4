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


#: other processes' mean CPU use (cores) above which timings are marked provisional
QUIET_OTHER_CORES = 0.25

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
    import platform

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


def quiet_reading(other_cores: float | None, threshold: float = QUIET_OTHER_CORES) -> dict:
    """The machine-quiet record a report or bench JSON carries for its timings."""
    quiet = None if other_cores is None else other_cores <= threshold
    return {
        "other_processes_cores": other_cores,
        "quiet_threshold_cores": threshold,
        "quiet": quiet,
        "method": "CPU time of other processes while timing (/proc/stat busy time minus this "
        "process's own CPU time), mean cores",
    }
