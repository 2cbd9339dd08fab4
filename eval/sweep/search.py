"""The equal-budget search: extra runs that turn a recipe's knob until a budget is met.

For each budget, model and family, :func:`search_jobs` looks at the runs so far and
proposes the next setting of a knob the recipe declares (:class:`compress.traits.Knob`,
e.g. ``sparsity`` or ``bits``): where the measured costs, read as a line, cross the
budget (:func:`eval.budget_probe.interpolated_probe`), else by bisection
(:func:`eval.budget_probe.next_probe`);
:func:`run_searches` runs up to ``search_runs`` such probes per model, family and
budget. The search reads costs only, so by default (``search_probes = "quick"``) a
probe is a quick run (small benchmark and profile: the costs are measured as in a full
run, the latency ratio with fewer rounds), and the setting the search settles on, the
least compressed one meeting the budget, then gets one run with the full protocol
(:func:`settled_job`): the tables read only full runs. Each search replays from the
grid's reports alone, so a rerun takes the same steps, finds them done and runs
nothing new.
"""

from __future__ import annotations

from typing import Any, Protocol

from compress.errors import UserError
from compress.registry import get_recipe
from eval.budget import (
    Budget,
    baseline_of,
    comparable_runs,
    cost_ratio,
    meets,
    pick_for_model,
    search_families,
)
from eval.budget_probe import group_knob, interpolated_probe, knob_groups, next_probe
from eval.sweep.checks import check_pipeline
from eval.sweep.spec import Job, Sweep


class JobRunner(Protocol):
    """What the search needs of the sweep's runner (:class:`eval.sweep.runner.Runner`)."""

    done: dict[str, dict[str, Any]]
    jobs: list[Job]

    def run_jobs(self, jobs: list[Job], title: str) -> None: ...


def _probe_quick(sweep: Sweep) -> bool:
    """Whether probe runs use the quick protocol (a quick sweep is quick throughout)."""
    return sweep.quick or sweep.search_probes == "quick"


def _base_and_candidates(
    sweep: Sweep, runs: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The sweep's dense baseline, and the ok runs whose costs the search may read.

    With quick probes in a full sweep, quick runs count too: bytes on disk, nonzeros and
    packed bytes do not depend on the benchmark protocol, and the latency cost is a
    ratio measured against dense in the run's own process (fewer rounds when quick).
    """
    if not (_probe_quick(sweep) and not sweep.quick):
        return comparable_runs(runs)
    base = baseline_of(runs, quick=sweep.quick)
    return base, [r for r in runs if r.get("status") == "ok"]


def _tried(knob, group: list[dict[str, Any]], base: dict[str, Any], budget: Budget,
           full: bool) -> dict[float, tuple[float, dict[str, Any]]]:
    """Setting -> (cost ratio, report) of a knob group; a full run wins over a quick one."""
    tried: dict[float, tuple[float, dict[str, Any]]] = {}
    for r in sorted(group, key=lambda r: bool(r.get("quick")) != (not full)):
        ratio = cost_ratio(r, base, budget.kind)
        if ratio is not None:
            tried.setdefault(round(r["pipeline"][0]["config"][knob.field], 6), (ratio, r))
    return tried


def _job(sweep: Sweep, model: str, recipe: str, template: dict[str, Any], quick: bool,
         origin: str) -> Job | None:
    try:
        # an old report's config may predate its recipe's current version
        config = get_recipe(recipe).config_cls.from_dict(template)
        check_pipeline([config])
    except UserError:
        return None
    return Job(model, (config,), quick, origin=origin, calibration=sweep.calibration,
               protocol=sweep.protocol)


def search_jobs(
    sweep: Sweep, reports: list[dict[str, Any]], budget: Budget, model: str, family: str
) -> Job | None:
    """The next extra run for ``family`` on ``model`` to meet ``budget`` (None: done)."""
    runs = [r for r in reports if r["model"]["name"] == model]
    base, candidates = _base_and_candidates(sweep, runs)
    if base is None:
        return None
    groups = knob_groups(candidates, family)
    picks = pick_for_model(runs, budget, [family])
    chosen = picks[0].chosen if picks else None

    def group_cost(item) -> float:
        ratios = [cost_ratio(r, base, budget.kind) for r in item[1]]
        return min((x for x in ratios if x is not None), default=float("inf"))

    ordered = sorted(groups.items(), key=group_cost)
    if chosen is not None:
        ordered.sort(key=lambda item: chosen not in item[1])
    for (recipe, rest), group in ordered:
        knob = group_knob(recipe, rest)
        tried = _tried(knob, group, base, budget, full=not sweep.quick)
        if not tried:
            continue
        ratios = [c for c, _ in tried.values()]
        if len(tried) >= 2 and max(ratios) <= min(ratios) * 1.02:
            continue  # this knob does not move this cost (e.g. zeros and bytes on disk)
        points = [(v, c) for v, (c, _) in tried.items()]
        probe = interpolated_probe(knob, points, budget.fraction)
        if probe is None:
            probe = next_probe(
                knob, [(v, meets(c, budget.fraction)) for v, c in points], budget.fraction
            )
        if probe is None:
            continue
        template = dict(group[0]["pipeline"][0]["config"])
        template[knob.field] = int(probe) if knob.values else probe
        job = _job(sweep, model, recipe, template, _probe_quick(sweep), f"search {budget}")
        if job is not None:
            return job
    return None


def settled_job(
    sweep: Sweep, reports: list[dict[str, Any]], budget: Budget, model: str, family: str,
    probed: set[str],
) -> Job | None:
    """The full-protocol run of the setting a quick-probe search settled on (None: none
    needed, because the sweep is quick, or the boundary already has a full run, or no
    probe met the budget).

    The setting is the least compressed one that met the budget in the knob group the
    probes (report keys ``probed``) belong to: where the best quality within the budget
    lies. Its quality in the tables then comes from the full protocol, as every cell's.
    """
    if sweep.quick or not probed:
        return None
    runs = [r for r in reports if r["model"]["name"] == model]
    base, candidates = _base_and_candidates(sweep, runs)
    if base is None:
        return None
    for (recipe, rest), group in knob_groups(candidates, family).items():
        if not any(r.get("key") in probed for r in group):
            continue
        knob = group_knob(recipe, rest)
        ok = [(v, r) for v, (c, r) in _tried(knob, group, base, budget, full=True).items()
              if meets(c, budget.fraction)]
        if not ok:
            continue
        _setting, report = min(ok, key=lambda item: knob.order(item[0]))
        if not report.get("quick"):
            continue  # the boundary already has a full run
        template = dict(report["pipeline"][0]["config"])
        return _job(sweep, model, recipe, template, False, f"search {budget}: full protocol")
    return None


def run_searches(sweep: Sweep, runner: JobRunner) -> None:
    """Up to ``sweep.search_runs`` probes per budget, model and family, run by ``runner``;
    with quick probes, then one full run of the setting each search settled on."""
    grid_keys = {j.key for j in sweep.jobs}

    def run(job: Job, title: str) -> None:
        if job.key not in {j.key for j in runner.jobs}:
            runner.jobs.append(job)
        runner.run_jobs([job], title)

    for budget in sweep.budgets:
        for model in dict.fromkeys(j.model for j in sweep.jobs):
            for family in search_families():
                probes: set[str] = set()

                def seen() -> list[dict[str, Any]]:
                    return [r for k, r in runner.done.items()
                            if k in grid_keys or k in probes]  # noqa: B023 - read at once

                for _ in range(sweep.search_runs):
                    job = search_jobs(sweep, seen(), budget, model, family)
                    if job is None or job.key in probes:
                        break  # done, or the probe failed and would repeat
                    probes.add(job.key)
                    run(job, f"search {budget} · {family}")
                final = settled_job(sweep, seen(), budget, model, family, probes)
                if final is not None:
                    grid_keys.add(final.key)
                    run(final, f"search {budget} · {family} · full protocol")
