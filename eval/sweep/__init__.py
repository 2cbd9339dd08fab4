"""``python -m eval.sweep recipes/<file>.toml``: run every run of an experiment file.

An experiment ("sweep") file is TOML (``tomllib``, standard library). Example::

    name = "example"                       # names the manifest reports/sweeps/<name>.json
    description = "what this sweep answers"
    models = ["smollm2-135m", "minilm-l6-sentiment"]   # zoo names, folders or hub ids
    imports = []                           # optional: modules that register extra recipes
    budgets = ["size=0.5"]                 # optional: equal-budget tables (see eval.budget)
    search_runs = 0                        # optional: extra runs per model/family/budget
    search_probes = "quick"                # optional: probes quick, the setting found full

    [defaults]                             # passed to eval.run for every run
    quick = false                          # small benchmark/profile (smoke runs)
    threads = 2                            # torch threads, pinned and recorded
    calib_sequences = 64                   # calibration: N sequences x L tokens, one set
    calib_seq_len = 256                    # shared by every calibrating run (compress.calibration)
    calib_seed = 0
    reports = "reports"                    # folder of the JSON reports

    [[runs]]                               # one recipe, fixed parameters
    recipe = "identity"

    [[runs]]                               # one recipe over a grid (cartesian product)
    recipe = "magnitude"
    grid = { sparsity = [0.1, 0.5, 0.9, 0.95, 0.99] }
    quick_grid = { sparsity = [0.5, 0.9] } # optional: the grid under --quick
    models = ["minilm-l6-sentiment"]       # optional: only these models for this run

    [[runs]]                               # a pipeline: recipes applied in order
    pipeline = [ { recipe = "wanda", sparsity = 0.5 }, "rtn bits=4" ]
    grid = { "rtn.bits" = [8, 4] }         # grid keys: FIELD, RECIPE.FIELD or STEP.FIELD
    both_orders = true                     # also run the reversed pipeline
    skip_quick = true                      # optional: leave this run out under --quick

Each ``[[runs]]`` entry is either ``recipe = NAME`` with the recipe's parameters as
further keys, or ``pipeline = [...]`` whose steps are tables (``{recipe = NAME, k = v}``)
or strings in ``eval.run --then`` syntax (``"rtn bits=4 group_size=64"``). Every
run expands to one job per model and grid point; identical jobs are run once.

Everything is checked before anything runs, with one-line errors: unknown keys,
recipes and parameters (with the registry's "did you mean"), unknown models, and
pipelines that cannot work (:func:`check_pipeline`: a runtime format not last,
sparsity followed by a step that does not keep exact zeros, training after
quantization, two quantizers, an N:M pattern or a quantization group that does not
divide a width).

Runs are keyed by :func:`eval.report.run_key` (model + pipeline configs + quick): a
rerun skips every run whose report says ``ok``; failed runs are retried unless
``--no-retry-failed``. Reports are written atomically at the end of each run, so an
interrupted sweep (Ctrl-C, a kill, a power cut) resumes where it stopped when run
again, and never leaves a half-written report. One failing run is recorded as failed
(its report holds the error) and the sweep goes on.

    python -m eval.sweep recipes/default.toml            # the main comparison
    python -m eval.sweep recipes/default.toml --quick    # smoke version (under 10 min)
    python -m eval.sweep recipes/default.toml --dry-run  # list runs, done or to do
    python -m eval.sweep recipes/default.toml --budget size=0.5 --search-runs 2

Modules: :mod:`eval.sweep.spec` (the file, its jobs and checks of keys, models and
grids), :mod:`eval.sweep.checks` (what pipelines can work, from the recipes' traits),
:mod:`eval.sweep.runner` (running, skipping, progress, the manifest),
:mod:`eval.sweep.search` (the equal-budget knob search) and :mod:`eval.sweep.cli`.
"""

from eval.sweep.checks import check_pipeline, model_widths, traits_of
from eval.sweep.cli import main
from eval.sweep.runner import (
    Estimator,
    Outcome,
    Runner,
    existing_reports,
    fmt_seconds,
    run_sweep,
    same_threads,
    write_manifest,
)
from eval.sweep.search import run_searches, search_jobs
from eval.sweep.spec import MANIFESTS, Job, Sweep, load_sweep

__all__ = [
    "MANIFESTS",
    "Estimator",
    "Job",
    "Outcome",
    "Runner",
    "Sweep",
    "check_pipeline",
    "existing_reports",
    "fmt_seconds",
    "load_sweep",
    "main",
    "model_widths",
    "run_searches",
    "run_sweep",
    "same_threads",
    "search_jobs",
    "traits_of",
    "write_manifest",
]
