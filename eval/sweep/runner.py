"""Running a sweep: skip what is done, run the rest with progress, write the manifest.

Runs are keyed by :func:`eval.report.run_key`; a rerun skips every run whose report
says ``ok`` (and was measured with the sweep's thread count) and retries failed ones
unless told not to. Reports are written atomically at the end of each run, so an
interrupted sweep resumes where it stopped. ``reports/sweeps/<name>.json`` (the
manifest) lists the sweep's runs, their keys and state.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from compress.errors import UserError
from compress.fileio import TMP_PREFIX, atomic_write_json
from eval.budget import family_of, primary_metric
from eval.report import Report, read_reports
from eval.run import run_pipeline
from eval.sweep.checks import check_pipeline, traits_of
from eval.sweep.search import run_searches
from eval.sweep.spec import MANIFESTS, Job, Sweep, model_config_loader

log = logging.getLogger(__name__)

def existing_reports(folder: Path) -> dict[str, dict[str, Any]]:
    """Reports in ``folder`` by run key (the newest file wins)."""
    if not folder.is_dir():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for r in read_reports(folder, warn=log.debug):
        key = r.get("key")
        if key and (key not in out or r.get("created", "") >= out[key].get("created", "")):
            out[key] = r
    return out


def same_threads(report: dict[str, Any], threads: int | None) -> bool:
    """True unless the sweep pins ``threads`` and the report was measured with others."""
    if threads is None:
        return True
    recorded = (report.get("environment") or {}).get("threads")
    return recorded is None or recorded == threads


class Estimator:
    """Seconds a job will take, from the wall times of reports already written.

    The mean of earlier ok runs of the same model, pipeline recipes and quick flag;
    else of the same model and quick flag; else a guess (``default`` full, ``default_quick``
    quick). :meth:`measured` says whether the estimate rests on a measurement.
    """

    def __init__(
        self, reports: Iterable[dict[str, Any]], default: float = 180.0, default_quick: float = 30.0
    ):
        self.by_pipe: dict[tuple, list[float]] = {}
        self.by_model: dict[tuple, list[float]] = {}
        self.default = default
        self.default_quick = default_quick
        for r in reports:
            self.add(r)

    def add(self, report: dict[str, Any]) -> None:
        wall = report.get("wall_time_s")
        if not isinstance(wall, (int, float)) or report.get("status") != "ok":
            return
        model, quick = report["model"]["name"], bool(report.get("quick"))
        recipes = tuple(s.get("recipe") for s in report.get("pipeline", []))
        self.by_pipe.setdefault((model, quick, recipes), []).append(float(wall))
        self.by_model.setdefault((model, quick), []).append(float(wall))

    def measured(self, job: Job) -> bool:
        return (job.model, job.quick) in self.by_model

    def __call__(self, job: Job) -> float:
        for table, key in (
            (self.by_pipe, (job.model, job.quick, job.recipes)),
            (self.by_model, (job.model, job.quick)),
        ):
            values = table.get(key)
            if values:
                return sum(values) / len(values)
        return self.default_quick if job.quick else self.default


def fmt_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _summary(report: dict[str, Any]) -> str:
    name = primary_metric(report)
    for m in report.get("metrics", []):
        if m["name"] == name:
            return f"{name}={m['value']:.4g}"
    return ""


@dataclass
class Outcome:
    """What a sweep did: job key -> ("ok" | "failed" | "skipped-ok" | "skipped-failed")."""

    status: dict[str, str] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    ran: int = 0
    seconds: float = 0.0

    def count(self, *states: str) -> int:
        return sum(1 for s in self.status.values() if s in states)


class Runner:
    """Runs jobs one by one with a rich progress display; skips finished ones."""

    def __init__(self, sweep: Sweep, console, retry_failed: bool, run_fn: Callable | None):
        self.sweep = sweep
        self.console = console
        self.retry_failed = retry_failed
        self.run_fn = run_fn
        self.done = existing_reports(sweep.reports)
        self.estimate = Estimator(self.done.values())
        self.outcome = Outcome()
        self.jobs: list[Job] = list(sweep.jobs)  # every job of the sweep, search runs included
        self.pending: list[Job] = []
        self.current: tuple[Job, float] | None = None

    def remaining(self) -> float:
        total = sum(self.estimate(j) for j in self.pending)
        if self.current is not None:
            job, t0 = self.current
            total += max(0.0, self.estimate(job) - (time.perf_counter() - t0))
        return total

    def needs_run(self, job: Job) -> bool:
        prior = self.done.get(job.key)
        if prior is None:
            return True
        if prior.get("status") == "ok":
            # timings taken with another thread count are another measurement: redo them
            return not same_threads(prior, self.sweep.threads)
        return self.retry_failed

    def _progress(self) -> Progress:
        runner = self

        class Remaining(ProgressColumn):
            """Estimated time left: earlier wall times of the same model and pipeline."""

            def render(self, task) -> Text:
                if not task.fields.get("overall"):
                    return Text("")
                return Text(f"~{fmt_seconds(runner.remaining())} left", style="cyan")

        return Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            Remaining(),
            console=self.console,
            transient=True,
        )

    def run_jobs(self, jobs: list[Job], title: str) -> None:
        todo = [j for j in jobs if self.needs_run(j)]
        for j in jobs:
            if j not in todo:
                prior = self.done[j.key]
                self.outcome.status[j.key] = f"skipped-{prior['status']}"
                self.outcome.paths[j.key] = prior.get("_path", "")
        if not todo:
            return
        self.pending = list(todo)
        progress = self._progress()
        with progress:
            overall = progress.add_task(title, total=len(todo), overall=True)
            for i, job in enumerate(todo, 1):
                self.pending.remove(job)
                self.current = (job, time.perf_counter())
                desc = f"[{i}/{len(todo)}] {job.model} · {job.label}"
                task = progress.add_task(f"{desc} · starting", total=None, overall=False)

                def stage(name: str, task=task, desc=desc) -> None:
                    progress.update(task, description=f"{desc} · {name}")

                path, report = self._run_one(job, stage)
                self.current = None
                progress.remove_task(task)
                progress.advance(overall)
                self._record(job, path, report)
                wall = fmt_seconds(report.get("wall_time_s") or 0)
                if report["status"] == "ok":
                    progress.console.print(
                        f"[green]ok[/] [{i}/{len(todo)}] {job.model} {job.label}: "
                        f"{_summary(report)} ({wall})"
                    )
                else:
                    progress.console.print(
                        f"[red]failed[/] [{i}/{len(todo)}] {job.model} {job.label}: "
                        f"{report.get('error')} ({wall})"
                    )

    def _record(self, job: Job, path: Path, report: dict[str, Any]) -> None:
        report = dict(report, _path=str(path))
        self.done[job.key] = report
        self.estimate.add(report)
        self.outcome.status[job.key] = report["status"]
        self.outcome.paths[job.key] = str(path)
        self.outcome.ran += 1
        write_manifest(self.sweep, self.outcome, self.jobs)

    def _run_one(self, job: Job, stage: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
        if any(traits_of(r).divides(c) for r, c in zip(job.recipes, job.configs, strict=True)):
            # the width checks again, now with the model's own config (built if needed)
            try:
                stage("check")
                check_pipeline(job.configs, model_config_loader(job.model, build=True))
            except UserError as exc:
                report = Report(
                    model={"name": job.model},
                    pipeline=job.pipeline,
                    quick=job.quick,
                    status="failed",
                    error=str(exc),
                    wall_time_s=0.0,
                )
                return report.write(self.sweep.reports), report.to_dict()
        run_fn = self.run_fn or run_pipeline
        return run_fn(
            job.model,
            list(job.configs),
            quick=job.quick,
            reports_dir=self.sweep.reports,
            task=self.sweep.task,
            threads=self.sweep.threads,
            calibration=self.sweep.calibration,
            stage=stage,
        )


def write_manifest(sweep: Sweep, outcome: Outcome, jobs: list[Job]) -> Path:
    """``reports/sweeps/<name>.json``: which runs the sweep holds, their keys and state."""
    data = {
        "sweep": sweep.name,
        "file": str(sweep.path),
        "description": sweep.description,
        "quick": sweep.quick,
        "models": sweep.models,
        "budgets": [str(b) for b in sweep.budgets],
        "jobs": [
            {
                "key": j.key,
                "model": j.model,
                "label": j.label,
                "family": family_of(j.pipeline),
                "origin": j.origin,
                "state": outcome.status.get(j.key, "pending"),
                "report": os.path.basename(outcome.paths.get(j.key, "")) or None,
            }
            for j in jobs
        ],
    }
    return atomic_write_json(sweep.reports / MANIFESTS / f"{sweep.name}.json", data)


def _clean_stale_tmp(folder: Path, older_than_s: float = 600) -> None:
    """Remove ``.tmp-`` leftovers of killed writers (old enough not to be in flight)."""
    if not folder.is_dir():
        return
    now = time.time()
    for p in folder.iterdir():
        if p.name.startswith(TMP_PREFIX) and p.is_file() and now - p.stat().st_mtime > older_than_s:
            p.unlink(missing_ok=True)


def run_sweep(
    sweep: Sweep,
    *,
    retry_failed: bool = True,
    console=None,
    run_fn: Callable | None = None,
) -> Outcome:
    """Run every job not already done, then the budget searches; returns the outcome.

    ``run_fn`` defaults to :func:`eval.run.run_pipeline` (tests pass their own).
    """
    console = console or Console(stderr=True)
    sweep.reports.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(sweep.reports)
    runner = Runner(sweep, console, retry_failed, run_fn)
    todo = [j for j in sweep.jobs if runner.needs_run(j)]
    est = sum(runner.estimate(j) for j in todo)
    console.print(
        f"sweep [bold]{sweep.name}[/]: {len(sweep.jobs)} runs on "
        f"{len({j.model for j in sweep.jobs})} models, "
        f"{len(sweep.jobs) - len(todo)} done already, {len(todo)} to run"
        + (f" (estimate {fmt_seconds(est)})" if todo else "")
    )
    t0 = time.perf_counter()
    runner.run_jobs(sweep.jobs, f"sweep {sweep.name}")
    if sweep.budgets and sweep.search_runs > 0:
        run_searches(sweep, runner)
    runner.outcome.seconds = time.perf_counter() - t0
    write_manifest(sweep, runner.outcome, runner.jobs)
    return runner.outcome

