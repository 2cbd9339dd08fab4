"""What every section of the written report shares: the writer, number formats, inputs.

:class:`Writer` collects markdown lines and the images embedded; the readers load the
weight analysis and the sweep manifests beside the run reports.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from eval.report.schema import fmt_pm, fmt_value, within_noise
from eval.sweep.spec import MANIFESTS

log = logging.getLogger(__name__)

ANALYSIS_SCHEMA = "compress-suite/weight-analysis"

#: section titles, in order (tests check that each is present).
SECTIONS = (
    "Equal-budget comparison",
    "The techniques",
    "The models",
    "Sparsity structure of the weights",
    "Pruned versions",
    "Benchmarks against the dense model and published numbers",
    "Size and runtime of every run",
    "Quality against cost: the Pareto front",
    "Challenges",
    "Reproducing this report",
)


def fmt_pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.1f}%"


def fmt_mb(v: float | None) -> str:
    return "–" if v is None else f"{v / 1e6:,.1f} MB"


def fmt_ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}x"


def fmt_metric(m: dict[str, Any] | None, noise: bool = True) -> str:
    """A metric for a table: ``20.4 ±0.9``, with `` ≈`` (``noise``; not for the dense row)
    when its paired change against dense is within noise; ``–`` when missing (reports
    before intervals: the value alone)."""
    if m is None:
        return "–"
    text = fmt_value(m.get("value"))
    pm = fmt_pm(m)
    if pm:
        text += f" {pm}"
    return text + (" ≈" if noise and within_noise(m) else "")


def is_agreement(m: dict[str, Any]) -> bool:
    """An agreement-with-dense metric (``kl_*``, ``top1_*``, ``agreement_*``, ``cosine_*``)."""
    return "agreement" in (m.get("protocol") or {})


INTERVAL_NOTE = (
    "`±` is half the 95% bootstrap interval over the metric's windows or examples; `≈` marks "
    "a change against dense within noise (the paired bootstrap of the difference on the same "
    "items has a 95% interval containing 0). Reports written before intervals show the value "
    "alone."
)


def protocol_text(protocol: dict[str, Any] | None) -> str:
    """``key=value, ...`` of a metric's protocol (the data source goes in its own list)."""
    if not protocol:
        return "not recorded"
    parts = []
    for key, value in protocol.items():
        if key == "data" or isinstance(value, (dict, list)):
            continue
        if isinstance(value, str) and (not value.isprintable() or value != value.strip()):
            value = json.dumps(value)
        parts.append(f"{key}={value}")
    return ", ".join(parts).replace("|", "\\|")


def data_sources(runs: list[dict[str, Any]]) -> list[str]:
    """One line per (corpus, split) the metrics were measured on: files and split rule."""
    seen: dict[tuple, str] = {}
    for r in runs:
        for m in r.get("metrics", []):
            data = (m.get("protocol") or {}).get("data")
            if not isinstance(data, dict):
                continue
            key = (data.get("corpus"), data.get("split"))
            if key in seen:
                continue
            files = ", ".join(
                f"{f.get('package')} {f.get('version')} `{f.get('path')}`"
                for f in data.get("files", [])
                if isinstance(f, dict)
            )
            seen[key] = (
                f"`{key[0]}` / `{key[1]}`: {data.get('examples', '?')} examples from "
                f"{files or 'unknown files'}; {data.get('rule', '')}"
            )
    return list(seen.values())


def link(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path, out_dir)).as_posix()


def image(path: Path, out_dir: Path, alt: str) -> str:
    return f"![{alt}]({link(path, out_dir)})\n"


def select_reports(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop ``--quick`` runs of models that have full runs (as ``eval.compare`` does), and
    reports holding only an outside harness's metrics (``eval.lm_eval``: no profile)."""
    reports = [r for r in reports if not r.get("harness")]
    full = {r["model"]["name"] for r in reports if not r.get("quick")}
    return [r for r in reports if not (r.get("quick") and r["model"]["name"] in full)]


def task_of_runs(runs: list[dict[str, Any]]) -> str | None:
    return next((r["model"].get("task") for r in runs if r["model"].get("task")), None)


def read_analysis(folder: Path) -> dict[str, dict[str, Any]]:
    """Weight-analysis results in ``folder`` by model name (``eval.analyze`` output)."""
    out: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("skipping %s: unreadable JSON", path)
            continue
        if isinstance(data, dict) and data.get("schema") == ANALYSIS_SCHEMA:
            data["_path"] = str(path)
            out[str(data.get("model"))] = data
    return out


def read_manifests(folder: Path) -> list[dict[str, Any]]:
    """The sweep manifests (``reports/sweeps/*.json``) in ``folder``."""
    out = []
    for path in (
        sorted((folder / MANIFESTS).glob("*.json")) if (folder / MANIFESTS).is_dir() else []
    ):
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            log.warning("skipping %s: unreadable sweep manifest", path)
    return out


class Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.images: list[str] = []

    def __call__(self, text: str = "") -> None:
        self.lines.append(text)

    def image(self, path: Path, out_dir: Path, alt: str) -> None:
        self.lines.append(image(path, out_dir, alt))
        self.images.append(str(path))

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"

