"""``python -m eval.run``: load, compress, evaluate, profile, and write one report.

    python -m eval.run --model smollm2-135m --recipe identity
    python -m eval.run --model minilm-l6-sentiment --recipe magnitude --sparsity 0.5
    python -m eval.run --model smollm2-135m --recipe wanda --sparsity 0.5 --then "rtn bits=4"

The recipe's flags come from its config dataclass (``--help`` after ``--recipe R``
lists them). ``--then "RECIPE key=value ..."`` chains more recipes (a pipeline).
A failed run still writes its report, with status ``failed`` and the error.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from compress.api import compress
from compress.arch import describe
from compress.calibration import CalibrationSpec, run_key_part
from compress.cli import (
    add_config_arguments,
    add_model_arguments,
    build_context,
    calibration_spec_from_args,
    config_from_args,
    run_main,
)
from compress.config import RecipeConfig
from compress.errors import UserError
from compress.export import interchange_sizes
from compress.models import check_model_name, load_model
from compress.registry import get_recipe
from compress.saving import save_model
from eval import protocol as eval_protocol
from eval.benchmark import run_benchmarks
from eval.benchmark.reference import cached_reference, measure_reference, reference_key
from eval.pipeline import parse_step, report_label, step_record
from eval.profiler import profile
from eval.report import Report, environment

log = logging.getLogger(__name__)

DEFAULT_REPORTS = Path("reports")


def run_pipeline(
    model_name: str,
    configs: list[RecipeConfig],
    *,
    quick: bool = False,
    protocol: str = "full",
    reports_dir: str | Path = DEFAULT_REPORTS,
    task: str | None = None,
    threads: int | None = None,
    device_map: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    calibration: Any = None,
    save_dir: str | Path | None = None,
    stage: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run one pipeline on one model and write its report; returns (path, report dict).

    Errors inside the run are recorded in the report (status ``failed``) and the
    report is still written; bad arguments raise :class:`UserError` before anything runs.
    ``calibration`` is the :class:`~compress.calibration.CalibrationSpec` every calibrating
    step reads (default: the suite's N x L); it joins the run key when a step calibrates.
    ``protocol`` (:mod:`eval.protocol`): ``full`` (default) or ``lean``, the main job's
    shorter benchmark and profile; ``quick`` wins over it.
    """
    protocol = "quick" if quick else eval_protocol.check(protocol)
    with eval_protocol.use("full" if quick else protocol):
        calibration = calibration if calibration is not None else CalibrationSpec()
        stage = stage or (lambda name: log.info("stage: %s", name))
        if threads is not None:
            torch.set_num_threads(threads)
        report = Report(model={"name": model_name}, pipeline=[step_record(c) for c in configs],
                        quick=quick, protocol=protocol,
                        calibration=run_key_part(configs, calibration))
        report.environment = environment(threads)
        t_start = time.perf_counter()
        tmp_save = None if save_dir is not None else Path(tempfile.mkdtemp(prefix="compress-run-"))
        out_dir = Path(save_dir) if save_dir is not None else tmp_save / "model"
        try:
            _run_stages(report, configs, out_dir, stage, model_name, task=task, threads=threads,
                        quick=quick, calibration=calibration,
                        load_kwargs={"device_map": device_map, "allow_pickle": allow_pickle,
                                     "trust_remote_code": trust_remote_code})
            report.status = "ok"
        except UserError as exc:
            report.status, report.error = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - recorded in the report, the sweep goes on
            report.status = "failed"
            report.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            report.traceback = traceback.format_exc()
            log.error("run failed: %s", report.error)
        finally:
            if tmp_save is not None:
                shutil.rmtree(tmp_save, ignore_errors=True)
            report.wall_time_s = round(time.perf_counter() - t_start, 3)
        path = report.write(reports_dir)
        return path, report.to_dict()


def _run_stages(
    report: Report,
    configs: list[RecipeConfig],
    out_dir: Path,
    stage: Callable[[str], None],
    model_name: str,
    *,
    task: str | None,
    threads: int | None,
    quick: bool,
    calibration: CalibrationSpec,
    load_kwargs: dict[str, Any],
) -> None:
    """Load, compress, save, benchmark and profile, filling ``report`` stage by stage."""

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        stage(name)
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            report.stage_times_s[name] = round(time.perf_counter() - t0, 3)

    loaded = timed("load", lambda: load_model(model_name, task, **load_kwargs))
    report.model.update({"source": loaded.source, "path": loaded.path, "task": loaded.task})
    try:
        report.model["arch"] = describe(loaded.model)
    except UserError as exc:
        report.model["arch"] = {"error": str(exc)}
    context = build_context(loaded, calibration)
    # the dense model for a step that distils from it (recover): loaded again from the same
    # source with the same options when a step asks, so no second copy is held otherwise
    context.teacher = lambda: load_model(model_name, task, **load_kwargs).model
    # the dense side of the paired intervals and agreement metrics: keyed by the weights
    # before the recipes change them in place, usually in the cache; else measured below
    # on a fresh copy (a forward now could leave transformers' output hooks on the model)
    cached = timed("dense reference: key", lambda: _cached_reference(loaded, quick))
    model = loaded.model
    for i, config in enumerate(configs):
        model = timed(
            f"compress:{i}:{config.RECIPE}", lambda m=model, c=config: compress(m, c, context)
        )
    report.info = _jsonable(context.info)
    reference, record = cached
    if reference is not None:
        record = reference.record
    elif "error" not in record:
        reference, record = timed(
            "dense reference: measure",
            lambda: _measured_reference(
                loaded, quick, record, lambda: load_model(model_name, task, **load_kwargs).model
            ),
        )
    report.info["dense_reference"] = record
    timed("save", lambda: save_model(model, loaded.tokenizer, out_dir))
    metrics = timed(
        "benchmark",
        lambda: run_benchmarks(
            model, loaded.tokenizer, loaded.task, quick=quick, reference=reference
        ),
    )
    report.metrics = [_metric_dict(m) for m in metrics]
    report.samples = {m.name: m.samples for m in metrics
                      if getattr(m, "samples", None) is not None}
    report.profile = timed(
        "profile",
        lambda: profile(
            model, loaded.tokenizer, loaded.task, threads=threads, quick=quick,
            saved_dir=out_dir,
            # the dense model, reloaded: recipes compress in place. Timed against the
            # result in alternating rounds in this process (eval.paired).
            dense=lambda: load_model(model_name, task, **load_kwargs).model,
        ),
    )
    # what the result takes in the formats other tools load (compressed-tensors, GGUF)
    try:
        report.profile["interchange"] = interchange_sizes(model, loaded.tokenizer, loaded.task)
    except Exception as exc:  # noqa: BLE001 - a size we could not measure is not a failed run
        report.profile["interchange"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}


def _cached_reference(loaded: Any, quick: bool) -> tuple[Any, dict[str, Any]]:
    """(cached dense reference or None, the key parts or the error that stops pairing)."""
    try:
        parts = reference_key(loaded.model, loaded.tokenizer, loaded.task, quick)
        return cached_reference(parts, loaded.task), parts
    except Exception as exc:  # noqa: BLE001 - a missing comparison is not a failed run
        log.warning("no dense reference: %s", exc)
        return None, {"error": f"{type(exc).__name__}: {exc}"[:300]}


def _measured_reference(
    loaded: Any, quick: bool, parts: dict[str, Any], load_dense: Callable[[], Any]
) -> tuple[Any, dict[str, Any]]:
    """Measure the dense reference on a freshly loaded dense model (eval.benchmark.reference);
    without it the run still gets intervals, not agreement or paired changes."""
    try:
        ref = measure_reference(load_dense(), loaded.tokenizer, loaded.task, quick, parts)
    except Exception as exc:  # noqa: BLE001 - a missing comparison is not a failed run
        log.warning("no dense reference: %s", exc)
        return None, {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return ref, ref.record  # the dense copy is freed on return, before the benchmark


def _metric_dict(metric: Any) -> dict[str, Any]:
    data = metric.to_dict() if hasattr(metric, "to_dict") else dict(metric)
    data["value"] = float(data["value"])
    return _jsonable(data)


def _jsonable(obj: Any) -> Any:
    """Convert tensors / numpy scalars / paths to JSON-ready values."""
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        pass
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            pass
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def build_parser(recipe_name: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.run",
        description="Load a model, apply a recipe (or a pipeline), run the shared benchmark "
        "and profiler, and write one JSON report.",
    )
    add_model_arguments(parser)
    parser.add_argument("--recipe", default="identity", help="recipe name (default: identity)")
    parser.add_argument(
        "--then",
        action="append",
        default=[],
        metavar="'RECIPE k=v ...'",
        help="chain another recipe after the first (repeatable)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small benchmark and profile (smoke runs, not for comparisons)",
    )
    parser.add_argument(
        "--protocol",
        choices=["full", "lean"],
        default="full",
        help="benchmark and profile protocol: full (default, the reference) or lean (the "
        "main job's: a third to a half of the windows and examples, about half the timed "
        "rounds; eval.protocol)",
    )
    parser.add_argument(
        "--reports",
        type=Path,
        default=DEFAULT_REPORTS,
        help="folder for the JSON report (default: reports/)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads, pinned and recorded (default: torch's choice)",
    )
    parser.add_argument(
        "--save", type=Path, default=None, help="also keep the compressed model in this folder"
    )
    if recipe_name is not None:
        add_config_arguments(parser, get_recipe(recipe_name).config_cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default="identity")
    known, _ = pre.parse_known_args(argv)
    recipe = get_recipe(known.recipe)
    args = build_parser(known.recipe).parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    configs = [config_from_args(recipe.config_cls, args)] + [parse_step(s) for s in args.then]
    check_model_name(args.model)
    console = Console(stderr=True)
    with console.status(f"{args.model}: starting") as status:
        path, report = run_pipeline(
            args.model,
            configs,
            quick=args.quick,
            protocol=args.protocol,
            reports_dir=args.reports,
            task=args.task,
            threads=args.threads,
            device_map=args.device_map,
            allow_pickle=args.allow_pickle,
            trust_remote_code=args.trust_remote_code,
            calibration=calibration_spec_from_args(args),
            save_dir=args.save,
            stage=lambda s: status.update(f"{args.model} · {report_label(configs)} · {s}"),
        )
    summary = ", ".join(f"{m['name']}={m['value']:.4g}" for m in report["metrics"])
    if report["status"] == "ok":
        console.print(f"[green]ok[/] {report['label']} on {args.model}: {summary} -> {path}")
        return 0
    console.print(f"[red]failed[/] {report['label']} on {args.model}: {report['error']} -> {path}")
    return 1


if __name__ == "__main__":
    sys.exit(run_main(main))
