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

The same percentile bootstrap (:func:`bootstrap_interval`, :func:`paired_bootstrap`)
gives every quality metric its interval over windows or examples
(:mod:`eval.benchmark.samples`): it is the suite's one bootstrap.

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

__all__ = [
    "BOOTSTRAP",
    "alternate",
    "bootstrap_interval",
    "paired_bootstrap",
    "ratio_interval",
    "verdict",
]

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


Statistic = Callable[[np.ndarray], np.ndarray]

#: resamples drawn per chunk: (chunk, n) index matrices stay small for n in the thousands
_CHUNK = 250


def _boot(statistics: Sequence[Statistic], n: int, resamples: int, seed: int) -> list[np.ndarray]:
    """Each statistic on the same ``resamples`` index draws (with replacement) of ``0..n-1``.

    A statistic takes an index matrix ``(R, n)`` and returns ``(R,)`` values. Draws come
    in chunks from one seeded generator: the same draws as one ``(resamples, n)`` call.
    """
    if n < 1 or resamples < 1:
        raise ValueError("the bootstrap needs at least one item and one resample")
    rng = np.random.default_rng(seed)
    out: list[list[np.ndarray]] = [[] for _ in statistics]
    for start in range(0, resamples, _CHUNK):
        idx = rng.integers(0, n, size=(min(_CHUNK, resamples - start), n))  # (R, n)
        for values, stat in zip(out, statistics, strict=True):
            values.append(np.asarray(stat(idx), dtype=float))
    return [np.concatenate(v) for v in out]


def _percentiles(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_interval(
    statistic: Statistic,
    n: int,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``n`` items resampled with replacement.

    ``statistic(idx)`` maps an index matrix ``(R, n)`` to ``(R,)`` values (the statistic
    of each resample). Seeded: the same data give the same interval.

    >>> x = np.array([3.0, 3.0, 3.0])
    >>> bootstrap_interval(lambda idx: x[idx].mean(axis=1), x.size)
    (3.0, 3.0)
    """
    (boot,) = _boot([statistic], n, resamples, seed)
    return _percentiles(boot, confidence)


def paired_bootstrap(
    statistic_a: Statistic,
    statistic_b: Statistic,
    n: int,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, float]:
    """Interval of ``statistic_b - statistic_a`` with both on the *same* resampled items.

    The paired bootstrap (Koehn 2004, "Statistical significance tests for machine
    translation evaluation"): each resample draws item indices once and evaluates both
    systems on them, so what the two share (hard windows, easy sentences) cancels out.

    >>> a, b = np.arange(10.0), np.arange(10.0) + 1
    >>> lo, hi = paired_bootstrap(lambda i: a[i].mean(1), lambda i: b[i].mean(1), 10)
    >>> round(lo, 9), round(hi, 9)
    (1.0, 1.0)
    """
    boot_a, boot_b = _boot([statistic_a, statistic_b], n, resamples, seed)
    return _percentiles(boot_b - boot_a, confidence)


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
    lo, hi = bootstrap_interval(
        lambda idx: np.median(per_round[idx], axis=1),
        per_round.size,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
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
