"""Speed against dense, measured in one process: alternating rounds and a ratio with a 95% interval.

A latency measured in one process and compared with one measured in another (another
day, another load) moves by 30-40% on a shared machine. What can be trusted is a
*paired* comparison: the dense model and the compressed one are timed in the same
process, in alternating rounds after warm-up (the order rotates every round), so a
slow drift of the machine hits both alike.

The ratio and its interval (:func:`ratio_interval`):

* per round ``i``, ``r_i = t_model_i / t_dense_i`` (each ``t`` the median of ``inner``
  calls within the round);
* the estimate is the median of the ``r_i``;
* the 95% interval is a percentile bootstrap of that median over rounds (rounds
  resampled with replacement, ``BOOTSTRAP`` resamples, fixed seed so the same times
  give the same interval);
* verdict: ``faster`` when the whole interval lies below 1, ``slower`` when above,
  else ``no measurable change``.

A ratio below 1 means the compressed model takes less time than dense.

>>> rounds = alternate({"dense": f_dense, "model": f_model}, rounds=10)   # doctest: +SKIP
>>> ratio_interval(rounds["dense"], rounds["model"])["verdict"]          # doctest: +SKIP
'faster'
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["BOOTSTRAP", "alternate", "ratio_interval", "verdict"]

BOOTSTRAP = 2000
CONFIDENCE = 0.95
NO_CHANGE = "no measurable change"
METHOD = (
    "median over alternating rounds of (model time / dense time) within the round; "
    f"95% interval: percentile bootstrap over rounds ({BOOTSTRAP} resamples, seed 0)"
)


def alternate(
    fns: dict[str, Callable[[], Any]],
    *,
    rounds: int,
    warmup: int = 1,
    inner: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds per call of each callable, one entry per round, in alternating order.

    Every callable is called ``warmup`` times first (in turn). Then for each of
    ``rounds`` rounds every callable is timed once (the median of ``inner`` calls), the
    order rotating by one each round so no callable always runs first.
    """
    if rounds < 1 or inner < 1 or warmup < 0:
        raise ValueError("rounds and inner must be at least 1, warmup at least 0")
    sync = sync or (lambda: None)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            calls = []
            for _ in range(inner):
                sync()
                t0 = time.perf_counter()
                fns[name]()
                sync()
                calls.append((time.perf_counter() - t0) * 1000.0)
            times[name].append(statistics.median(calls))
    return times


def verdict(lo: float, hi: float) -> str:
    if hi < 1.0:
        return "faster"
    if lo > 1.0:
        return "slower"
    return NO_CHANGE


def ratio_interval(
    dense_ms: Sequence[float],
    model_ms: Sequence[float],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired ratio model/dense with a bootstrap interval (see the module docstring).

    >>> r = ratio_interval([10, 11, 10, 12], [5, 5.5, 5, 6])
    >>> r["ratio"], r["ci95"], r["verdict"]
    (0.5, [0.5, 0.5], 'faster')
    """
    d = np.asarray(dense_ms, dtype=float)
    m = np.asarray(model_ms, dtype=float)
    if d.shape != m.shape or d.ndim != 1 or d.size == 0:
        raise ValueError("dense_ms and model_ms must be paired lists of the same non-zero length")
    if (d <= 0).any():
        raise ValueError("dense times must be positive")
    per_round = m / d
    estimate = float(np.median(per_round))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, per_round.size, size=(resamples, per_round.size))
    boot = np.median(per_round[idx], axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = (float(x) for x in np.quantile(boot, [alpha, 1.0 - alpha]))
    return {
        "ratio": round(estimate, 4),
        "ci95": [round(lo, 4), round(hi, 4)],
        "verdict": verdict(lo, hi),
        "speedup": round(1.0 / estimate, 4) if estimate > 0 else None,
        "median_ms": round(float(np.median(m)), 4),
        "dense_median_ms": round(float(np.median(d)), 4),
        "rounds": int(per_round.size),
        "method": METHOD,
    }
