"""eval.machine.OtherCPU counts other processes' CPU, not this one's."""

from __future__ import annotations

import subprocess
import sys

import pytest

import eval.machine as machine


def test_other_cores_is_machine_busy_time_minus_own_time(monkeypatch):
    busy, own, clock = iter([100.0, 103.0]), iter([10.0, 12.5]), iter([0.0, 2.0])
    monkeypatch.setattr(machine, "_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(machine, "_own_seconds", lambda: next(own))
    monkeypatch.setattr(machine.time, "monotonic", lambda: next(clock))
    meter = machine.OtherCPU()
    assert meter.cores() == 0.25  # (3 s busy - 2.5 s own) over 2 s of wall time


@pytest.mark.skipif(machine._busy_seconds() is None, reason="no /proc/stat")
def test_a_spinning_child_process_counts_as_other():
    meter = machine.OtherCPU()
    spin = "import time\nt=time.monotonic()\nwhile time.monotonic()-t<1.0: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    assert meter.cores() > 0.5  # the child kept a core busy for most of the interval
