"""``python -m eval.sweep FILE``: the command line of the sweep (run, dry run, budgets)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from compress.errors import UserError
from eval.budget import family_of, parse_budget, pick, rich_table
from eval.report import read_reports
from eval.sweep.runner import Estimator, existing_reports, fmt_seconds, run_sweep, same_threads
from eval.sweep.spec import Sweep, load_sweep

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.sweep",
        description="Run every run of an experiment file (TOML) through eval.run, skipping "
        "runs already done; see recipes/README.md for the format.",
    )
    parser.add_argument("file", type=Path, help="sweep file, e.g. recipes/default.toml")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small benchmark and profile, quick_grid and no skip_quick runs",
    )
    parser.add_argument(
        "--reports",
        type=Path,
        default=None,
        help="reports folder (default: the file's defaults.reports, or reports/)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: the file's defaults.threads)",
    )
    parser.add_argument(
        "--model", action="append", default=None, help="only this model of the sweep (repeatable)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="PATTERN",
        help="only runs whose label matches this shell pattern, e.g. 'rtn*' or "
        "'wanda(pattern=2:4)' (repeatable; labels as --dry-run shows them)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list the runs and whether each is done; run nothing"
    )
    parser.add_argument(
        "--no-retry-failed",
        action="store_true",
        help="skip runs whose report says failed (default: run them again)",
    )
    parser.add_argument(
        "--budget",
        action="append",
        default=None,
        metavar="KIND=FRACTION",
        help="equal-budget table(s) after the runs, e.g. size=0.5, latency=0.5, "
        "nonzeros=0.5, packed=0.25 (default: the file's budgets)",
    )
    parser.add_argument(
        "--search-runs",
        type=int,
        default=None,
        help="extra runs per model, family and budget to find a setting that "
        "meets the budget (default: the file's search_runs)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    if args.search_runs is not None and args.search_runs < 0:
        raise UserError("--search-runs must be at least 0")
    sweep = load_sweep(
        args.file,
        quick=True if args.quick else None,
        reports=args.reports,
        threads=args.threads,
        models=args.model,
        only=args.only,
    )
    if args.budget is not None:
        sweep.budgets = [parse_budget(b) for b in args.budget]
    if args.search_runs is not None:
        sweep.search_runs = args.search_runs

    console = Console(stderr=True)
    if args.dry_run:
        return _dry_run(sweep, console, retry_failed=not args.no_retry_failed)
    outcome = run_sweep(sweep, retry_failed=not args.no_retry_failed, console=console)
    failed = outcome.count("failed")
    console.print(
        f"sweep {sweep.name}: ran {outcome.ran} in {fmt_seconds(outcome.seconds)}, "
        f"{outcome.count('skipped-ok', 'skipped-failed')} skipped (done before), "
        f"{failed} failed; reports in {sweep.reports}/"
    )
    if sweep.budgets:
        models = set(sweep.models if not args.model else args.model)
        reports = [
            r
            for r in read_reports(sweep.reports, warn=log.debug)
            if r["model"]["name"] in models and bool(r.get("quick")) == sweep.quick
        ]
        for budget in sweep.budgets:
            Console().print(rich_table(pick(reports, budget), budget))
    return 1 if failed else 0


def _dry_run(sweep: Sweep, console: Console, retry_failed: bool) -> int:
    done = existing_reports(sweep.reports)
    estimate = Estimator(done.values())
    table = Table(
        title=f"sweep {sweep.name} ({sweep.path})", box=box.SIMPLE_HEAVY, title_justify="left"
    )
    for col in ("#", "model", "run", "family", "state", "estimate"):
        table.add_column(col, justify="right" if col in ("#", "estimate") else "left")
    total = 0.0
    guessed = 0
    for i, job in enumerate(sweep.jobs, 1):
        prior = done.get(job.key)
        state = "to run" if prior is None else prior["status"]
        will_run = prior is None or (prior["status"] != "ok" and retry_failed)
        if prior is not None and prior["status"] == "ok" and not same_threads(prior, sweep.threads):
            state, will_run = "ok, other threads: rerun", True
        est = estimate(job) if will_run else 0.0
        total += est
        style = {"ok": "green", "failed": "red"}.get(state, "")
        guessed += will_run and not estimate.measured(job)
        table.add_row(
            str(i),
            job.model,
            job.label,
            family_of(job.pipeline),
            f"[{style}]{state}[/]" if style else state,
            (fmt_seconds(est) + ("" if estimate.measured(job) else " ?")) if will_run else "",
        )
    out = Console()
    if not out.is_terminal:
        out = Console(width=200)
    out.print(table)
    console.print(
        f"{len(sweep.jobs)} runs, {sum(1 for j in sweep.jobs if j.key not in done)} never run; "
        f"estimate for those to run: {fmt_seconds(total)} (mean wall time of earlier runs of "
        f"the same model; '?': {guessed} runs with no earlier run of their model, guessed at "
        f"{fmt_seconds(estimate.default_quick if sweep.quick else estimate.default)})"
    )
    return 0

