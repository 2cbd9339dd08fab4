"""Report pieces of issue 22: whether weights already sit on a low-bit grid (what that
makes uninformative), and every method on one calibration set (``bench/quant_quality.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval.grid_analysis import implications
from eval.report.common import Writer, protocol_text
from eval.report.schema import dig, fmt_value


def grid_paragraph(w: Writer, model: str, data: dict[str, Any]) -> None:
    """Whether the weights already sit on a low-bit grid, and what that makes uninformative."""
    grid = data.get("grid")
    if grid is None:
        w(f"_Low-bit grid check: not in this analysis; rerun `python -m eval.analyze {model}`._")
        w()
        return
    for line in implications(model, grid):
        w(f"- {line}")
    w()


def section_method_bench(w: Writer, reports_dir: Path) -> None:
    """Every method on one calibration set (``bench/quant_quality.py``), ratios to dense."""
    for path in sorted((reports_dir / "bench").glob("method_quality_*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        results = {k: v for k, v in doc.get("results", {}).items() if v.get("status") == "ok"}
        if not results:
            continue
        metrics = sorted({m for v in results.values() for m in v.get("metrics", {})})
        cal = doc.get("calibration") or {}
        first = next(iter(results.values())).get("metric_protocols", {})
        w(f"### Every method on one calibration set: {doc.get('model')}")
        w()
        data = ("so every calibrating method read the same "
                f"{cal.get('sequences', '?')} x {cal.get('seq_len', '?')} calibration tokens "
                f"({cal.get('tokens', '?')} tokens of {cal.get('source', '?')}, sha256 "
                f"{cal.get('sha256', '?')})" if cal else "no variant here reads calibration data")
        w(
            f"`bench/quant_quality.py` ({path.name}): one model load, one context, {data}; "
            + ", ".join(f"{m}: {protocol_text(first.get(m))}" for m in metrics)
            + ". Weight-only formats are simulated (rounded weights in float)."
        )
        w()
        head = " | ".join(f"{m} | / dense" for m in metrics)
        w(f"| variant | recipe | {head} | bits/weight | sparsity |")
        w("|---|---|" + "--:|--:|" * len(metrics) + "--:|--:|")
        for name, v in results.items():
            info = v.get("info", {})
            bpw = dig(info, "quant", "target_bits_per_weight")
            sp = dig(info, "sparsity", "measured")
            ratio = {m: dig(v, "ratio_to_dense", m) for m in metrics}
            cells = " | ".join(f"{fmt_value(v['metrics'].get(m))} | "
                               f"{'–' if ratio[m] is None else f'{ratio[m]:.3f}x'}"
                               for m in metrics)
            w(f"| {name} | {v.get('recipe', '')} | {cells} | "
              f"{'' if bpw is None else f'{bpw:.2f}'} | {'' if sp is None else f'{sp:.3f}'} |")
        w()
