"""Running a sweep: skip what is done, run the rest with progress, write the manifest.

Runs are keyed by :func:`eval.report.run_key`; a rerun skips every run whose report
says ``ok`` (and was measured with the sweep's thread count) and retries failed ones
unless told not to. Reports are written atomically at the end of each run, so an
interrupted sweep resumes where it stopped. ``reports/sweeps/<name>.json`` (the
manifest) lists the sweep's runs, their keys and state.

Several sweeps may share one reports folder (``--workers``, ``--shard``, or two people
at once): each run is claimed with a lock first (:mod:`eval.sweep.claims`); a run
claimed elsewhere is left to its holder and waited for at the end, and a run whose
report appeared since the sweep started is not run again. The manifest is merged
under a lock from what every sweep has finished.
"""

from __future__ import annotations

import json
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
from eval import protocol
from eval.benchmark.suites import SUITES
from eval.budget import family_of, primary_metric
from eval.profiler import ROUNDS
from eval.report import Report, read_reports, validate_report
from eval.run import run_pipeline
from eval.sweep.checks import check_pipeline, traits_of
from eval.sweep.claims import folder_lock, held_elsewhere, holder, shard_of, try_claim, wait_claim
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


def report_on_disk(folder: Path, key: str) -> dict[str, Any] | None:
    """The report of run ``key`` as it is on disk now (written by any sweep), or None."""
    import json

    for path in sorted(Path(folder).glob(f"*__{key}.json")):
        try:
            data = validate_report(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
        if data.get("key") == key:
            return dict(data, _path=str(path))
    return None


def same_threads(report: dict[str, Any], threads: int | None) -> bool:
    """True unless the sweep pins ``threads`` and the report was measured with others."""
    if threads is None:
        return True
    recorded = (report.get("environment") or {}).get("threads")
    return recorded is None or recorded == threads


def _configs_key(configs: list[Any]) -> str:
    return json.dumps(configs, sort_keys=True, default=str)


#: the estimator's table of full runs' times scaled to the lean protocol
LEAN_FROM_FULL = "lean (from full)"


class Estimator:
    """Seconds a job will take, from the wall times of reports already written.

    The mean of earlier ok runs of the same model, configs and protocol
    (:mod:`eval.protocol`); else of the same model, pipeline recipes and protocol; else of
    the same model and protocol; at each level a lean job falls back on full runs' times
    less what lean saves (:func:`lean_saving`); else a guess (``default``
    full, ``default_quick`` quick). :meth:`measured` says whether the estimate rests on a measurement.
    """

    def __init__(
        self, reports: Iterable[dict[str, Any]], default: float = 180.0, default_quick: float = 30.0
    ):
        self.by_pipe: dict[tuple, list[float]] = {}
        self.by_model: dict[tuple, list[float]] = {}
        self.by_config: dict[tuple, list[float]] = {}
        self.default = default
        self.default_quick = default_quick
        for r in reports:
            self.add(r)

    def add(self, report: dict[str, Any]) -> None:
        wall = report.get("wall_time_s")
        if not isinstance(wall, (int, float)) or report.get("status") != "ok":
            return
        model, proto = report["model"]["name"], protocol.of_report(report)
        recipes = tuple(s.get("recipe") for s in report.get("pipeline", []))
        configs = _configs_key([s.get("config") for s in report.get("pipeline", [])])
        walls = [(proto, float(wall))]
        if proto == "full":  # what the run would take with the lean protocol
            walls.append((LEAN_FROM_FULL, float(wall) - lean_saving(report)))
        for p, w in walls:
            self.by_config.setdefault((model, p, configs), []).append(w)
            self.by_pipe.setdefault((model, p, recipes), []).append(w)
            self.by_model.setdefault((model, p), []).append(w)

    @staticmethod
    def _protocols(job: Job) -> tuple[str, ...]:
        """The protocols whose times stand for ``job``'s: its own; for a lean job, then
        full runs' times less the benchmark and profile time lean does not spend."""
        if job.quick:
            return ("quick",)
        return (job.protocol, LEAN_FROM_FULL) if job.protocol == "lean" else (job.protocol,)

    def measured(self, job: Job) -> bool:
        return any((job.model, p) in self.by_model for p in self._protocols(job))

    def __call__(self, job: Job) -> float:
        configs = _configs_key([c.to_dict() for c in job.configs])
        protos = self._protocols(job)
        for table, key in (
            *((self.by_config, (job.model, p, configs)) for p in protos),
            *((self.by_pipe, (job.model, p, job.recipes)) for p in protos),
            *((self.by_model, (job.model, p)) for p in protos),
        ):
            values = table.get(key)
            if values:
                return sum(values) / len(values)
        return self.default_quick if job.quick else self.default


def lean_saving(report: dict[str, Any]) -> float:
    """Seconds a full-protocol run would not spend under lean: the share of its benchmark
    stage lean skips (fewer windows or examples of the task's suite) and of its profile
    stage (fewer timed rounds). An estimate for time-left displays, not a measurement."""
    stages = report.get("stage_times_s") or {}
    task = (report.get("model") or {}).get("task")
    suite = SUITES.get(task) if isinstance(task, str) else None
    bench_share = 1.0
    if suite is not None and suite.lean is not None:
        sizes = [(suite.lean[k], v) for k, v in suite.full.items()
                 if k in ("max_windows", "n_test") and v]
        bench_share = sizes[0][0] / sizes[0][1] if sizes else 1.0
    profile_share = ROUNDS["lean"][1] / ROUNDS["full"][1]
    bench, prof = float(stages.get("benchmark") or 0.0), float(stages.get("profile") or 0.0)
    return bench * (1.0 - bench_share) + prof * (1.0 - profile_share)


def estimator_for(sweep: Sweep, done: dict[str, dict[str, Any]]) -> Estimator:
    """The sweep's estimator: its own reports' wall times, with the reference folder's
    (``[defaults] reference``) standing in for runs this folder has not timed yet."""
    known = list(done.values())
    for ref in sweep.reference:
        if ref.is_dir() and ref.resolve() != sweep.reports.resolve():
            known = list(existing_reports(ref).values()) + known
    return Estimator(known)


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
        #: when each report found at the start was written: one written later was
        #: written by another sweep sharing the folder, and is not redone here.
        self.seen = {k: r.get("created") for k, r in self.done.items()}
        self.estimate = estimator_for(sweep, self.done)
        self.outcome = Outcome()
        self.jobs: list[Job] = list(sweep.jobs)  # every job of the sweep, search runs included
        self.pending: list[Job] = []
        self.current: tuple[Job, float] | None = None
        self.batch_started = 0

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

    def _skip(self, job: Job, prior: dict[str, Any]) -> None:
        self.outcome.status[job.key] = f"skipped-{prior['status']}"
        self.outcome.paths[job.key] = prior.get("_path", "")

    def done_elsewhere(self, job: Job) -> bool:
        """After claiming ``job``: True (and recorded as skipped) when its report is now
        on disk and either was written by another sweep since this one started or says
        the job needs no run."""
        prior = report_on_disk(self.sweep.reports, job.key)
        if prior is None:
            return False
        fresh = prior.get("created") != self.seen.get(job.key)
        self.done[job.key] = prior
        if fresh or not self.needs_run(job):
            self._skip(job, prior)
            return True
        return False

    def run_jobs(self, jobs: list[Job], title: str) -> None:
        todo = [j for j in jobs if self.needs_run(j)]
        for j in jobs:
            if j not in todo:
                self._skip(j, self.done[j.key])
        if not todo:
            return
        self.pending = list(todo)
        self.batch_started = 0  # runs started in this call: the [i/total] counter
        progress = self._progress()
        with progress:
            overall = progress.add_task(title, total=len(todo), overall=True)
            deferred: list[Job] = []
            for job in todo:
                claim = try_claim(self.sweep.reports, job.key)
                if claim is None:  # another sweep is running it: come back at the end
                    deferred.append(job)
                    continue
                with claim:
                    self._claimed(job, progress, overall, len(todo))
            for job in deferred:
                who = holder(self.sweep.reports, job.key)
                progress.console.print(
                    f"waiting for {job.model} {job.label}, running in another sweep"
                    + (f" ({who})" if who else ""))
                with wait_claim(self.sweep.reports, job.key):
                    self._claimed(job, progress, overall, len(todo))

    def _claimed(self, job: Job, progress: Progress, overall: Any, total: int) -> None:
        """Run ``job`` (claimed by this sweep) unless another sweep has done it."""
        if job in self.pending:
            self.pending.remove(job)
        if self.done_elsewhere(job):
            progress.advance(overall)
            return
        self.batch_started += 1
        i = self.batch_started
        self.current = (job, time.perf_counter())
        where = f"{job.origin}, " if job.origin.startswith("search") else ""
        desc = f"[{where}{i}/{total}] {job.model} · {job.label}"
        task = progress.add_task(f"{desc} · starting", total=None, overall=False)

        def stage(name: str) -> None:
            progress.update(task, description=f"{desc} · {name}")

        path, report = self._run_one(job, stage)
        self.current = None
        progress.remove_task(task)
        progress.advance(overall)
        self._record(job, path, report)
        wall = fmt_seconds(report.get("wall_time_s") or 0)
        if report["status"] == "ok":
            progress.console.print(
                f"[green]ok[/] [{where}{i}/{total}] {job.model} {job.label}: {_summary(report)} "
                f"({wall})"
            )
        else:
            progress.console.print(
                f"[red]failed[/] [{where}{i}/{total}] {job.model} {job.label}: "
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
                    protocol="quick" if job.quick else job.protocol,
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
            protocol=job.protocol,
            reports_dir=self.sweep.reports,
            task=self.sweep.task,
            threads=self.sweep.threads,
            calibration=self.sweep.calibration,
            stage=stage,
        )


def write_manifest(sweep: Sweep, outcome: Outcome, jobs: list[Job]) -> Path:
    """``reports/sweeps/<name>.json``: which runs the sweep holds, their keys and state.

    Runs this process did not run take their state from the reports on disk (written by
    other sweeps sharing the folder), else "running" while another sweep holds their
    claim, else "pending". Written under a lock, so concurrent sweeps merge, not race.
    """
    with folder_lock(sweep.reports, f"manifest-{sweep.name}"):
        return _write_manifest(sweep, outcome, jobs)


def _write_manifest(sweep: Sweep, outcome: Outcome, jobs: list[Job]) -> Path:
    disk = existing_reports(sweep.reports)

    def state(j: Job) -> str:
        mine = outcome.status.get(j.key)
        if mine is not None:
            return mine
        if j.key in disk:
            return str(disk[j.key].get("status"))
        return "running" if held_elsewhere(sweep.reports, j.key) else "pending"

    def report(j: Job) -> str | None:
        path = outcome.paths.get(j.key) or (disk.get(j.key) or {}).get("_path", "")
        return os.path.basename(path) or None

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
                "state": state(j),
                "report": report(j),
            }
            for j in jobs
        ],
    }
    return atomic_write_json(sweep.reports / MANIFESTS / f"{sweep.name}.json", data)


def shard_jobs(jobs: list[Job], shard: tuple[int, int] | None) -> list[Job]:
    """The jobs of shard ``K/N`` (1-based): those whose run key falls in it
    (:func:`eval.sweep.claims.shard_of`); all jobs without a shard."""
    if shard is None:
        return list(jobs)
    k, n = shard
    return [j for j in jobs if shard_of(j.key, n) == k - 1]


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
    try:
        sweep.reports.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the reports folder {sweep.reports} ({exc.strerror})"
                        ) from None
    _clean_stale_tmp(sweep.reports)
    runner = Runner(sweep, console, retry_failed, run_fn)
    mine = shard_jobs(sweep.jobs, sweep.shard)
    todo = [j for j in mine if runner.needs_run(j)]
    est = sum(runner.estimate(j) for j in todo)
    part = f" (shard {sweep.shard[0]}/{sweep.shard[1]}: {len(mine)} of them)" if sweep.shard else ""
    console.print(
        f"sweep [bold]{sweep.name}[/]: {len(sweep.jobs)} runs on "
        f"{len({j.model for j in sweep.jobs})} models{part}, "
        f"{len(mine) - len(todo)} done already, {len(todo)} to run"
        + (f" (estimate {fmt_seconds(est)})" if todo else "")
    )
    t0 = time.perf_counter()
    runner.run_jobs(mine, f"sweep {sweep.name}")
    if sweep.budgets and sweep.search_runs > 0 and sweep.shard is None and not sweep.no_search:
        run_searches(sweep, runner)
    elif sweep.budgets and sweep.search_runs > 0 and sweep.shard is not None:
        console.print("budget search runs are not sharded: once every shard has finished, run "
                      "the sweep once without --shard (it skips the finished runs and searches)")
    runner.outcome.seconds = time.perf_counter() - t0
    write_manifest(sweep, runner.outcome, runner.jobs)
    return runner.outcome

