"""``python -m eval.sweep recipes/<file>.toml``: run every run of an experiment file.

An experiment ("sweep") file is TOML (``tomllib``, standard library). Example::

    name = "example"                       # names the manifest reports/sweeps/<name>.json
    description = "what this sweep answers"
    models = ["smollm2-135m", "minilm-l6-sentiment"]   # zoo names, folders or hub ids
    imports = []                           # optional: modules that register extra recipes
    budgets = ["size=0.5"]                 # optional: equal-budget tables (see eval.budget)
    search_runs = 0                        # optional: extra runs per model/family/budget

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
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import logging
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.config import RecipeConfig
from compress.errors import UserError, did_you_mean
from eval.budget import (
    FAMILIES,
    KNOBS,
    RECIPE_FAMILY,
    Budget,
    comparable_runs,
    cost_ratio,
    family_of,
    knob_groups,
    next_probe,
    parse_budget,
    pick_for_model,
    primary_metric,
)

log = logging.getLogger(__name__)

TOP_KEYS = (
    "name",
    "description",
    "models",
    "imports",
    "budgets",
    "search_runs",
    "defaults",
    "runs",
)
DEFAULT_KEYS = ("quick", "threads", "calib_sequences", "calib_seq_len", "calib_seed", "reports",
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


# --------------------------------------------------------------------------- compatibility


@dataclass(frozen=True)
class Traits:
    """What the compatibility checks need to know about a recipe (data, not code paths).

    ``keeps_zeros``: exact zeros of earlier steps stay exactly zero. ``runtime_format``:
    the result is a runtime format (int8 kernels, bitsandbytes, ONNX) that later recipes
    cannot modify. ``trains``: weights are updated by gradient steps. ``sparsity``:
    the sparsity pattern a config produces ("2:4", "unstructured") or None.
    ``divides``: (what, group, width kinds) a config needs to divide those widths
    (``hidden``, ``ffn``).
    ``widths``: how a config changes linear input widths (structured pruning).
    ``hides_ffn``: the FFN is no longer made of linear layers (MoE experts stored as
    stacked tensors), so later quantizers would quantize attention only.
    """

    keeps_zeros: bool | Callable[[RecipeConfig], bool] = True
    zeros_note: str = ""
    runtime_format: bool | Callable[[RecipeConfig], bool] = False
    trains: bool = False
    sparsity: Callable[[RecipeConfig], str | None] = lambda c: None
    divides: Callable[[RecipeConfig], list[tuple[str, int, tuple[str, ...]]]] = lambda c: []
    widths: Callable[[RecipeConfig, dict[str, int]], dict[str, int]] | None = None
    hides_ffn: bool = False


def _pattern_sparsity(config: RecipeConfig) -> str | None:
    pattern = getattr(config, "pattern", None)
    if pattern not in (None, "", "unstructured"):
        return str(pattern)
    sparsity = getattr(config, "sparsity", 0.0)
    return "unstructured" if sparsity and sparsity > 0 else None


def _nm_divides(config: RecipeConfig) -> list[tuple[str, int, tuple[str, ...]]]:
    pattern = getattr(config, "pattern", None)
    if isinstance(pattern, str) and ":" in pattern:
        try:
            m = int(pattern.split(":")[1])
            return [(f"the {pattern} pattern", m, ("hidden", "ffn", "attn"))]
        except ValueError:
            return []
    return []


def _experts_divide(config: RecipeConfig) -> list[tuple[str, int, tuple[str, ...]]]:
    experts = getattr(config, "num_experts", None)
    return [(f"num_experts={experts}", experts, ("ffn",))] if isinstance(experts, int) else []


def _structured_widths(config: RecipeConfig, widths: dict[str, int]) -> dict[str, int]:
    """Widths after ``structured``: the same neuron and head counts as its surgery removes."""
    out = dict(widths)
    ffn_ratio = getattr(config, "ffn_ratio", 0.0)
    if "ffn" in out and ffn_ratio:
        out["ffn"] -= int(round(ffn_ratio * out["ffn"]))
    heads_ratio = getattr(config, "heads_ratio", 0.0)
    if "attn" in out and heads_ratio and widths.get("_heads"):
        heads, kv, dim = (
            widths["_heads"],
            widths.get("_kv_heads") or widths["_heads"],
            widths["_head_dim"],
        )
        if kv != heads and getattr(config, "gqa", "query") == "query":
            per_group = heads // kv
            left = kv * (per_group - int(round(heads_ratio * per_group)))
        elif kv != heads:
            left = (kv - int(round(heads_ratio * kv))) * (heads // kv)
        else:
            left = heads - int(round(heads_ratio * heads))
        out["attn"] = left * dim
        out["_heads"] = left
    return out


TRAITS: dict[str, Traits] = {
    "identity": Traits(),
    "magnitude": Traits(sparsity=_pattern_sparsity, divides=_nm_divides),
    "wanda": Traits(sparsity=_pattern_sparsity, divides=_nm_divides),
    "structured": Traits(widths=lambda c, w: _structured_widths(c, w)),
    # symmetric and asymmetric grids both represent 0.0 exactly (the zero point is an
    # integer, compress.quant.rtn), so rounding keeps every zero a zero.
    "rtn": Traits(),
    "gptq": Traits(
        keeps_zeros=False,
        zeros_note="GPTQ's error compensation updates every remaining weight, pruned ones included",
    ),
    # the runtime formats below use symmetric int8 / NF4 / FP4 codes, all with an exact 0
    "dynamic-int8": Traits(runtime_format=True),
    "onnx-int8": Traits(runtime_format=True),
    "bnb-int8": Traits(runtime_format=True),
    "bnb-4bit": Traits(runtime_format=True),
    "quanto": Traits(runtime_format=True),
    # merge=nf4 leaves bitsandbytes 4-bit layers (a runtime format); merge=fp32 plain fp32
    "qlora": Traits(
        keeps_zeros=False,
        trains=True,
        runtime_format=lambda c: getattr(c, "merge", "nf4") == "nf4",
        zeros_note="the merged low-rank update is dense",
    ),
    "distill": Traits(
        keeps_zeros=False,
        trains=True,
        zeros_note="training updates every weight, pruned ones included",
    ),
    "moefy": Traits(
        keeps_zeros=lambda c: getattr(c, "finetune_steps", 0) == 0,
        zeros_note="its expert fine-tuning updates every FFN weight",
        divides=_experts_divide,
        hides_ffn=True,
    ),
}


def traits_of(name: str) -> Traits:
    return TRAITS.get(name, Traits())


def _keeps_zeros(traits: Traits, config: RecipeConfig) -> bool:
    k = traits.keeps_zeros
    return k(config) if callable(k) else bool(k)


def model_widths(model_config: Any) -> dict[str, int]:
    """Input widths of the model's linears: ``hidden`` and ``ffn`` (intermediate)."""
    cfg = getattr(model_config, "encoder", None) or model_config
    widths = {}
    for key in ("hidden_size", "d_model", "n_embd", "dim"):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            widths["hidden"] = value
            break
    for key in ("intermediate_size", "ffn_dim", "d_ff", "n_inner", "encoder_ffn_dim"):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            widths["ffn"] = value
            break
    if "ffn" not in widths and "hidden" in widths:
        widths["ffn"] = 4 * widths["hidden"]  # GPT-2's n_inner=None means 4 x hidden
    heads = next(
        (
            getattr(cfg, k)
            for k in ("num_attention_heads", "n_head", "encoder_attention_heads", "num_heads")
            if isinstance(getattr(cfg, k, None), int)
        ),
        None,
    )
    if heads and "hidden" in widths:
        dim = (
            getattr(cfg, "head_dim", None)
            or getattr(cfg, "d_kv", None)
            or widths["hidden"] // heads
        )
        widths["attn"] = heads * dim  # input width of the attention output projection
        widths["_heads"], widths["_head_dim"] = heads, dim
        widths["_kv_heads"] = getattr(cfg, "num_key_value_heads", None) or heads
    return widths


def check_pipeline(
    configs: list[RecipeConfig] | tuple[RecipeConfig, ...],
    model_config: Any | Callable[[], Any] | None = None,
) -> None:
    """Raise :class:`UserError` if the pipeline cannot do what it says.

    ``model_config`` (a transformers config, or a callable returning one, called only
    if a width check needs it) enables the width checks.

    >>> from compress.registry import make_config
    >>> check_pipeline([make_config("identity")])
    """
    names = [c.RECIPE for c in configs]
    where = " -> ".join(names)
    widths: dict[str, int] | None = None

    def current_widths() -> dict[str, int] | None:
        nonlocal widths, model_config
        if widths is None and model_config is not None:
            cfg = model_config() if callable(model_config) else model_config
            widths = model_widths(cfg) if cfg is not None else {}
        return widths

    sparse_from: tuple[str, str] | None = None  # (recipe, pattern)
    quantized_by: str | None = None
    for i, config in enumerate(configs):
        name, traits = names[i], traits_of(names[i])
        if i > 0:
            prev = names[i - 1]
            fmt = traits_of(prev).runtime_format
            if fmt(configs[i - 1]) if callable(fmt) else fmt:
                raise UserError(
                    f"pipeline {where}: {prev} turns the model into a runtime format that "
                    f"{name} cannot change; put {prev} last"
                )
        if sparse_from is not None and not _keeps_zeros(traits, config):
            src, pattern = sparse_from
            raise UserError(
                f"pipeline {where}: the {pattern} zeros from {src} would not survive {name} "
                f"({traits.zeros_note or 'it does not keep exact zeros'}); put {name} first "
                "or drop it"
            )
        family = RECIPE_FAMILY.get(name)
        hider = next((n for n in names[:i] if traits_of(n).hides_ffn), None)
        if hider is not None and family == "quantization":
            raise UserError(
                f"pipeline {where}: after {hider} the FFN experts are stacked tensors, not "
                f"linear layers, so {name} would quantize attention only; put {name} before "
                f"{hider}"
            )
        if traits.trains and quantized_by is not None:
            raise UserError(
                f"pipeline {where}: {name} would train the weights {quantized_by} rounded "
                f"back to full precision; run {name} before {quantized_by}"
            )
        if family == "quantization" and not traits.trains:
            if quantized_by is not None:
                raise UserError(
                    f"pipeline {where}: {name} would round weights {quantized_by} already "
                    "rounded; keep one quantization step"
                )
            quantized_by = name
        needs = traits.divides(config)
        if needs and current_widths():
            for what, group, kinds in needs:
                for kind, width in sorted(widths.items()):
                    if kind in kinds and width % group:
                        kind = {"attn": "attention output", "ffn": "FFN"}.get(kind, kind)
                        raise UserError(
                            f"pipeline {where}: {what} of {name} needs widths divisible by "
                            f"{group}, but the {kind} width is {width}"
                            + (
                                " after structured pruning"
                                if any(traits_of(n).widths for n in names[:i])
                                else ""
                            )
                        )
        if traits.widths is not None and current_widths() is not None:
            widths = traits.widths(config, dict(widths))
        pattern = traits.sparsity(config)
        if pattern is not None:
            sparse_from = (name, pattern)


# --------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class Job:
    """One run: a model and a pipeline of validated configs."""

    model: str
    configs: tuple[RecipeConfig, ...]
    quick: bool
    origin: str = ""  # "runs[3]" or "search size=0.5"
    #: the sweep's CalibrationSpec; part of the key when a step calibrates.
    calibration: Any = None

    @property
    def pipeline(self) -> list[dict[str, Any]]:
        from eval.run import step_record

        return [step_record(c) for c in self.configs]

    @property
    def key(self) -> str:
        from compress.calibration import CalibrationSpec, run_key_part
        from eval.report import run_key

        spec = self.calibration if self.calibration is not None else CalibrationSpec()
        return run_key(self.model, self.pipeline, self.quick, run_key_part(self.configs, spec))

    @property
    def label(self) -> str:
        from eval.report import pipeline_label

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
    calibration: Any = None  # CalibrationSpec
    task: str | None = None
    budgets: list[Budget] = field(default_factory=list)
    search_runs: int = 0


def _where(path: Path, *parts: Any) -> str:
    return f"{path.name}: " + "".join(
        f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(parts)
    )


def _check_keys(data: dict[str, Any], allowed: Iterable[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            err = did_you_mean("key", key, allowed)
            raise UserError(f"{where}: {err}")


def _as_list(value: Any, where: str, kind: type | tuple[type, ...] = str) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UserError(f"{where}: expected a list of {names}, got {value!r}")
    return value


def _parse_step(step: Any, where: str) -> tuple[str, dict[str, Any]]:
    if isinstance(step, str):
        words = step.split()
        if not words:
            raise UserError(f"{where}: empty pipeline step")
        params: dict[str, Any] = {}
        for word in words[1:]:
            if "=" not in word:
                raise UserError(f"{where}: expected key=value in {step!r}, got {word!r}")
            key, raw = word.split("=", 1)
            try:
                params[key.replace("-", "_")] = json.loads(raw)
            except ValueError:
                params[key.replace("-", "_")] = raw
        return words[0], params
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


def _build_configs(steps: list[tuple[str, dict[str, Any]]], where: str) -> tuple[RecipeConfig, ...]:
    from compress.registry import get_recipe

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


def _model_config_loader(model: str, build: bool = False) -> Callable[[], Any]:
    """A lazy loader of ``model``'s transformers config, for the width checks.

    Without ``build``, nothing is built or downloaded: a zoo model not built yet is
    read from a built dependency with the same shapes (``minilm-l6`` for its
    fine-tuned variants), else skipped (None) and checked again before it runs.
    """
    cache: dict[str, Any] = {}

    def load() -> Any:
        if "cfg" in cache:
            return cache["cfg"]
        import transformers as tf

        from compress import zoo
        from compress.models import resolve_path

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
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UserError(
                f"{_where(path, 'imports')}: cannot import {module!r} ({exc})"
            ) from None
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
    thr = threads if threads is not None else defaults.get("threads")
    if thr is not None and (not isinstance(thr, int) or thr < 1):
        raise UserError(f"{_where(path, 'defaults', 'threads')}: expected a whole number >= 1")
    from compress.calibration import DEFAULT_SEQ_LEN, DEFAULT_SEQUENCES, CalibrationSpec

    calib_values = {}
    for key, default in (("calib_sequences", DEFAULT_SEQUENCES), ("calib_seq_len", DEFAULT_SEQ_LEN),
                         ("calib_seed", 0)):
        value = defaults.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{_where(path, 'defaults', key)}: expected a whole number")
        calib_values[key] = value
    try:
        calib = CalibrationSpec(calib_values["calib_sequences"], calib_values["calib_seq_len"],
                                calib_values["calib_seed"])
    except UserError as exc:
        raise UserError(f"{_where(path, 'defaults')}: {exc}") from None

    def check_model(name: str, where: str) -> None:
        from compress.models import check_model_name

        try:
            check_model_name(name)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None

    for m in top_models:
        check_model(m, _where(path, "models"))
    jobs: list[Job] = []
    seen: set[str] = set()
    loaders: dict[str, Callable[[], Any]] = {}
    for i, run in enumerate(runs):
        where = _where(path, "runs", i)
        if not isinstance(run, dict):
            raise UserError(f"{where}: expected a table")
        if ("recipe" in run) == ("pipeline" in run):
            raise UserError(f"{where}: give either recipe = NAME or pipeline = [...]")
        if "pipeline" in run:
            _check_keys(run, RUN_KEYS, where)
            pipe = run["pipeline"]
            if not isinstance(pipe, list) or not pipe:
                raise UserError(f"{where}.pipeline: expected a non-empty list of steps")
            steps = [_parse_step(s, f"{where}.pipeline[{j}]") for j, s in enumerate(pipe)]
        else:
            if not isinstance(run["recipe"], str):
                raise UserError(f"{where}.recipe: expected a recipe name")
            params = {k: v for k, v in run.items() if k not in RUN_KEYS}
            steps = [(run["recipe"], params)]
        if is_quick and run.get("skip_quick", False):
            continue
        grid = run.get("quick_grid") if is_quick and "quick_grid" in run else run.get("grid", {})
        run_models = _as_list(run.get("models", top_models), f"{where}.models")
        if not run_models:
            raise UserError(f"{where}: no models (set models at the top or in the run)")
        for m in run_models:
            if m not in top_models:
                check_model(m, f"{where}.models")
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
                loader = loaders.setdefault(m, _model_config_loader(m))
                try:
                    check_pipeline(configs, loader)
                except UserError as exc:
                    raise UserError(f"{where} on {m}: {exc}") from None
                job = Job(m, configs, is_quick, origin=f"runs[{i}]", calibration=calib)
                if job.key not in seen:
                    seen.add(job.key)
                    jobs.append(job)
    if only:
        import fnmatch

        labels = sorted({j.label for j in jobs})
        for pattern in only:
            if not any(fnmatch.fnmatchcase(lab, pattern) for lab in labels):
                err = did_you_mean("run label", pattern, labels)
                raise UserError(f"{path.name}: --only matches no run: {err}")
        jobs = [j for j in jobs if any(fnmatch.fnmatchcase(j.label, p) for p in only)]
    reports_dir = Path(reports if reports is not None else defaults.get("reports", "reports"))
    return Sweep(
        name=str(data.get("name") or path.stem),
        path=path,
        description=str(data.get("description", "")),
        models=top_models,
        jobs=jobs,
        quick=is_quick,
        reports=reports_dir,
        threads=thr,
        calibration=calib,
        task=defaults.get("task"),
        budgets=budgets,
        search_runs=search_runs,
    )


# --------------------------------------------------------------------------- running


def existing_reports(folder: Path) -> dict[str, dict[str, Any]]:
    """Reports in ``folder`` by run key (the newest file wins)."""
    from eval.report import read_reports

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


def _fmt_seconds(s: float) -> str:
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


class _Runner:
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

    def _progress(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.text import Text

        runner = self

        class Remaining(ProgressColumn):
            """Estimated time left: earlier wall times of the same model and pipeline."""

            def render(self, task) -> Text:
                if not task.fields.get("overall"):
                    return Text("")
                return Text(f"~{_fmt_seconds(runner.remaining())} left", style="cyan")

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
                wall = _fmt_seconds(report.get("wall_time_s") or 0)
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
                check_pipeline(job.configs, _model_config_loader(job.model, build=True))
            except UserError as exc:
                from eval.report import Report

                report = Report(
                    model={"name": job.model},
                    pipeline=job.pipeline,
                    quick=job.quick,
                    status="failed",
                    error=str(exc),
                    wall_time_s=0.0,
                )
                return report.write(self.sweep.reports), report.to_dict()
        run_fn = self.run_fn
        if run_fn is None:
            from eval.run import run_pipeline as run_fn
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
    from compress.fileio import atomic_write_json

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
    from compress.fileio import TMP_PREFIX

    if not folder.is_dir():
        return
    now = time.time()
    for p in folder.iterdir():
        if p.name.startswith(TMP_PREFIX) and p.is_file() and now - p.stat().st_mtime > older_than_s:
            p.unlink(missing_ok=True)


def search_jobs(
    sweep: Sweep, reports: list[dict[str, Any]], budget: Budget, model: str, family: str
) -> Job | None:
    """The next extra run for ``family`` on ``model`` to meet ``budget`` (None: done)."""
    from compress.registry import get_recipe

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
    for (recipe, _), group in ordered:
        knob = KNOBS[recipe]
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
        probe = next_probe(
            knob, [(v, ratio <= budget.fraction) for v, ratio, _ in tried], budget.fraction
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
    from rich.console import Console

    console = console or Console(stderr=True)
    sweep.reports.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(sweep.reports)
    runner = _Runner(sweep, console, retry_failed, run_fn)
    todo = [j for j in sweep.jobs if runner.needs_run(j)]
    est = sum(runner.estimate(j) for j in todo)
    console.print(
        f"sweep [bold]{sweep.name}[/]: {len(sweep.jobs)} runs on "
        f"{len({j.model for j in sweep.jobs})} models, "
        f"{len(sweep.jobs) - len(todo)} done already, {len(todo)} to run"
        + (f" (estimate {_fmt_seconds(est)})" if todo else "")
    )
    t0 = time.perf_counter()
    runner.run_jobs(sweep.jobs, f"sweep {sweep.name}")
    if sweep.budgets and sweep.search_runs > 0:
        # Each search replays from the grid's reports alone, adding its own probes one
        # by one: a rerun takes the same steps, finds them done, and runs nothing new.
        grid_keys = {j.key for j in sweep.jobs}
        for budget in sweep.budgets:
            for model in dict.fromkeys(j.model for j in sweep.jobs):
                for family in FAMILIES:
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
    runner.outcome.seconds = time.perf_counter() - t0
    write_manifest(sweep, runner.outcome, runner.jobs)
    return runner.outcome


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
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

    from rich.console import Console

    console = Console(stderr=True)
    if args.dry_run:
        return _dry_run(sweep, console, retry_failed=not args.no_retry_failed)
    outcome = run_sweep(sweep, retry_failed=not args.no_retry_failed, console=console)
    failed = outcome.count("failed")
    console.print(
        f"sweep {sweep.name}: ran {outcome.ran} in {_fmt_seconds(outcome.seconds)}, "
        f"{outcome.count('skipped-ok', 'skipped-failed')} skipped (done before), "
        f"{failed} failed; reports in {sweep.reports}/"
    )
    if sweep.budgets:
        from eval.budget import pick, rich_table
        from eval.report import read_reports

        models = set(sweep.models if not args.model else args.model)
        reports = [
            r
            for r in read_reports(sweep.reports, warn=log.debug)
            if r["model"]["name"] in models and bool(r.get("quick")) == sweep.quick
        ]
        for budget in sweep.budgets:
            Console().print(rich_table(pick(reports, budget), budget))
    return 1 if failed else 0


def _dry_run(sweep: Sweep, console, retry_failed: bool) -> int:
    from rich import box
    from rich.table import Table

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
            (_fmt_seconds(est) + ("" if estimate.measured(job) else " ?")) if will_run else "",
        )
    from rich.console import Console

    out = Console()
    if not out.is_terminal:
        out = Console(width=200)
    out.print(table)
    console.print(
        f"{len(sweep.jobs)} runs, {sum(1 for j in sweep.jobs if j.key not in done)} never run; "
        f"estimate for those to run: {_fmt_seconds(total)} (mean wall time of earlier runs of "
        f"the same model; '?': {guessed} runs with no earlier run of their model, guessed at "
        f"{_fmt_seconds(estimate.default_quick if sweep.quick else estimate.default)})"
    )
    return 0


if __name__ == "__main__":
    from compress.cli import run_main

    sys.exit(run_main(main))
