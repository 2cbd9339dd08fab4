"""``python -m eval.analyze MODEL... --out reports/analysis/``: analyse, write, print tables."""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from compress.errors import UserError
from eval.analyze.core import (
    DEFAULT_THRESHOLDS,
    analyze_folder,
    resolve_model,
    validate_thresholds,
)
from eval.analyze.plots import _count_text, write_outputs
from eval.analyze.readers import _safetensors_entries, checkpoint_files
from eval.analyze.stats import CHUNK_ELEMENTS, _tkey

log = logging.getLogger(__name__)


def _pct(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.2f}%"


def _num(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3g}"


def _stat_columns(thresholds: Sequence[float]) -> list[tuple[str, Callable[[dict], str]]]:
    cols: list[tuple[str, Callable[[dict], str]]] = [
        ("params", lambda s: f"{s['params']:,}")]
    cols += [(f"|w|>{t:g}", lambda s, t=t: _pct(s["frac_above"][_tkey(t)])) for t in thresholds]
    cols += [
        ("zero", lambda s: _pct(s["frac_zero"])),
        ("mean", lambda s: _num(s["mean"])),
        ("std", lambda s: _num(s["std"])),
        ("skew", lambda s: _num(s["skewness"])),
        ("ex.kurt", lambda s: _num(s["excess_kurtosis"])),
        ("max|w|", lambda s: _num(s["max_abs"])),
    ]
    return cols


def build_tables(reports: Sequence[dict[str, Any]]) -> list[Any]:
    """``rich`` tables: models overall, then per model components/groups/roles and blocks."""
    if not reports:
        return []
    cols = _stat_columns(reports[0]["thresholds"])

    def table(title: str, first: str) -> Table:
        t = Table(title=title, title_justify="left")
        t.add_column(first)
        for name, _ in cols:
            t.add_column(name, justify="right")
        return t

    overall = table("Weights by model (fraction of |w| above each threshold)", "model")
    for rep in reports:
        overall.add_row(rep["model"], *(fmt(rep["overall"]) for _, fmt in cols))
    tables = [overall]
    for rep in reports:
        t = table(f"{rep['model']}: by component, group, role, weight/bias", "part")
        sections = (("component", rep["by_component"]), ("group", rep["by_group"]),
                    ("role", rep["by_role"]), ("kind", rep["weights_vs_biases"]))
        for si, (label, section) in enumerate(sections):
            for key, s in section.items():
                t.add_row(f"{label}: {key}", *(fmt(s) for _, fmt in cols))
            if si < len(sections) - 1:
                t.add_section()
        tables.append(t)
        if rep["by_block"]:
            b = table(f"{rep['model']}: by block (all tensors of the block)", "block")
            for blk in rep["by_block"]:
                b.add_row(f"{blk['role']} {blk['index']}", *(fmt(blk["all"]) for _, fmt in cols))
            tables.append(b)
    return tables


def notes(rep: dict[str, Any]) -> list[str]:
    """One-line facts a reader needs next to the tables (tied or skipped tensors)."""
    from eval.grid_analysis import implications

    out = list(implications(rep["model"], rep.get("grid") or {}))
    tied = rep["absent_from_files"]["tied"]
    if tied:
        out.append(f"{rep['model']}: counted what the files store; tied weights stored once "
                   f"are not counted twice (absent: {', '.join(tied[:4])})")
    if rep["absent_from_files"]["untied"]:
        out.append(f"{rep['model']}: {len(rep['absent_from_files']['untied'])} model tensors "
                   "are not in the files (initialised at load time?)")
    if rep["skipped_non_float"]:
        out.append(f"{rep['model']}: skipped {len(rep['skipped_non_float'])} non-float tensors")
    if rep.get("warning"):
        out.append(f"{rep['model']}: {rep['warning']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.analyze",
        description="Where the small weights are: exact streamed weight statistics "
        "(thresholds, moments, per block / component / role) with JSON and PNG plots.",
    )
    parser.add_argument("models", nargs="+",
                        help="zoo names (smollm2-135m, minilm-l6, minilm-l6-sentiment, "
                        "bert2bert-punct), model folders, .safetensors files or hub ids")
    parser.add_argument("--out", type=Path, default=Path("reports/analysis"),
                        help="folder for <model>.json and PNG plots (default: reports/analysis)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS),
                        help="report the fraction of weights with |w| above each "
                        "(default: 1e-3 1e-2 0.1 1)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read pickle (.bin) weights with torch.load(weights_only=True) "
                        "when a folder has no safetensors")
    parser.add_argument("--no-plots", action="store_true", help="write JSON only")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--chunk-elements", type=int, default=CHUNK_ELEMENTS,
                        help=f"elements read per chunk of a large tensor (default: {CHUNK_ELEMENTS})")
    parser.add_argument("--quiet", action="store_true", help="no tables, only the written paths")
    args = parser.parse_args(argv)
    thresholds = validate_thresholds(args.thresholds)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be at least 1")
        torch.set_num_threads(args.threads)

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the tables into 80 columns
        console = Console(width=200)
    slugs: dict[str, str] = {}
    reports = []
    # resolve every name first: a typo in the last one should not cost the first's analysis
    resolved = [(name, *resolve_model(name, args.allow_pickle)) for name in args.models]
    for name, source, path in resolved:
        with Progress(TextColumn(f"{name}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeRemainingColumn(), console=console, transient=True,
                      disable=not console.is_terminal) as progress:
            total = _total_params(path, args.allow_pickle)
            task = progress.add_task(name, total=total)
            rep = analyze_folder(path, thresholds, model=name, source=source,
                                 allow_pickle=args.allow_pickle,
                                 chunk_elements=args.chunk_elements,
                                 on_tensor=lambda n, task=task: progress.advance(task, n))
        if rep["slug"] in slugs.values():  # two arguments with the same name
            rep["slug"] = f"{rep['slug']}-{len(slugs)}"
        slugs[name] = rep["slug"]
        reports.append(rep)
    written = write_outputs(reports, args.out, plots=not args.no_plots)
    if not args.quiet:
        for t in build_tables(reports):
            console.print(t)
        for rep in reports:
            for line in notes(rep):
                console.print(line)
            console.print(f"{rep['model']}: {rep['overall']['params']:,} parameters in "
                          f"{rep['elapsed_s']:.1f} s (streaming {rep['stream_s']:.1f} s, "
                          f"{_count_text(rep['params_per_s'])} params/s), peak RSS "
                          f"{rep['peak_rss_bytes'] / 1e6:.0f} MB")
    for p in written:
        console.print(f"wrote {p}", highlight=False)
    return 0


def _total_params(path: Path, allow_pickle: bool) -> int | None:
    try:
        fmt, files = checkpoint_files(path, allow_pickle)
        if fmt == "safetensors":
            return sum(e.numel for e in _safetensors_entries(files))
    except UserError:
        pass
    return None
