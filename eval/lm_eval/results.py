"""lm-eval results as the suite's metric records, each with a standard error and a 95% interval.

lm-eval reports ``"<metric>,<filter>"`` values per task and, for most metrics, a
``"<metric>_stderr,<filter>"`` (for perplexities it gives none: ``"N/A"``). The suite
wants an interval for every number, so the interval is the suite's one seeded percentile
bootstrap (:mod:`eval.paired`) over the task's documents, computed from the per-document
values lm-eval logs (its ``samples``) and lm-eval's own aggregation of the metric: the mean
for ``acc``, the word-weighted perplexity for ``word_perplexity``, ... ``stderr`` is
lm-eval's own (None where it gives none).

A record: ``{"name": "suite_sentiment/acc", "value", "higher_is_better", "stderr",
"interval": {"low", "high", "n", "unit", "confidence", "method"}, "protocol": {...}}``,
the interval as the suite's own benchmark metrics record it. The filter
joins the name when it is not lm-eval's ``none``: ``gsm8k/exact_match[strict-match]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from eval.paired import BOOTSTRAP, CONFIDENCE

_SKIP = {"alias", "name", "sample_len", "samples", " "}


def _aggregation(results: dict[str, Any], task: str, metric: str):
    """lm-eval's aggregation function of ``metric`` in ``task`` (configured, else default)."""
    from lm_eval.api.registry import get_aggregation, get_metric_aggregation

    for entry in (results.get("configs", {}).get(task, {}).get("metric_list") or []):
        agg = entry.get("aggregation") if isinstance(entry, dict) else None
        if entry.get("metric") == metric and isinstance(agg, str):
            return get_aggregation(agg)
    return get_metric_aggregation(metric)


def statistic(items: list[Any], aggregate) -> Callable[[np.ndarray], np.ndarray]:
    """lm-eval's ``aggregate`` of the documents each row of an index matrix ``(R, n)`` picks,
    as :mod:`eval.paired`'s bootstrap takes it: ``(R,)`` values. Vectorised for lm-eval's
    mean, perplexity, weighted perplexity and bits per byte; any other aggregation is
    called on each resample's list of documents."""
    from lm_eval.api import metrics as lm

    if aggregate in (lm.mean, lm.perplexity):
        x = np.asarray(items, dtype=float)  # (n,)
        if aggregate is lm.mean:
            return lambda idx: x[idx].mean(axis=1)
        return lambda idx: np.exp(-x[idx].mean(axis=1))
    if aggregate in (lm.weighted_perplexity, lm.bits_per_byte):
        pairs = np.asarray(items, dtype=float)  # (n, 2): log-likelihood, words or bytes
        ll, count = pairs[:, 0], pairs[:, 1]
        if aggregate is lm.weighted_perplexity:
            return lambda idx: np.exp(-ll[idx].sum(axis=1) / count[idx].sum(axis=1))
        return lambda idx: -ll[idx].sum(axis=1) / count[idx].sum(axis=1) / math.log(2)
    return lambda idx: np.asarray([float(aggregate([items[i] for i in row])) for row in idx])


def bootstrap(items: list[Any], aggregate, seed: int = 0) -> tuple[float, float] | None:
    """The 95% interval of ``aggregate(items)`` over documents resampled with replacement
    (:func:`eval.paired.bootstrap_interval`, seeded); None with fewer than 2 documents or
    when it does not aggregate to finite numbers."""
    from eval.paired import bootstrap_interval

    if len(items) < 2:
        return None
    try:
        lo, hi = bootstrap_interval(statistic(items, aggregate), len(items), seed=seed)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def _interval(items: list[Any], aggregate, value: float, theirs: float | None, seed: int
              ) -> dict[str, Any] | None:
    """The interval record of a metric: the bootstrap over its documents, else a normal
    interval from lm-eval's own stderr, else None. Its fields are those of the suite's
    benchmark metrics (:mod:`eval.benchmark.samples`): low, high, n, unit, confidence, method."""
    boot = bootstrap(items, aggregate, seed) if items else None
    if boot is not None:
        lo, hi = boot
        method = (f"percentile bootstrap over documents ({BOOTSTRAP} resamples, seed {seed}): "
                  "lm-eval's aggregation of each resample")
    elif theirs is not None and math.isfinite(theirs):
        lo, hi = value - 1.96 * theirs, value + 1.96 * theirs
        method = "normal approximation from lm-eval's stderr"
    else:
        return None
    return {"low": lo, "high": hi, "n": len(items), "unit": "documents",
            "confidence": CONFIDENCE, "method": method}


def _data_protocol(task: str) -> dict[str, Any] | None:
    from eval.lm_eval import OFFLINE_TASKS

    if task not in OFFLINE_TASKS:
        return None
    from compress import data

    return data.protocol(*OFFLINE_TASKS[task])


def _metric_keys(values: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, filter) of every value key of one task's results."""
    out = []
    for key in values:
        if key in _SKIP or "," not in key or "_stderr," in key:
            continue
        metric, _, filt = key.partition(",")
        out.append((metric, filt))
    return out


def _one_metric(results: dict[str, Any], task: str, metric: str, filt: str,
                seed: int) -> dict[str, Any] | None:
    values = results["results"][task]
    value = values[f"{metric},{filt}"]
    hib = results.get("higher_is_better", {}).get(task, {}).get(metric)
    if not isinstance(value, (int, float)) or not isinstance(hib, bool):
        return None  # not a number, or no direction to compare by
    docs = sorted((s for s in results.get("samples", {}).get(task, [])
                   if s.get("filter") == filt and metric in s), key=lambda s: int(s["doc_id"]))
    items = [s[metric] for s in docs]
    aggregate = _aggregation(results, task, metric)
    theirs = values.get(f"{metric}_stderr,{filt}")
    theirs = float(theirs) if isinstance(theirs, (int, float)) else None
    interval = _interval(items, aggregate, value, theirs, seed)
    n = results.get("n-samples", {}).get(task, {})
    protocol = {
        "harness": "lm-eval",
        "lm_eval_version": results.get("lm_eval_version"),
        "task": task,
        "task_version": results.get("versions", {}).get(task),
        "metric": metric,
        "filter": filt,
        "num_fewshot": results.get("n-shot", {}).get(task),
        "n_documents": n.get("effective"),
        "n_available": n.get("original"),
    }
    data = _data_protocol(task)
    if data is not None:
        protocol["data"] = data
    name = f"{task}/{metric}" + ("" if filt == "none" else f"[{filt}]")
    return {
        "name": name,
        "value": float(value),
        "higher_is_better": hib,
        "stderr": theirs,
        "interval": interval,
        "protocol": protocol,
        # in memory only (eval.lm_eval.paired): the values behind the metric, per document
        "_documents": ([int(s["doc_id"]) for s in docs], items, aggregate),
    }


def metrics_from_results(results: dict[str, Any], *, limit: int | float | None = None,
                         seed: int = 0) -> list[dict[str, Any]]:
    """Every numeric metric of every task in lm-eval's ``results`` as a suite metric record."""
    out = []
    for task in sorted(results.get("results", {})):
        for metric, filt in _metric_keys(results["results"][task]):
            record = _one_metric(results, task, metric, filt, seed)
            if record is not None:
                record["protocol"]["limit"] = limit
                out.append(record)
    return out


def run_record(results: dict[str, Any], limit: int | float | None) -> dict[str, Any]:
    """What an lm-eval pass ran: version, per task its version, shots and documents."""
    return {
        "lm_eval_version": results.get("lm_eval_version"),
        "limit": limit,
        "tasks": {
            task: {
                "version": results.get("versions", {}).get(task),
                "num_fewshot": results.get("n-shot", {}).get(task),
                "documents": results.get("n-samples", {}).get(task),
            }
            for task in sorted(results.get("results", {}))
        },
        "max_length": results.get("max_length"),
    }
