"""``python -m eval.compare reports/``: the side-by-side table of every run.

One ``rich`` table per model: one row per run, a column per metric and per profile
figure (size on disk, nonzeros, latency, memory), each with its change against
that model's ``identity`` run, green when better and red when worse by the
metric's direction. ``--markdown`` renders the same tables as markdown.

A metric shows ``±`` half its 95% bootstrap interval (over windows or examples,
:mod:`eval.benchmark.samples`). A change marked ``≈`` (dim) is within noise: the
paired bootstrap of the difference against dense on the same items has a 95%
interval that contains 0. Reports written before intervals show neither.

:func:`build_tables` is a pure function from reports to tables; :func:`render`
turns them into a string.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from compress.errors import UserError, did_you_mean, run_main
from eval import protocol
from eval.budget import latency_ratio
from eval.report import dig, fmt_pm, fmt_value, read_reports, runs_by_model, within_noise


@dataclass(frozen=True)
class Column:
    label: str
    get: Callable[[dict[str, Any]], float | None]
    higher_is_better: bool
    fmt: Callable[[float], str]
    timing: bool = False
    #: the metric's record (interval, vs_dense) for metric columns
    detail: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None


def _first(*paths: tuple[str, ...]) -> Callable[[dict[str, Any]], float | None]:
    def get(report: dict[str, Any]) -> float | None:
        for path in paths:
            value = dig(report.get("profile", {}), *path)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        return None

    return get


def _mb(v: float) -> str:
    return f"{v / 1e6:,.1f} MB"


def _count(v: float) -> str:
    return f"{v / 1e6:,.2f} M" if v >= 1e5 else f"{v:,.0f}"


def _ms(v: float) -> str:
    return f"{v:,.1f} ms" if v >= 1 else f"{v:.3f} ms"


PROFILE_COLUMNS = (
    Column("disk", _first(("bytes_on_disk",)), False, _mb),
    Column("nonzero", _first(("params_nonzero",)), False, _count),
    Column("lat 1x128", _first(("latency", "1x128", "median_ms")), False, _ms, timing=True),
    Column("lat 8x128", _first(("latency", "8x128", "median_ms")), False, _ms, timing=True),
    # same-process ratio to dense (eval.paired); 1.00x where its 95% interval contains 1.0
    Column("x dense 1x128", latency_ratio, False, lambda v: f"{v:.2f}x",
           timing=True),
    Column(
        "ms/token", _first(("generate", "ms_per_token"), ("ms_per_token",)), False, _ms, timing=True
    ),
    Column("peak RSS", _first(("peak_rss_bytes",)), False, _mb),
)


def _metric_record(report: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    for metric in (report or {}).get("metrics", []):
        if metric["name"] == name:
            return metric
    return None


def _metric_value(report: dict[str, Any], name: str) -> float | None:
    metric = _metric_record(report, name)
    return float(metric["value"]) if metric is not None else None


def _is_baseline(report: dict[str, Any]) -> bool:
    return [s.get("recipe") for s in report.get("pipeline", [])] in (["identity"], [])


def delta_text(
    value: float | None, base: float | None, higher_is_better: bool, noise: bool = False
) -> Text:
    """``+12.3%`` coloured green when the change is an improvement, red when worse;
    ``≈+0.4%`` (dim) when ``noise``: the paired interval against dense contains 0."""
    if value is None or base is None or base == 0:
        return Text("")
    change = (value - base) / abs(base)
    if abs(change) < 5e-4:
        return Text("0%", style="dim")  # unchanged; ± is for intervals
    better = (change > 0) == higher_is_better
    pct = f"{change * 100:+.1f}%" if abs(change) < 10 else f"{value / base:.3g}x"
    if noise:
        return Text(f"≈{pct}", style="dim")
    return Text(pct, style="green" if better else "red")


def _cell(
    value: float | None,
    base: float | None,
    hib: bool,
    fmt: Callable[[float], str],
    is_base: bool,
    metric: dict[str, Any] | None = None,
) -> Text:
    if value is None:
        return Text("–", style="dim")
    text = Text(fmt(value))
    pm = fmt_pm(metric)
    if pm:
        text.append(f" {pm}", style="dim")
    if not is_base:
        delta = delta_text(value, base, hib, noise=within_noise(metric))
        if delta.plain:
            text.append(" ")
            text.append_text(delta)
    return text


def baseline_of(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest successful ``identity`` run (full runs preferred over ``--quick``, and
    over reports holding only an outside harness's metrics: ``eval.lm_eval``)."""
    candidates = [r for r in runs if _is_baseline(r) and r["status"] == "ok"]
    candidates.sort(key=lambda r: (protocol.RANK[protocol.of_report(r)], not r.get("harness"),
                                   r.get("created", "")))
    return candidates[-1] if candidates else None


def _metric_column(name: str, higher_is_better: bool) -> Column:
    return Column(
        f"{name} {'↑' if higher_is_better else '↓'}",
        lambda report: _metric_value(report, name),
        higher_is_better,
        fmt_value,
        detail=lambda report: _metric_record(report, name),
    )


def _metric_directions(runs: list[dict[str, Any]]) -> dict[str, bool]:
    """Metric name -> higher_is_better, in first-seen order."""
    directions: dict[str, bool] = {}
    for run in runs:
        for metric in run.get("metrics", []):
            directions.setdefault(metric["name"], metric["higher_is_better"])
    return directions


def column_names(reports: list[dict[str, Any]]) -> list[str]:
    """Names ``--columns`` accepts: every metric in ``reports``, then every profile column."""
    return list(_metric_directions(reports)) + [c.label for c in PROFILE_COLUMNS]


def select_columns(reports: list[dict[str, Any]], names: list[str]) -> list[str]:
    """Check ``names`` against :func:`column_names`; returns them in their canonical spelling.

    Matching ignores surrounding spaces and case; an unknown name raises a one-line
    :class:`~compress.errors.UserError` with the closest names and the full list.
    """
    known = column_names(reports)
    by_lower = {k.lower(): k for k in known}
    chosen: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        canonical = name if name in known else by_lower.get(name.lower())
        if canonical is None:
            raise did_you_mean("column", name, known)
        if canonical not in chosen:
            chosen.append(canonical)
    if not chosen:
        raise UserError(f"--columns names no column. Known columns: {', '.join(sorted(known))}")
    return chosen


def build_tables(reports: list[dict[str, Any]], columns: list[str] | None = None) -> list[Table]:
    """One table per model; rows sorted baseline first, then by label.

    ``columns`` (names from :func:`column_names`, checked by :func:`select_columns`)
    picks the metric and profile columns and their order; ``run`` and ``status`` are
    always shown. By default every metric and every profile figure with data is shown.
    """
    tables = []
    for model, runs in runs_by_model(reports).items():
        base = baseline_of(runs)
        directions = _metric_directions(runs)
        available: dict[str, Column] = {
            name: _metric_column(name, hib) for name, hib in directions.items()
        }
        for col in PROFILE_COLUMNS:
            if any(col.get(r) is not None for r in runs):
                available[col.label] = col
        shown = [
            available[n] for n in (columns if columns is not None else available) if n in available
        ]
        task = next((r["model"].get("task") for r in runs if r["model"].get("task")), None)
        title = f"{model}" + (f" ({task})" if task else "")
        caption = (
            "change against the identity run; green better, red worse "
            "(↑ higher is better, ↓ lower is better); ± half the 95% bootstrap interval; "
            "≈ within noise (the paired 95% interval of the change against dense contains 0)"
            if base
            else "no successful identity run: no baseline to compare against"
        )
        busy = [r["profile"] for r in runs if r.get("profile", {}).get("busy_machine")]
        if busy and any(c.timing for c in shown):
            # the rule each report was judged by (reports before eval.machine's rule: load)
            rules = sorted({p.get("busy_rule", "load above 1.5x cores") for p in busy})
            caption += f"; * timed on a busy machine ({'; '.join(rules)}): not comparable"
        table = Table(title=title, caption=caption, box=box.SIMPLE_HEAVY, title_justify="left")
        table.add_column("run", no_wrap=True)
        table.add_column("status")
        for col in shown:
            table.add_column(col.label, justify="right")
        ordered = sorted(
            runs, key=lambda r: (r is not base, r.get("label", ""), r.get("created", ""))
        )
        for run in ordered:
            is_base = run is base
            label = run.get("label") or "+".join(s["recipe"] for s in run["pipeline"])
            if run.get("quick"):
                label += " [quick]"
            elif run.get("protocol") == "lean":
                label += " [lean]"
            if run.get("harness"):  # only an outside harness's metrics (eval.lm_eval)
                label += f" [{run['harness']}]"
            status = (
                Text("ok", style="green")
                if run["status"] == "ok"
                else Text(run["status"], style="red")
            )
            cells: list[Text] = [Text(label, style="bold" if is_base else ""), status]
            busy = bool(run.get("profile", {}).get("busy_machine"))
            for col in shown:
                cell = _cell(
                    col.get(run),
                    col.get(base) if base else None,
                    col.higher_is_better,
                    col.fmt,
                    is_base,
                    col.detail(run) if col.detail else None,
                )
                if busy and col.timing and col.get(run) is not None:
                    cell.append("*", style="yellow")
                cells.append(cell)
            table.add_row(*cells)
            if run["status"] != "ok" and run.get("error"):
                table.add_row(
                    Text(f"  ↳ {run['error'][:120]}", style="dim red"), *[""] * (len(cells) - 1)
                )
        tables.append(table)
    return tables


def render(
    reports: list[dict[str, Any]],
    markdown: bool = False,
    width: int = 220,
    columns: list[str] | None = None,
) -> str:
    """The comparison as text (rich) or markdown (``columns``: see :func:`build_tables`)."""
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=width, force_terminal=False, color_system=None, record=False
    )
    for table in build_tables(reports, columns):
        if markdown:
            table.box = box.MARKDOWN
            title, caption = table.title, table.caption
            table.title = table.caption = None
            console.print(f"### {title}\n")
            console.print(table)
            console.print(f"\n_{caption}_\n")
        else:
            console.print(table)
    return buffer.getvalue()


def _print_paired(a: Path, b: Path, markdown: bool = False) -> int:
    from eval.pairwise import paired_rows

    rows = paired_rows(a, b)
    table = Table(title=f"B - A, paired over the same items\nA: {a.name}\nB: {b.name}",
                  box=box.MARKDOWN if markdown else box.SIMPLE_HEAD)
    for col in ("metric", "A", "B", "B - A [95%]", "verdict"):
        table.add_column(col)
    for r in rows:
        if "skipped" in r:
            table.add_row(r["metric"], f"{r['a']:.4g}", f"{r['b']:.4g}", "", r["skipped"])
            continue
        if r["within_noise"]:
            verdict = "within noise"
        else:
            better = (r["delta"] > 0) == bool(r["higher_is_better"])
            verdict = "B better" if better else "A better"
        table.add_row(r["metric"], f"{r['a']:.4g}", f"{r['b']:.4g}",
                      f"{r['delta']:+.4g} [{r['low']:+.4g}, {r['high']:+.4g}]", verdict)
    Console().print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "reports",
        type=Path,
        nargs="?",
        default=Path("reports"),
        help="folder of JSON reports (default: reports/)",
    )
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument(
        "--model", action="append", default=None, help="only these models (repeatable)"
    )
    parser.add_argument(
        "--include-quick",
        action="store_true",
        help="also show --quick smoke runs (hidden by default when full runs exist)",
    )
    parser.add_argument(
        "--columns",
        default=None,
        metavar="A,B,...",
        help="comma-separated metric/profile columns to show, in this order "
        "(e.g. 'ppl_wiki,disk,lat 1x128'); default: all",
    )
    parser.add_argument(
        "--paired",
        nargs=2,
        type=Path,
        metavar=("A.json", "B.json"),
        help="compare two runs on the same items: B - A with a paired 95%% interval per "
        "shared metric (eval.pairwise)",
    )
    args = parser.parse_args(argv)
    if args.paired:
        return _print_paired(*args.paired, markdown=args.markdown)
    warnings: list[str] = []
    reports = read_reports(args.reports, warn=warnings.append)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    if args.model:
        known = {r["model"]["name"] for r in reports}
        for name in args.model:
            if name not in known:
                raise did_you_mean("model", name, known)
        reports = [r for r in reports if r["model"]["name"] in args.model]
    if not args.include_quick:
        full = {r["model"]["name"] for r in reports if not r.get("quick")}
        reports = [r for r in reports if not (r.get("quick") and r["model"]["name"] in full)]
    if not reports:
        print(f"no reports in {args.reports}", file=sys.stderr)
        return 1
    columns = select_columns(reports, args.columns.split(",")) if args.columns is not None else None
    if args.markdown:
        print(render(reports, markdown=True, columns=columns))
    else:
        Console().print(*build_tables(reports, columns))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
