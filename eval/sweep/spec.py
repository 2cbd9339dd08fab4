"""The sweep file: TOML schema, expansion into jobs, and every check before anything runs.

See :mod:`eval.sweep` for the format. :func:`load_sweep` reads a file into a
:class:`Sweep` of :class:`Job` objects, each a model and a pipeline of validated
configs; unknown keys, recipes, fields and models, and pipelines that cannot work
(:func:`eval.sweep.checks.check_pipeline`), are one-line errors naming the place in
the file.
"""

from __future__ import annotations

import fnmatch
import importlib
import itertools
import os
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import transformers as tf

from compress import zoo
from compress.calibration import (
    DEFAULT_SEQ_LEN,
    DEFAULT_SEQUENCES,
    CalibrationSpec,
    run_key_part,
)
from compress.config import RecipeConfig
from compress.errors import UserError, did_you_mean
from compress.models import check_model_name, resolve_path
from compress.registry import get_recipe
from eval.budget import Budget, parse_budget
from eval.pipeline import parse_step_text, step_record
from eval.report import pipeline_label, run_key
from eval.sweep.checks import check_pipeline

#: the ways the budget search may measure its probe runs (:attr:`Sweep.search_probes`)
SEARCH_PROBES = ("quick", "full")

TOP_KEYS = (
    "name",
    "description",
    "models",
    "imports",
    "budgets",
    "search_runs",
    "search_probes",
    "defaults",
    "runs",
)


DEFAULT_KEYS = ("quick", "protocol", "reference", "threads", "calib_sequences", "calib_seq_len", "calib_seed", "reports",
                "task")


RUN_KEYS = (
    "recipe",
    "pipeline",
    "grid",
    "quick_grid",
    "models",
    "both_orders",
    "skip_quick",
    "note",
)

MANIFESTS = "sweeps"  # reports/<MANIFESTS>/<name>.json


@dataclass(frozen=True)
class Job:
    """One run: a model and a pipeline of validated configs."""

    model: str
    configs: tuple[RecipeConfig, ...]
    quick: bool
    origin: str = ""  # "runs[3]" or "search size=0.5"
    #: the sweep's CalibrationSpec; part of the key when a step calibrates.
    calibration: CalibrationSpec | None = None
    #: the measurement protocol (eval.protocol) when not quick: full or lean
    protocol: str = "full"

    @property
    def pipeline(self) -> list[dict[str, Any]]:
        return [step_record(c) for c in self.configs]

    @property
    def key(self) -> str:
        spec = self.calibration if self.calibration is not None else CalibrationSpec()
        return run_key(self.model, self.pipeline, self.quick, run_key_part(self.configs, spec),
                       protocol="quick" if self.quick else self.protocol)

    @property
    def label(self) -> str:
        return pipeline_label(self.pipeline)

    @property
    def recipes(self) -> tuple[str, ...]:
        return tuple(c.RECIPE for c in self.configs)


@dataclass
class Sweep:
    name: str
    path: Path
    description: str
    models: list[str]
    jobs: list[Job]
    quick: bool
    reports: Path
    threads: int | None = None
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    task: str | None = None
    budgets: list[Budget] = field(default_factory=list)
    search_runs: int = 0
    #: how the budget search's probe runs are measured: "quick" (the small benchmark and
    #: profile; the setting the search settles on then gets one run with the full
    #: protocol) or "full" (every probe with the full protocol)
    search_probes: str = "quick"
    #: run only shard K of N of the jobs (``--shard K/N``, 1-based); None: all of them.
    shard: tuple[int, int] | None = None
    #: leave the budget search to another process (``--workers`` children).
    no_search: bool = False
    #: the measurement protocol of its runs (eval.protocol; ``[defaults] protocol``)
    protocol: str = "full"
    #: the committed report folders this sweep's numbers are checked against
    #: (eval.refcheck) and whose wall times estimate runs it has not timed yet
    #: (``[defaults] reference``: a folder or a list of folders)
    reference: tuple[Path, ...] = ()


def _where(path: Path, *parts: Any) -> str:
    return f"{path.name}: " + "".join(
        f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(parts)
    )


def _check_keys(data: dict[str, Any], allowed: Iterable[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            err = did_you_mean("key", key, allowed)
            raise UserError(f"{where}: {err}")


def _references(path: Path, value: Any) -> tuple[Path, ...]:
    """``[defaults] reference``: one folder or a list of folders."""
    value = [value] if isinstance(value, str) else value
    return tuple(Path(p) for p in _as_list(value, _where(path, "defaults", "reference")))


def _as_list(value: Any, where: str, kind: type | tuple[type, ...] = str) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UserError(f"{where}: expected a list of {names}, got {value!r}")
    return value



def _parse_step(step: Any, where: str) -> tuple[str, dict[str, Any]]:
    if isinstance(step, str):
        return parse_step_text(step, where)
    if isinstance(step, dict):
        if "recipe" not in step or not isinstance(step["recipe"], str):
            raise UserError(f"{where}: a pipeline step needs recipe = NAME")
        params = {k: v for k, v in step.items() if k != "recipe"}
        return step["recipe"], params
    raise UserError(f"{where}: a pipeline step is a table or a string, got {step!r}")


def _apply_grid(
    steps: list[tuple[str, dict[str, Any]]], grid: dict[str, Any], where: str
) -> list[list[tuple[str, dict[str, Any]]]]:
    """Every combination of the grid's values applied to the steps."""
    if not isinstance(grid, dict):
        raise UserError(f"{where}: grid must be a table of FIELD = [values]")
    targets: list[tuple[int, str, list[Any]]] = []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}.{key}: a grid entry is a non-empty list of values")
        if "." in key:
            head, fld = key.split(".", 1)
            if head.isdigit():
                index = int(head)
                if index >= len(steps):
                    raise UserError(f"{where}.{key}: the pipeline has {len(steps)} steps")
            else:
                matches = [i for i, (r, _) in enumerate(steps) if r == head]
                if not matches:
                    err = did_you_mean("recipe of the pipeline", head, [r for r, _ in steps])
                    raise UserError(f"{where}.{key}: {err}")
                if len(matches) > 1:
                    raise UserError(
                        f"{where}.{key}: {head} appears twice; use STEP.FIELD with the step's index"
                    )
                index = matches[0]
        else:
            if len(steps) != 1:
                raise UserError(f"{where}.{key}: in a pipeline write RECIPE.FIELD or STEP.FIELD")
            index, fld = 0, key
        targets.append((index, fld, values))
    combos = []
    for values in itertools.product(*(t[2] for t in targets)):
        new = [(r, dict(p)) for r, p in steps]
        for (index, fld, _), value in zip(targets, values, strict=True):
            new[index][1][fld] = value
        combos.append(new)
    return combos


def _build_configs(
    steps: list[tuple[str, dict[str, Any]]], where: str
) -> tuple[RecipeConfig, ...]:
    configs = []
    for i, (name, params) in enumerate(steps):
        try:
            configs.append(get_recipe(name).config_cls.from_dict(params))
        except UserError as exc:
            at = f"{where}.pipeline[{i}]" if len(steps) > 1 else where
            raise UserError(f"{at}: {exc}") from None
        except TypeError as exc:  # a required field without default
            raise UserError(f"{where}: {name}: {exc}") from None
    return tuple(configs)


def model_config_loader(model: str, build: bool = False) -> Callable[[], Any]:
    """A lazy loader of ``model``'s transformers config, for the width checks.

    Without ``build``, nothing is built or downloaded: a zoo model not built yet is
    read from a built dependency with the same shapes (``minilm-l6`` for its
    fine-tuned variants), else skipped (None) and checked again before it runs.
    """
    cache: dict[str, Any] = {}

    def load() -> Any:
        if "cfg" in cache:
            return cache["cfg"]
        folder: str | None = None
        if build:
            folder = resolve_path(model)[1]
        elif model in zoo.ZOO:
            for name in (model, *zoo.ZOO[model].depends):
                if zoo.is_built(name):
                    folder = str(zoo.path_of(name))
                    break
        elif os.path.isdir(model):
            folder = model
        try:
            cache["cfg"] = tf.AutoConfig.from_pretrained(folder) if folder else None
        except (OSError, ValueError):
            cache["cfg"] = None
        return cache["cfg"]

    return load



@dataclass
class _Header:
    """The sweep-wide settings of a file, checked."""

    quick: bool
    models: list[str]
    runs: list[Any]
    budgets: list[Budget]
    search_runs: int
    threads: int | None
    calibration: CalibrationSpec
    defaults: dict[str, Any]
    search_probes: str = "quick"
    protocol: str = "full"


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"sweep file {str(path)!r} does not exist")
    if path.suffix != ".toml":
        raise UserError(f"{path.name}: sweep files are TOML (.toml); see recipes/README.md")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path.name}: not valid TOML ({exc})") from None
    _check_keys(data, TOP_KEYS, path.name)
    for module in _as_list(data.get("imports", []), _where(path, "imports")):
        if not isinstance(module, str) or not re.fullmatch(
                r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module):
            raise UserError(f"{_where(path, 'imports')}: {module!r} is not a module name "
                            "(dotted Python names, e.g. my_recipes)")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UserError(
                f"{_where(path, 'imports')}: cannot import {module!r} ({exc})"
            ) from None
    return data


def _calibration(path: Path, defaults: dict[str, Any]) -> CalibrationSpec:
    """The sweep's one calibration spec (N x L, seed) from ``[defaults]``."""
    values = {}
    for key, default in (("calib_sequences", DEFAULT_SEQUENCES), ("calib_seq_len", DEFAULT_SEQ_LEN),
                         ("calib_seed", 0)):
        value = defaults.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{_where(path, 'defaults', key)}: expected a whole number")
        values[key] = value
    try:
        return CalibrationSpec(values["calib_sequences"], values["calib_seq_len"],
                               values["calib_seed"])
    except UserError as exc:
        raise UserError(f"{_where(path, 'defaults')}: {exc}") from None


def _header(
    path: Path,
    data: dict[str, Any],
    quick: bool | None,
    threads: int | None,
    models: list[str] | None,
) -> _Header:
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise UserError(f"{_where(path, 'defaults')}: expected a table")
    _check_keys(defaults, DEFAULT_KEYS, _where(path, "defaults"))
    is_quick = bool(defaults.get("quick", False)) if quick is None else quick
    top_models = _as_list(data.get("models", []), _where(path, "models"))
    if models:
        unknown = [m for m in models if m not in top_models]
        if unknown:
            err = did_you_mean("model of this sweep", unknown[0], top_models)
            raise UserError(f"{path.name}: {err}")
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise UserError(f"{path.name}: no [[runs]]; add at least one (see recipes/README.md)")
    budgets = []
    for b in _as_list(data.get("budgets", []), _where(path, "budgets")):
        try:
            budgets.append(parse_budget(b))
        except UserError as exc:
            raise UserError(f"{_where(path, 'budgets')}: {exc}") from None
    search_runs = data.get("search_runs", 0)
    if not isinstance(search_runs, int) or search_runs < 0:
        raise UserError(f"{_where(path, 'search_runs')}: expected a whole number >= 0")
    probes = data.get("search_probes", "quick")
    if probes not in SEARCH_PROBES:
        raise UserError(f"{_where(path, 'search_probes')}: expected one of "
                        f"{', '.join(map(repr, SEARCH_PROBES))}, not {probes!r}")
    thr = threads if threads is not None else defaults.get("threads")
    if thr is not None and (not isinstance(thr, int) or thr < 1):
        raise UserError(f"{_where(path, 'defaults', 'threads')}: expected a whole number >= 1")
    calib = _calibration(path, defaults)
    for m in top_models:
        _check_model(m, _where(path, "models"))
    proto = defaults.get("protocol", "full")
    if proto not in ("full", "lean"):
        raise UserError(f"{_where(path, 'defaults', 'protocol')}: expected 'full' or 'lean', "
                        f"not {proto!r} (quick runs: --quick)")
    return _Header(is_quick, top_models, runs, budgets, search_runs, thr, calib, defaults, probes,
                   proto)


def _check_model(name: str, where: str) -> None:
    try:
        check_model_name(name)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _run_steps(run: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """The steps of one ``[[runs]]`` entry, as (recipe, parameters) pairs."""
    if not isinstance(run, dict):
        raise UserError(f"{where}: expected a table")
    if ("recipe" in run) == ("pipeline" in run):
        raise UserError(f"{where}: give either recipe = NAME or pipeline = [...]")
    if "pipeline" in run:
        _check_keys(run, RUN_KEYS, where)
        pipe = run["pipeline"]
        if not isinstance(pipe, list) or not pipe:
            raise UserError(f"{where}.pipeline: expected a non-empty list of steps")
        return [_parse_step(s, f"{where}.pipeline[{j}]") for j, s in enumerate(pipe)]
    if not isinstance(run["recipe"], str):
        raise UserError(f"{where}.recipe: expected a recipe name")
    params = {k: v for k, v in run.items() if k not in RUN_KEYS}
    return [(run["recipe"], params)]


def _expand_run(
    run: dict[str, Any],
    steps: list[tuple[str, dict[str, Any]]],
    where: str,
    head: _Header,
    models: list[str] | None,
    loaders: dict[str, Callable[[], Any]],
) -> Iterable[tuple[str, tuple[RecipeConfig, ...]]]:
    """(model, configs) of every grid point and model of one run, each pipeline checked."""
    grid = (
        run.get("quick_grid") if head.quick and "quick_grid" in run else run.get("grid", {})
    )
    run_models = _as_list(run.get("models", head.models), f"{where}.models")
    if not run_models:
        raise UserError(f"{where}: no models (set models at the top or in the run)")
    for m in run_models:
        if m not in head.models:
            _check_model(m, f"{where}.models")
    both = run.get("both_orders", False)
    if both and len(steps) < 2:
        raise UserError(f"{where}.both_orders: needs a pipeline of two or more steps")
    # the grid addresses steps in the order written; reversing comes after
    combos = _apply_grid(steps, grid, f"{where}.grid")
    for combo in combos + ([list(reversed(c)) for c in combos] if both else []):
        configs = _build_configs(combo, where)
        for m in run_models:
            if models and m not in models:
                continue
            loader = loaders.setdefault(m, model_config_loader(m))
            try:
                check_pipeline(configs, loader)
            except UserError as exc:
                raise UserError(f"{where} on {m}: {exc}") from None
            yield m, configs


def _only(jobs: list[Job], only: list[str], path: Path) -> list[Job]:
    labels = sorted({j.label for j in jobs})
    for pattern in only:
        if not any(fnmatch.fnmatchcase(lab, pattern) for lab in labels):
            err = did_you_mean("run label", pattern, labels)
            raise UserError(f"{path.name}: --only matches no run: {err}")
    return [j for j in jobs if any(fnmatch.fnmatchcase(j.label, p) for p in only)]


def load_sweep(
    path: str | Path,
    *,
    quick: bool | None = None,
    reports: str | Path | None = None,
    threads: int | None = None,
    models: list[str] | None = None,
    only: list[str] | None = None,
) -> Sweep:
    """Parse and check a sweep file; every job is validated before anything runs.

    ``only``: shell-style patterns (``fnmatch``) on run labels such as ``rtn(bits=3)``
    or ``wanda*``; a job is kept when any matches. A pattern matching no run is an error.
    """
    path = Path(path)
    data = _read(path)
    head = _header(path, data, quick, threads, models)
    jobs: list[Job] = []
    seen: set[str] = set()
    loaders: dict[str, Callable[[], Any]] = {}
    for i, run in enumerate(head.runs):
        where = _where(path, "runs", i)
        steps = _run_steps(run, where)
        if head.quick and run.get("skip_quick", False):
            continue
        for m, configs in _expand_run(run, steps, where, head, models, loaders):
            job = Job(m, configs, head.quick, origin=f"runs[{i}]", calibration=head.calibration,
                      protocol=head.protocol)
            if job.key not in seen:
                seen.add(job.key)
                jobs.append(job)
    if only:
        jobs = _only(jobs, only, path)
    defaults = head.defaults
    reports_dir = Path(reports if reports is not None else defaults.get("reports", "reports"))
    return Sweep(
        name=str(data.get("name") or path.stem),
        path=path,
        description=str(data.get("description", "")),
        models=head.models,
        jobs=jobs,
        quick=head.quick,
        reports=reports_dir,
        threads=head.threads,
        calibration=head.calibration,
        task=defaults.get("task"),
        budgets=head.budgets,
        search_runs=head.search_runs,
        search_probes=head.search_probes,
        protocol=head.protocol,
        reference=_references(path, defaults.get("reference", [])),
    )
