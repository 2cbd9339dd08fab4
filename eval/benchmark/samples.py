"""Per-item statistics behind each metric: its 95% interval and its paired change against dense.

Every benchmark metric is a function of items (perplexity windows, test sentences,
examples, similarity pairs). :class:`Samples` keeps, per item, just what the metric
needs to be recomputed on any resample of the items:

==========  ======================  =====================================================
kind        arrays (one row/item)   statistic on a resample
==========  ======================  =====================================================
``ppl``     ``nll``, ``tokens``     ``exp(sum nll / sum tokens)``: token-weighted, as the
                                    benchmark computes it (not a mean of window means)
``ratio``   ``num``, ``den``        ``sum num / sum den`` (KL per token, top-1 agreement)
``mean``    ``x``                   mean (accuracy: ``x`` = 1 when correct)
``chrf``    ``stats`` (n, 18)       sacrebleu corpus chrF from the summed sentence stats
``bleu``    ``stats`` (n, 10)       sacrebleu corpus BLEU from the summed sentence stats
``f1``      ``y``, ``pred``         macro-F1 over the classes in labels or predictions
``rho``     ``a``, ``b``            Spearman correlation of ``a`` and ``b``
==========  ======================  =====================================================

The corpus statistics of chrF and BLEU are sums over sentences (sacrebleu's own paired
bootstrap, ``sacrebleu.significance``, resamples them the same way). Intervals and
paired differences come from the suite's one bootstrap, :mod:`eval.paired`.

>>> s = Samples("mean", "examples", {"x": np.array([1.0, 0.0, 1.0, 1.0])})
>>> s.value()
0.75
>>> interval(s)["n"]
4
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sacrebleu.metrics import BLEU, CHRF
from scipy.stats import rankdata

from compress.errors import UserError
from compress.fileio import atomic_write_bytes
from eval.paired import BOOTSTRAP, CONFIDENCE, bootstrap_interval, paired_bootstrap

__all__ = ["Samples", "interval", "vs_dense", "sentence_stats", "pack_samples", "unpack_samples",
           "save_samples", "load_samples"]


def _ppl(a: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    return np.exp(a["nll"][idx].sum(1) / a["tokens"][idx].sum(1))


def _ratio(a: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    return a["num"][idx].sum(1) / a["den"][idx].sum(1)


def _mean(a: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    return a["x"][idx].mean(1)


def _sacrebleu(metric: Any) -> Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]:
    def stat(a: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
        summed = a["stats"][idx].sum(1)  # (R, k) corpus statistics of each resample
        return np.array(
            [metric._compute_score_from_stats([int(v) for v in row]).score for row in summed]
        )

    return stat


def _f1(a: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    y, pred = a["y"][idx], a["pred"][idx]  # (R, n)
    total = np.zeros(idx.shape[0])
    present = np.zeros(idx.shape[0])
    for c in np.union1d(a["y"], a["pred"]):
        tp = ((y == c) & (pred == c)).sum(1)
        wrong = (y == c).sum(1) + (pred == c).sum(1) - 2 * tp  # false negatives + positives
        here = (tp + wrong) > 0  # scikit-learn averages over classes in labels or predictions
        total += np.where(here, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)
        present += here
    return total / np.maximum(present, 1)


def _rho(a: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    ra = rankdata(a["a"][idx], axis=1)  # (R, n), ties get their average rank as in spearmanr
    rb = rankdata(a["b"][idx], axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    denom = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(1) / denom


_STATISTICS: dict[str, Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]] = {
    "ppl": _ppl,
    "ratio": _ratio,
    "mean": _mean,
    "chrf": _sacrebleu(CHRF()),
    "bleu": _sacrebleu(BLEU()),
    "f1": _f1,
    "rho": _rho,
}

_RECOMPUTED = {
    "ppl": "token-weighted perplexity recomputed on each resample",
    "ratio": "token-weighted mean recomputed on each resample",
    "mean": "mean over the resampled items",
    "chrf": "corpus chrF (sacrebleu) from the resampled sentences' statistics",
    "bleu": "corpus BLEU (sacrebleu) from the resampled sentences' statistics",
    "f1": "macro-F1 recomputed on each resample",
    "rho": "Spearman rho recomputed on each resample",
}


@dataclass
class Samples:
    """One metric's per-item statistics (see the module docstring for the kinds)."""

    kind: str
    unit: str
    arrays: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        if self.kind not in _STATISTICS:
            raise UserError(f"unknown sample kind {self.kind!r}; known: {', '.join(_STATISTICS)}")
        self.arrays = {k: np.asarray(v) for k, v in self.arrays.items()}
        sizes = {len(v) for v in self.arrays.values()}
        if len(sizes) != 1 or 0 in sizes:
            raise UserError(f"{self.kind} samples need equally long, non-empty arrays")

    @property
    def n(self) -> int:
        return len(next(iter(self.arrays.values())))

    def statistic(self, idx: np.ndarray) -> np.ndarray:
        """The metric on each row of an index matrix ``(R, n)``: ``(R,)`` values."""
        return _STATISTICS[self.kind](self.arrays, idx)

    def value(self) -> float:
        """The metric on all items, once each (what the benchmark reports)."""
        return float(self.statistic(np.arange(self.n)[None, :])[0])


def _method(s: Samples) -> str:
    return (
        f"percentile bootstrap over {s.unit} ({BOOTSTRAP} resamples, seed 0): "
        f"{_RECOMPUTED[s.kind]}"
    )


def interval(samples: Samples) -> dict[str, Any]:
    """The 95% bootstrap interval of the metric over its items.

    >>> s = Samples("mean", "examples", {"x": np.ones(50)})
    >>> interval(s)["low"], interval(s)["high"]
    (1.0, 1.0)
    """
    lo, hi = bootstrap_interval(samples.statistic, samples.n)
    return {
        "low": _round(lo),
        "high": _round(hi),
        "n": samples.n,
        "unit": samples.unit,
        "confidence": CONFIDENCE,
        "method": _method(samples),
    }


def vs_dense(samples: Samples, dense: Samples) -> dict[str, Any]:
    """Change against the dense model on the same items, with a paired 95% interval.

    ``delta`` is this model's metric minus dense's; ``within_noise`` is True when the
    interval of the difference contains 0 (no difference the items can resolve).

    >>> d = Samples("mean", "examples", {"x": np.array([1.0, 0.0, 1.0, 0.0])})
    >>> vs_dense(d, d)["within_noise"]
    True
    """
    if samples.kind != dense.kind or samples.n != dense.n:
        raise UserError(
            f"cannot pair {samples.kind} over {samples.n} {samples.unit} with the dense "
            f"model's {dense.kind} over {dense.n} {dense.unit}: not the same items"
        )
    lo, hi = paired_bootstrap(dense.statistic, samples.statistic, samples.n)
    return {
        "delta": _round(samples.value() - dense.value()),
        "low": _round(lo),
        "high": _round(hi),
        "within_noise": bool(lo <= 0.0 <= hi) if lo == lo else None,
        "n": samples.n,
        "method": "paired " + _method(samples) + "; the same resampled items for both models",
    }


def sentence_stats(kind: str, hyps: list[str], refs: list[str]) -> np.ndarray:
    """sacrebleu's per-sentence corpus statistics ``(n, k)`` of ``chrf`` or ``bleu``."""
    metric = CHRF() if kind == "chrf" else BLEU()
    return np.asarray(metric._extract_corpus_statistics(list(hyps), [list(refs)]), dtype=np.int64)


def _round(x: float) -> float | None:
    if x != x:
        return None
    return float(f"{x:.6g}")


def pack_samples(samples: dict[str, Samples], prefix: str = "s."
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON-ready description, named arrays) of ``samples``, for one ``.npz``."""
    meta = {name: {"kind": x.kind, "unit": x.unit, "arrays": sorted(x.arrays)}
            for name, x in samples.items()}
    arrays = {f"{prefix}{name}.{k}": v for name, x in samples.items() for k, v in x.arrays.items()}
    return meta, arrays


def unpack_samples(meta: dict[str, Any], data: Any, prefix: str = "s.") -> dict[str, Samples]:
    """Inverse of :func:`pack_samples` (``data``: an opened ``.npz``)."""
    return {name: Samples(m["kind"], m["unit"], {k: data[f"{prefix}{name}.{k}"]
                                                 for k in m["arrays"]})
            for name, m in meta.items()}


def save_samples(path: Path, samples: dict[str, Samples]) -> Path:
    """A run's per-item statistics, one ``.npz`` beside its report (arrays only, no
    pickle, written atomically): what a paired comparison of two runs resamples."""
    meta, arrays = pack_samples(samples)
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps({"samples": meta})), **arrays)
    return atomic_write_bytes(Path(path), buffer.getvalue())


def load_samples(path: Path) -> dict[str, Samples]:
    with np.load(path, allow_pickle=False) as data:
        return unpack_samples(json.loads(str(data["meta"]))["samples"], data)
