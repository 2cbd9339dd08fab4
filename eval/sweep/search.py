"""The equal-budget search: extra runs that turn a recipe's knob until a budget is met.

For each budget, model and family, :func:`search_jobs` looks at the runs so far and
proposes the next setting of a knob the recipe declares (:class:`compress.traits.Knob`,
e.g. ``sparsity`` or ``bits``): where the measured costs, read as a line, cross the
budget (:func:`eval.budget.interpolated_probe`), else by bisection
(:func:`eval.budget.next_probe`);
:func:`run_searches` runs up to ``search_runs`` such probes per model, family and
budget. Each search replays from the grid's reports alone, so a rerun takes the same
steps, finds them done and runs nothing new.
"""

from __future__ import annotations

from typing import Any, Protocol

from compress.errors import UserError
from compress.registry import get_recipe
from eval.budget import (
    Budget,
    comparable_runs,
    cost_ratio,
    group_knob,
    interpolated_probe,
    knob_groups,
    meets,
    next_probe,
    pick_for_model,
    search_families,
)
from eval.sweep.checks import check_pipeline
from eval.sweep.spec import Job, Sweep


class JobRunner(Protocol):
    """What the search needs of the sweep's runner (:class:`eval.sweep.runner.Runner`)."""

    done: dict[str, dict[str, Any]]
    jobs: list[Job]

    def run_jobs(self, jobs: list[Job], title: str) -> None: ...


def search_jobs(
    sweep: Sweep, reports: list[dict[str, Any]], budget: Budget, model: str, family: str
) -> Job | None:
    """The next extra run for ``family`` on ``model`` to meet ``budget`` (None: done)."""
    runs = [r for r in reports if r["model"]["name"] == model]
    base, candidates = comparable_runs(runs)
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
        tried = []
        for r in group:
            ratio = cost_ratio(r, base, budget.kind)
            if ratio is not None:
                tried.append((r["pipeline"][0]["config"][knob.field], ratio, r))
        if not tried:
            continue
        settings = {round(t[0], 6) for t in tried}
        ratios = [t[1] for t in tried]
        if len(settings) >= 2 and max(ratios) <= min(ratios) * 1.02:
            continue  # this knob does not move this cost (e.g. zeros and bytes on disk)
        probe = interpolated_probe(knob, [(v, ratio) for v, ratio, _ in tried], budget.fraction)
        if probe is None:
            probe = next_probe(
                knob, [(v, meets(ratio, budget.fraction)) for v, ratio, _ in tried], budget.fraction
            )
        if probe is None:
            continue
        template = dict(group[0]["pipeline"][0]["config"])
        template[knob.field] = int(probe) if knob.values else probe
        try:
            # an old report's config may predate its recipe's current version
            config = get_recipe(recipe).config_cls.from_dict(template)
            check_pipeline([config])
        except UserError:
            continue
        return Job(model, (config,), sweep.quick, origin=f"search {budget}",
                   calibration=sweep.calibration)
    return None



def run_searches(sweep: Sweep, runner: JobRunner) -> None:
    """Up to ``sweep.search_runs`` probes per budget, model and family, run by ``runner``."""
    grid_keys = {j.key for j in sweep.jobs}
    for budget in sweep.budgets:
        for model in dict.fromkeys(j.model for j in sweep.jobs):
            for family in search_families():
                probes: set[str] = set()
                for _ in range(sweep.search_runs):
                    reports = [
                        r
                        for k, r in runner.done.items()
                        if (k in grid_keys or k in probes)
                        and bool(r.get("quick")) == sweep.quick
                    ]
                    job = search_jobs(sweep, reports, budget, model, family)
                    if job is None or job.key in probes:
                        break  # done, or the probe failed and would repeat
                    probes.add(job.key)
                    if job.key not in {j.key for j in runner.jobs}:
                        runner.jobs.append(job)
                    runner.run_jobs([job], f"search {budget} · {family}")
