"""Exact, streamed weight statistics: moments merged slice by slice, threshold counts and
the float32 bit histogram (see :mod:`eval.analyze`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: elements per chunk: float64 temporaries of a chunk stay near 150 MB.
CHUNK_ELEMENTS = 1 << 22
#: elements per compute slice: float64 temporaries of a slice stay in the CPU cache.
SUB_CHUNK = 1 << 16
#: histogram index = float32 bits >> HIST_SHIFT (sign, exponent, 5 mantissa bits).
HIST_SHIFT = 18
HIST_BINS = 1 << (32 - HIST_SHIFT)  # 16384, both signs
HIST_HALF = HIST_BINS // 2  # magnitude bins per sign


@dataclass
class Moments:
    """Exact streamed statistics of a set of values (float64 accumulation).

    ``merge`` is the pairwise update of Chan et al. / Pebay: merging the
    statistics of two disjoint sets gives those of their union, whatever the
    split, so chunks can be processed in any order and size.
    """

    thresholds: tuple[float, ...]
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0
    zeros: int = 0
    above: list[int] = field(default_factory=list)
    max_abs: float = 0.0
    nonfinite: int = 0
    tensors: int = 0

    def __post_init__(self) -> None:
        if not self.above:
            self.above = [0] * len(self.thresholds)

    def merge(self, o: Moments) -> None:
        if o.n == 0:
            self.nonfinite += o.nonfinite
            self.tensors += o.tensors
            return
        na, nb = self.n, o.n
        n = na + nb
        delta = o.mean - self.mean
        d_n = delta / n
        m2 = self.m2 + o.m2 + delta * d_n * na * nb
        m3 = (
            self.m3 + o.m3
            + delta * d_n * d_n * na * nb * (na - nb)
            + 3.0 * d_n * (na * o.m2 - nb * self.m2)
        )
        m4 = (
            self.m4 + o.m4
            + delta * d_n * d_n * d_n * na * nb * (na * na - na * nb + nb * nb)
            + 6.0 * d_n * d_n * (na * na * o.m2 + nb * nb * self.m2)
            + 4.0 * d_n * (na * o.m3 - nb * self.m3)
        )
        self.n, self.mean, self.m2, self.m3, self.m4 = n, self.mean + d_n * nb, m2, m3, m4
        self.zeros += o.zeros
        self.above = [a + b for a, b in zip(self.above, o.above, strict=True)]
        self.max_abs = max(self.max_abs, o.max_abs)
        self.nonfinite += o.nonfinite
        self.tensors += o.tensors

    def summary(self) -> dict[str, Any]:
        """JSON-ready statistics; undefined ones (no values, zero variance) are None."""
        n = self.n
        spread = n > 0 and self.m2 > 0
        return {
            "params": n,
            "tensors": self.tensors,
            "frac_above": {
                _tkey(t): (a / n if n else None)
                for t, a in zip(self.thresholds, self.above, strict=True)
            },
            "count_above": {_tkey(t): a for t, a in zip(self.thresholds, self.above, strict=True)},
            "frac_zero": self.zeros / n if n else None,
            "zeros": self.zeros,
            "mean": self.mean if n else None,
            "std": math.sqrt(self.m2 / n) if n else None,
            "skewness": math.sqrt(n) * self.m3 / self.m2**1.5 if spread else None,
            "excess_kurtosis": n * self.m4 / self.m2**2 - 3.0 if spread else None,
            "max_abs": self.max_abs if n else None,
            "nonfinite": self.nonfinite,
        }


def _tkey(t: float) -> str:
    return f"{t:g}"


def _round_down_f32(t: float) -> float:
    """The largest float32 not above ``t``: for float32 ``x``, ``x > t`` iff ``x > this``."""
    f = float(torch.tensor(t, dtype=torch.float32))
    if f > t:
        f = float(torch.nextafter(torch.tensor(f, dtype=torch.float32),
                                  torch.tensor(-math.inf, dtype=torch.float32)))
    return f


def magnitude_edges(lo: int, hi: int) -> list[float]:
    """Lower edges of magnitude bins ``lo..hi`` (bin m covers [edge(m), edge(m+1)))."""
    m = torch.arange(lo, hi + 1, dtype=torch.int64)
    return (m << HIST_SHIFT).to(torch.int32).view(torch.float32).tolist()


class _Workspace:
    """Reused buffers for one slice (fresh big allocations would page-fault every time)."""

    def __init__(self, thresholds: tuple[float, ...]):
        self.thresholds = thresholds
        # float32 |x| > t  <=>  |x| > the largest float32 <= t (compared in float32)
        self.thresholds32 = [np.float32(_round_down_f32(t)) for t in thresholds]
        self.size = 0

    def ensure(self, n: int) -> None:
        if n > self.size:
            self.size = n
            self.x64 = torch.empty(n, dtype=torch.float64)
            self.d2 = torch.empty(n, dtype=torch.float64)
            self.abs = torch.empty(n, dtype=torch.float32)
            self.bits = torch.empty(n, dtype=torch.int32)
            self.mask = np.empty(n, dtype=bool)


def _slice_stats(x: torch.Tensor, ws: _Workspace) -> tuple[Moments, torch.Tensor]:
    """Exact statistics of one slice (float32 or float64, 1-D) and its bit histogram."""
    n = x.numel()
    ws.ensure(n)
    is32 = x.dtype == torch.float32
    a = torch.abs(x, out=ws.abs[:n]) if is32 else x.abs()
    m = Moments(ws.thresholds)
    if n == 0:
        return m, torch.zeros(HIST_BINS, dtype=torch.int64)
    max_abs = float(a.max())
    if not math.isfinite(max_abs):  # NaN propagates into max; count and drop them
        finite = torch.isfinite(x)
        bad = int((~finite).sum())
        m, hist = _slice_stats(x[finite], ws)
        m.nonfinite += bad
        return m, hist
    # histogram: arithmetic shift of the bits puts negatives in 0..HALF-1, positives above
    x32 = x if is32 else x.float()
    bits = torch.bitwise_right_shift(x32.view(torch.int32), HIST_SHIFT, out=ws.bits[:n])
    hist = torch.bincount(bits.add_(HIST_HALF), minlength=HIST_BINS)
    # threshold counts in numpy: its compare + count_nonzero is several times faster here
    an, mask = a.numpy(), ws.mask[:n]
    cuts = ws.thresholds32 if is32 else ws.thresholds
    m.above = [int(np.count_nonzero(np.greater(an, t, out=mask))) for t in cuts]
    m.zeros = n - int(np.count_nonzero(an))
    m.max_abs = max_abs
    # central moments about the slice mean, in float64 (an exact upcast of the values)
    x64, d2 = ws.x64[:n], ws.d2[:n]
    x64.copy_(x)
    mean = float(x64.sum()) / n
    x64.sub_(mean)
    torch.mul(x64, x64, out=d2)
    m.n, m.mean = n, mean
    m.m2 = float(d2.sum())
    m.m3 = float(torch.dot(d2, x64))
    m.m4 = float(torch.dot(d2, d2))
    return m, hist


class _Groups:
    """Named :class:`Moments`, created on first use."""

    def __init__(self, thresholds: tuple[float, ...]):
        self.thresholds = thresholds
        self.items: dict[str, Moments] = {}

    def __getitem__(self, key: str) -> Moments:
        if key not in self.items:
            self.items[key] = Moments(self.thresholds)
        return self.items[key]

    def summaries(self, order: Sequence[str] = ()) -> dict[str, Any]:
        keys = [k for k in order if k in self.items] + sorted(
            k for k in self.items if k not in order)
        return {k: self.items[k].summary() for k in keys}


def _histograms(hist: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The bit histogram, trimmed to the populated magnitude bins."""
    mags = sum(h[:HIST_HALF] + h[HIST_HALF:] for h in hist.values())
    nz = torch.nonzero(mags).ravel()
    lo, hi = (int(nz[0]), int(nz[-1])) if nz.numel() else (0, 0)
    return {
        "format": f"float32 bits >> {HIST_SHIFT}: 32 log-spaced bins per octave; magnitude "
        "bin m (lo..hi) covers edges[m-lo] <= |w| < edges[m-lo+1]; 'neg' and 'pos' count "
        "w < 0 and w >= 0 (zeros are in bin 0 of either sign)",
        "lo": lo,
        "hi": hi,
        "edges": magnitude_edges(lo, hi + 1),
        "kinds": {k: {"neg": h[lo: hi + 1].tolist(),
                      "pos": h[HIST_HALF + lo: HIST_HALF + hi + 1].tolist()}
                  for k, h in hist.items()},
    }
