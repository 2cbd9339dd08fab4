"""lm-eval metrics against the dense model on the same documents: a paired bootstrap.

Whether a compressed model's ``suite_sentiment/acc`` of 0.47 differs from dense's 0.48 is
a question about the same 2,000 tweets, so the interval of the *difference* comes from
resampling documents once for both models (each resample: lm-eval's aggregation over the
compressed model's values minus the same over dense's). The dense model's per-document
values are measured once per model and setting and cached under
``$COMPRESS_CACHE/lm_eval_dense/<key>.json``, one entry gathering every task measured; the
key hashes the dense weights (every parameter and buffer) and the setting (lm-eval
version, the suite's task files, limit, shots, batch size, max length). ``python -m eval.lm_eval`` writes the cache when it
evaluates the uncompressed model and, with ``--vs-dense``, evaluates dense first when the
cache has no entry.

A metric then carries ``vs_dense``: ``{"delta", "low", "high", "within_noise", "n",
"method"}``, the fields of the suite's own benchmark metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compress.cache import cache_dir
from compress.fileio import atomic_write_json
from eval.lm_eval.results import statistic
from eval.paired import BOOTSTRAP, paired_bootstrap

log = logging.getLogger(__name__)

VERSION = 1


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, shape, bytes) of ``model``."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dense_key(weights: str, protocol: dict[str, Any]) -> str:
    data = {"version": VERSION, "weights": weights, "protocol": protocol}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cache_path(key: str) -> Path:
    return cache_dir() / "lm_eval_dense" / f"{key}.json"


def documents(metrics: list[dict[str, Any]]) -> dict[str, dict[str, list]]:
    """Metric name -> ``{"ids", "items"}``: the per-document values behind each metric."""
    return {m["name"]: {"ids": m["_documents"][0], "items": m["_documents"][1]}
            for m in metrics if m.get("_documents")}


def load_dense(key: str) -> dict[str, Any]:
    """The cache entry ``{"requested": [task names measured], "documents": {metric: ...}}``
    (empty when there is none)."""
    path = cache_path(key)
    empty: dict[str, Any] = {"requested": [], "documents": {}}
    if not path.exists():
        return empty
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {"requested": list(data["requested"]), "documents": dict(data["documents"])}
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("ignoring an unreadable dense cache entry %s", path)
        return empty


def save_dense(key: str, requested: list[str], docs: dict[str, dict[str, list]]) -> Path:
    """Merge the dense model's documents of the ``requested`` tasks into the cache entry."""
    entry = load_dense(key)
    entry["requested"] = sorted(set(entry["requested"]) | set(requested))
    entry["documents"].update(docs)
    path = cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"version": VERSION, **entry})
    return path


def paired(comp: list[Any], dense: list[Any], aggregate, seed: int = 0
           ) -> tuple[float, float, float] | None:
    """(delta, low, high): ``aggregate(comp) - aggregate(dense)`` and its 95% interval over
    documents resampled once for both (:func:`eval.paired.paired_bootstrap`, seeded);
    None when the lists differ in length or do not aggregate to finite numbers."""
    n = len(comp)
    if n < 2 or len(dense) != n:
        return None
    try:
        delta = float(aggregate(comp)) - float(aggregate(dense))
        lo, hi = paired_bootstrap(statistic(dense, aggregate), statistic(comp, aggregate), n,
                                  seed=seed)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    if not all(math.isfinite(v) for v in (delta, lo, hi)):
        return None
    return delta, lo, hi


def add_vs_dense(metrics: list[dict[str, Any]], dense: dict[str, dict[str, list]],
                 seed: int = 0) -> int:
    """Give every metric whose documents dense also scored its ``vs_dense``; returns how many."""
    done = 0
    for m in metrics:
        docs, ref = m.get("_documents"), dense.get(m["name"])
        if not docs or not ref or list(docs[0]) != list(ref["ids"]):
            continue  # other documents (another limit or version): nothing to pair
        res = paired(docs[1], ref["items"], docs[2], seed)
        if res is None:
            continue
        delta, lo, hi = res
        m["vs_dense"] = {
            "delta": delta, "low": lo, "high": hi, "within_noise": bool(lo <= 0.0 <= hi),
            "n": len(docs[1]),
            "method": f"paired percentile bootstrap over documents ({BOOTSTRAP} resamples, "
            f"seed {seed}); the same resampled documents for both models",
        }
        done += 1
    return done


def public(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records as reports hold them (in-memory ``_`` fields dropped)."""
    return [{k: v for k, v in m.items() if not k.startswith("_")} for m in metrics]
