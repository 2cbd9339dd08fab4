"""``python -m eval.sweep FILE``: the command line of the sweep (run, dry run, budgets).

``--workers W`` runs W sweeps of the file at once on this machine (each claims runs as
it goes, :mod:`eval.sweep.claims`), then finishes with the budget search and tables;
``--shard K/N`` runs only the K-th of N deterministic, disjoint shares of the runs, so a
Slurm array or a Ray job runs one sweep across machines on a shared reports folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from compress.errors import UserError
from eval.budget import family_of, parse_budget, pick, rich_table
from eval.report import read_reports
from eval.sweep.claims import held_elsewhere, parse_shard
from eval.sweep.runner import (
    estimator_for,
    existing_reports,
    fmt_seconds,
    run_sweep,
    same_threads,
    shard_jobs,
)
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
    parser.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="run only the K-th of N disjoint shares of the runs (by run key), e.g. one "
        "task of a Slurm array (--shard $((SLURM_ARRAY_TASK_ID+1))/$SLURM_ARRAY_TASK_COUNT); "
        "shards may share one reports folder",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="run W sweep processes at once on this machine, each claiming runs as it goes "
        "(mind threads x workers <= CPU cores); default 1",
    )
    parser.add_argument("--no-search", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    if args.search_runs is not None and args.search_runs < 0:
        raise UserError("--search-runs must be at least 0")
    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    shard = parse_shard(args.shard) if args.shard is not None else None
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
    sweep.shard = shard
    sweep.no_search = args.no_search

    console = Console(stderr=True)
    if args.dry_run:
        return _dry_run(sweep, console, retry_failed=not args.no_retry_failed)
    if args.workers > 1:
        failed_workers = _run_workers(argv if argv is not None else sys.argv[1:], args.workers,
                                      console)
        if failed_workers:
            console.print(f"{failed_workers} of {args.workers} workers failed; finishing what "
                          "they left here")
    # after workers, failed runs were retried by them already: report them, do not rerun
    retry = not args.no_retry_failed and args.workers == 1
    outcome = run_sweep(sweep, retry_failed=retry, console=console)
    failed = outcome.count("failed") + (outcome.count("skipped-failed") if args.workers > 1 else 0)
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


def _worker_argv(argv: list[str]) -> list[str]:
    """The command line of one worker: the same, without --workers, and no search."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if a.startswith("--workers="):
            continue
        out.append(a)
    return [*out, "--no-search"]


def _run_workers(argv: list[str], workers: int, console: Console) -> int:
    """Run ``workers`` sweep processes of the same command line; returns how many failed.

    They share the reports folder and claim runs one by one, so each run happens once.
    Ctrl-C stops them all (each leaves its finished reports; unfinished runs rerun later).
    """
    cmd = [sys.executable, "-m", "eval.sweep", *_worker_argv(argv)]
    console.print(f"starting {workers} workers: {' '.join(cmd[1:])}")
    procs = [subprocess.Popen(cmd, env=os.environ | {"COMPRESS_SWEEP_WORKER": str(i + 1)})
             for i in range(workers)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    # 1: some runs failed (their reports say so); anything else: the worker itself failed
    return sum(1 for c in codes if c not in (0, 1))


def _dry_run(sweep: Sweep, console: Console, retry_failed: bool) -> int:
    done = existing_reports(sweep.reports)
    estimate = estimator_for(sweep, done)
    table = Table(
        title=f"sweep {sweep.name} ({sweep.path})", box=box.SIMPLE_HEAVY, title_justify="left"
    )
    for col in ("#", "model", "run", "family", "state", "estimate"):
        table.add_column(col, justify="right" if col in ("#", "estimate") else "left")
    total = 0.0
    guessed = 0
    mine = {j.key for j in shard_jobs(sweep.jobs, sweep.shard)}
    for i, job in enumerate(sweep.jobs, 1):
        if job.key not in mine:
            continue
        prior = done.get(job.key)
        state = "to run" if prior is None else prior["status"]
        if prior is None and held_elsewhere(sweep.reports, job.key):
            state = "running elsewhere"
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

