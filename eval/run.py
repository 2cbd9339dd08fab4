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
import logging
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.config import RecipeConfig
from compress.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_REPORTS = Path("reports")


def parse_step(text: str) -> RecipeConfig:
    """``"rtn bits=4 group_size=128"`` -> the validated config of recipe ``rtn``."""
    import json

    from compress.registry import get_recipe

    words = text.split()
    if not words:
        raise UserError("empty pipeline step; write it as 'RECIPE key=value ...'")
    recipe = get_recipe(words[0])
    values: dict[str, Any] = {}
    for word in words[1:]:
        if "=" not in word:
            raise UserError(f"pipeline step {text!r}: expected key=value, got {word!r}")
        key, raw = word.split("=", 1)
        key = key.replace("-", "_")
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    return recipe.config_cls.from_dict(values)


def step_record(config: RecipeConfig) -> dict[str, Any]:
    defaults = type(config)().to_dict() if _has_all_defaults(type(config)) else {}
    return {"recipe": config.RECIPE, "config": config.to_dict(), "defaults": defaults}


def _has_all_defaults(cls: type[RecipeConfig]) -> bool:
    import dataclasses

    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def run_pipeline(
    model_name: str,
    configs: list[RecipeConfig],
    *,
    quick: bool = False,
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
    """
    import torch

    from compress.calibration import CalibrationSpec, run_key_part
    from eval.report import Report, environment

    calibration = calibration if calibration is not None else CalibrationSpec()

    stage = stage or (lambda name: log.info("stage: %s", name))
    if threads is not None:
        torch.set_num_threads(threads)
    pipeline = [step_record(c) for c in configs]
    report = Report(model={"name": model_name}, pipeline=pipeline, quick=quick,
                    calibration=run_key_part(configs, calibration))
    report.environment = environment(threads)
    t_start = time.perf_counter()
    tmp_save: Path | None = None

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        stage(name)
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            report.stage_times_s[name] = round(time.perf_counter() - t0, 3)

    try:
        from compress.api import compress
        from compress.arch import describe
        from compress.cli import build_context
        from compress.models import load_model
        from compress.saving import save_model
        from eval.benchmark import run_benchmarks
        from eval.profiler import profile

        loaded = timed(
            "load",
            lambda: load_model(
                model_name,
                task,
                device_map=device_map,
                allow_pickle=allow_pickle,
                trust_remote_code=trust_remote_code,
            ),
        )
        report.model.update({"source": loaded.source, "path": loaded.path, "task": loaded.task})
        try:
            report.model["arch"] = describe(loaded.model)
        except UserError as exc:
            report.model["arch"] = {"error": str(exc)}
        context = build_context(loaded, calibration)
        model = loaded.model
        for i, config in enumerate(configs):
            model = timed(
                f"compress:{i}:{config.RECIPE}", lambda m=model, c=config: compress(m, c, context)
            )
        report.info = _jsonable(context.info)
        if save_dir is not None:
            out_dir = Path(save_dir)
        else:
            tmp_save = Path(tempfile.mkdtemp(prefix="compress-run-"))
            out_dir = tmp_save / "model"
        timed("save", lambda: save_model(model, loaded.tokenizer, out_dir))
        metrics = timed(
            "benchmark", lambda: run_benchmarks(model, loaded.tokenizer, loaded.task, quick=quick)
        )
        report.metrics = [_metric_dict(m) for m in metrics]
        report.profile = timed(
            "profile",
            lambda: profile(
                model,
                loaded.tokenizer,
                loaded.task,
                threads=threads,
                quick=quick,
                saved_dir=out_dir,
            ),
        )
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


def _metric_dict(metric: Any) -> dict[str, Any]:
    import dataclasses

    data = dataclasses.asdict(metric) if dataclasses.is_dataclass(metric) else dict(metric)
    data["value"] = float(data["value"])
    return _jsonable(data)


def _jsonable(obj: Any) -> Any:
    """Convert tensors / numpy scalars / paths to JSON-ready values."""
    import json

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
    from compress.cli import add_config_arguments, add_model_arguments
    from compress.registry import get_recipe

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
    from compress.cli import calibration_spec_from_args, config_from_args
    from compress.registry import get_recipe

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default="identity")
    known, _ = pre.parse_known_args(argv)
    recipe = get_recipe(known.recipe)
    args = build_parser(known.recipe).parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    configs = [config_from_args(recipe.config_cls, args)] + [parse_step(s) for s in args.then]
    from compress.models import check_model_name

    check_model_name(args.model)

    from rich.console import Console

    console = Console(stderr=True)
    with console.status(f"{args.model}: starting") as status:
        path, report = run_pipeline(
            args.model,
            configs,
            quick=args.quick,
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


def report_label(configs: list[RecipeConfig]) -> str:
    return "+".join(c.RECIPE for c in configs)


if __name__ == "__main__":
    import sys

    from compress.cli import run_main

    sys.exit(run_main(main))
