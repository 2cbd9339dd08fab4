"""``python -m eval.mainjob``: the main job, step by step, with the whole job's time left.

    python -m eval.mainjob             # lean protocol: recipes/main.toml into runs/main/
    python -m eval.mainjob --full      # the reference: recipes/default.toml into reports/
    python -m eval.mainjob --dry-run   # the steps, the runs and the estimate; run nothing

``scripts/main.sh`` calls this after setup. The steps: build the model zoo, run the sweep,
analyse the weights, write report.md, print the comparison table and, for the lean job,
check this machine's numbers against the committed reference reports (:mod:`eval.refcheck`).
Before each step it prints the step, the time elapsed and the time left for the whole job:
the zoo models not built yet (their typical build time, :data:`compress.zoo.ZOO`), the runs
not done yet (the sweep's estimator: earlier wall times of the same model and pipeline,
the reference folder's standing in where this folder has none, full-protocol times for a
lean run being an overestimate) and the fixed steps (:data:`FIXED_SECONDS`). The sweep step
shows its own live bar with the time left over its runs.

A step that fails stops the job with its exit status; rerunning resumes (built zoo models
and finished runs are skipped).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from compress import zoo
from compress.errors import UserError, run_main
from eval.sweep.runner import estimator_for, existing_reports
from eval.sweep.spec import load_sweep

MODELS = ("smollm2-135m", "minilm-l6-sentiment", "bert2bert-punct")

#: the committed reference reports the lean job is checked against: the full protocol's
#: and the lean protocol's own (a main job run on the reference machine)
REFERENCES = ("reports", "reports/lean")

#: wall seconds of the steps after the sweep on the idle 2-core reference machine
#: (weight analysis of the three models, report.md with its plots, the table, the check)
FIXED_SECONDS = {"analysis": 60.0, "report": 40.0, "compare": 10.0, "refcheck": 10.0}


@dataclass(frozen=True)
class Layout:
    sweep: Path
    reports: Path
    report_md: Path
    lean: bool


LEAN = Layout(Path("recipes/main.toml"), Path("runs/main/reports"), Path("runs/main/report.md"),
              True)
FULL = Layout(Path("recipes/default.toml"), Path("reports"), Path("report.md"), False)


def fmt(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 60} min {s % 60:02d} s"


def zoo_left() -> float:
    """Typical seconds to build the zoo models (and what they depend on) not built yet."""
    todo: set[str] = set()

    def need(name: str) -> None:
        if name in todo or zoo.is_built(name):
            return
        todo.add(name)
        for dep in zoo.ZOO[name].depends:
            need(dep)

    for m in MODELS:
        need(m)
    return sum(zoo.ZOO[n].typical_seconds for n in todo)


def sweep_left(layout: Layout) -> float:
    """Estimated seconds of the sweep's runs that have no ok report yet."""
    sweep = load_sweep(layout.sweep, reports=layout.reports)
    done = existing_reports(sweep.reports) if sweep.reports.is_dir() else {}
    estimate = estimator_for(sweep, done)
    return sum(estimate(j) for j in sweep.jobs
               if (done.get(j.key) or {}).get("status") != "ok")


def steps(layout: Layout, extra: list[str]) -> list[tuple[str, list[str]]]:
    py = [sys.executable, "-m"]
    out = [
        ("zoo", py + ["compress.zoo", "build"]),
        ("sweep", py + ["eval.sweep", str(layout.sweep), "--reports", str(layout.reports)]
         + extra),
        ("analysis", py + ["eval.analyze", *MODELS, "--threads", "2", "--quiet", "--out",
                           str(layout.reports / "analysis")]),
        ("report", py + ["eval.report", str(layout.reports), "-o", str(layout.report_md)]),
        ("compare", py + ["eval.compare", str(layout.reports)]),
    ]
    if layout.lean:
        refs = [a for p in REFERENCES if Path(p).is_dir() for a in ("--reference", p)]
        out.append(("refcheck", py + ["eval.refcheck", str(layout.reports), *refs]))
    return out


def left(layout: Layout, after: int, names: list[str]) -> float:
    """Seconds left for the steps from index ``after`` on."""
    total = 0.0
    for name in names[after:]:
        if name == "zoo":
            total += zoo_left()
        elif name == "sweep":
            total += sweep_left(layout)
        else:
            total += FIXED_SECONDS.get(name, 0.0)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.mainjob", description=__doc__.split(
        "\n\n")[0].strip())
    parser.add_argument("--full", action="store_true",
                        help="the reference protocol: recipes/default.toml into reports/")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the steps and the estimate, run nothing")
    args, extra = parser.parse_known_args(argv)
    layout = FULL if args.full else LEAN
    if not layout.sweep.is_file():
        raise UserError(f"{layout.sweep} not found: run from the repository root")
    plan = steps(layout, extra)
    names = [n for n, _ in plan]
    t0 = time.monotonic()
    if args.dry_run:
        print(f"main job ({'full' if args.full else 'lean'}): {', '.join(names)}; "
              f"estimate {fmt(left(layout, 0, names))} "
              f"(zoo {fmt(zoo_left())}, sweep {fmt(sweep_left(layout))})")
        return 0
    layout.reports.mkdir(parents=True, exist_ok=True)
    for i, (name, cmd) in enumerate(plan):
        print(f"\n== main job: step {i + 1}/{len(plan)} {name} · {fmt(time.monotonic() - t0)} "
              f"elapsed · about {fmt(left(layout, i, names))} left", file=sys.stderr,
              flush=True)
        code = subprocess.call(cmd)
        if code != 0 and not (name == "sweep" and code == 1):  # 1: some runs failed
            print(f"error: step {name} failed (exit {code}); rerun to resume", file=sys.stderr)
            return code
    print(f"\n== main job done in {fmt(time.monotonic() - t0)}: {layout.report_md}"
          + (f", {layout.reports.parent / 'refcheck.json'}" if layout.lean else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
