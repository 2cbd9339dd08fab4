"""Two runs compared on the same items: the paired 95% interval of every shared metric.

Two compressed models whose marginal intervals overlap may still differ reliably: the
windows, sentences or examples that are hard for one are hard for the other, and a
paired comparison cancels what they share. Each report written by ``eval.run`` keeps its
metrics' per-item statistics beside it (``<report>.samples.npz``,
:mod:`eval.benchmark.samples`); this module resamples the items once for both runs
(:func:`eval.paired.paired_bootstrap`, the suite's one bootstrap, seeded) and reports
``B - A`` with its interval. A difference whose interval contains 0 is within noise.

A metric is compared only when both runs measured it with the same protocol (corpus,
split, windows, truncation, ...) on the same number of items; the others are listed with
the reason.

    python -m eval.compare --paired reports/a.json reports/b.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.errors import UserError
from eval.paired import paired_bootstrap
from eval.report.schema import ReportError, validate_report

__all__ = ["paired_rows"]


def _load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report, its samples) or a one-line error saying what to do."""
    from eval.benchmark.samples import load_samples

    try:
        report = validate_report(json.loads(Path(path).read_text()))
    except (OSError, ValueError, ReportError) as exc:
        raise UserError(f"{path}: not a readable report ({exc})") from None
    name = report.get("samples_file")
    if not name:
        raise UserError(f"{path} has no per-item samples (written before they were kept, or "
                        "a failed run): run it again with eval.run to compare it paired")
    file = Path(path).with_name(name)
    if not file.is_file():
        raise UserError(f"{path} names {name}, which is not beside it: copy it along with "
                        "the report")
    return report, load_samples(file)


def _comparable(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Why two metric records cannot be paired (None: they can)."""
    pa, pb = dict(a.get("protocol") or {}), dict(b.get("protocol") or {})
    if pa != pb:
        keys = sorted(k for k in set(pa) | set(pb) if pa.get(k) != pb.get(k))
        return "different protocol (" + ", ".join(keys[:4]) + ")"
    return None


def paired_rows(path_a: Path, path_b: Path) -> list[dict[str, Any]]:
    """One row per metric of both reports: values, ``delta`` = B - A and its paired 95%
    interval (``low``, ``high``, ``within_noise``), or ``skipped`` with the reason."""
    ra, sa = _load(path_a)
    rb, sb = _load(path_b)
    mb = {m["name"]: m for m in rb["metrics"]}
    rows = []
    for m in ra["metrics"]:
        name = m["name"]
        if name not in mb:
            continue
        row: dict[str, Any] = {"metric": name, "a": m["value"], "b": mb[name]["value"],
                               "higher_is_better": m.get("higher_is_better")}
        reason = _comparable(m, mb[name])
        if reason is None and (name not in sa or name not in sb):
            reason = "no per-item samples for this metric"
        if reason is None and (sa[name].kind != sb[name].kind or sa[name].n != sb[name].n):
            reason = f"not the same items ({sa[name].n} against {sb[name].n} {sa[name].unit})"
        if reason is not None:
            rows.append(row | {"skipped": reason})
            continue
        lo, hi = paired_bootstrap(sa[name].statistic, sb[name].statistic, sa[name].n)
        rows.append(row | {"delta": row["b"] - row["a"], "low": lo, "high": hi,
                           "within_noise": bool(lo <= 0.0 <= hi), "n": sa[name].n,
                           "unit": sa[name].unit})
    if not rows:
        raise UserError(f"{path_a} and {path_b} share no metric")
    return rows
