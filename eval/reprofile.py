"""``python -m eval.reprofile reports/``: the same-process latency ratio for reports that lack it.

Reports written before the profiler timed every run against its dense model in the same
process (:mod:`eval.profiler`, ``latency_vs_dense``) carry only absolute milliseconds, which
move by 30-40% between processes on a shared machine, so they meet no latency budget
(:mod:`eval.budget`). This command measures the missing ratio without rerunning the
benchmark: for each such report it rebuilds the compressed model from the report's own
pipeline (the recipes and their recorded configs, on the model's shared calibration set),
then times it against the dense model in alternating rounds in one process, the forward
shapes 1 x 128 and 8 x 128 (no generation: ``--generate`` adds it).

A rebuild is the same architecture and storage format, not always the same weights:

* recipes that train (``distill``, ``qlora``, pruning's fine-tuning, ``recover``) are
  rebuilt with no training steps (``recover`` is left out: it changes no shape). The time
  of a dense matmul does not depend on the values it multiplies, so the shapes and formats
  decide the latency;
* options a later version of the suite dropped (per-recipe calibration sizes, replaced by
  the shared calibration set) are left out, options an old config version did not have
  take today's defaults (the note lists them); a ``distill`` student is rebuilt from the even
  spread of its block count (which blocks are kept changes no shape, and measuring block
  importance would cost more than the timing).

What was changed is written next to the ratio (``profile.latency_vs_dense_source``), and a
rebuild is only used when its parameter count equals the report's and its nonzeros and
bytes in memory (the model that is timed) are within 1% of the report's (else the report
is left as it was and the reason is printed); a saved format that changed since (bytes on
disk) is noted. A measurement on a busy machine (:func:`eval.machine.is_busy`) is not
written. Reports are rewritten atomically; the quality metrics are not touched.

    python -m eval.reprofile reports/ --dry-run     # what would be measured, and why not
    python -m eval.reprofile reports/ --models smollm2-135m --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.cli import parse_shapes
from compress.errors import UserError, run_main

#: config fields that set training steps: 0 in a rebuild
TRAINING_FIELDS = ("steps", "finetune_steps")
#: relative tolerance of the rebuild check on nonzeros and bytes in memory
TOLERANCE = 0.01
SHAPES = ((1, 128), (8, 128))


@dataclass
class Rebuild:
    """The configs that rebuild a report's model, and what differs from the report's run."""

    configs: list[Any]
    changes: list[str] = field(default_factory=list)


def needs_ratio(report: dict[str, Any]) -> bool:
    """An ok, full-protocol report without a same-process 1 x 128 latency ratio."""
    vs = (report.get("profile") or {}).get("latency_vs_dense") or {}
    return (report.get("status") == "ok" and not report.get("quick")
            and not isinstance(vs.get("1x128"), dict))


def rebuild_configs(report: dict[str, Any]) -> Rebuild:
    """The current configs for the report's pipeline; raises UserError where none can be made."""
    from eval.pipeline import read_recorded

    out = Rebuild([])
    for step in report.get("pipeline") or []:
        recipe = step["recipe"]
        if recipe == "recover":
            out.changes.append("recover left out (it changes no shape)")
            continue
        values = dict(step.get("config") or {})
        trained = [k for k in TRAINING_FIELDS if isinstance(values.get(k), int) and values[k] > 0]
        for k in trained:
            values[k] = 0
        if recipe == "distill" and values.get("layer_map") is None:
            values["layer_choice"] = "spread"  # skip the block-importance measurement
        config, notes = read_recorded(recipe, values)
        out.changes.extend(notes)
        if recipe == "distill" and config.layer_map is None and (step.get("config") or {}).get(
                "layer_choice") != "spread":
            out.changes.append("distill: layer_choice=spread (the same number of blocks; "
                               "which blocks are kept does not change a shape)")
        if trained:
            out.changes.append(f"{recipe}: untrained rebuild ({', '.join(trained)}=0)")
        out.configs.append(config)
    if not out.configs:
        raise UserError("nothing to rebuild: the pipeline has no shape-changing step")
    return out


def _close(a: Any, b: Any) -> bool:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return False
    return abs(a - b) <= TOLERANCE * max(abs(b), 1)


def check_rebuild(measured: dict[str, Any], recorded: dict[str, Any]) -> str | None:
    """None when the rebuild matches the report's model in what the timing runs on (the
    parameter count, nonzeros and bytes in memory), else what differs."""
    if measured.get("params_total") != recorded.get("params_total"):
        return (f"parameters {measured.get('params_total')} against the report's "
                f"{recorded.get('params_total')}")
    for key in ("params_nonzero", "bytes_in_memory"):
        if not _close(measured.get(key), recorded.get(key)):
            return f"{key} {measured.get(key)} against the report's {recorded.get(key)}"
    return None


def disk_note(measured: dict[str, Any], recorded: dict[str, Any]) -> str | None:
    """A note where only the saved format differs (e.g. a recipe that now saves packed)."""
    if _close(measured.get("bytes_on_disk"), recorded.get("bytes_on_disk")):
        return None
    return (f"saved format changed: {measured.get('bytes_on_disk')} bytes on disk against the "
            f"report's {recorded.get('bytes_on_disk')} (the model in memory, which is timed, "
            "matches)")


def _calibration(report: dict[str, Any]) -> Any:
    from compress.calibration import CalibrationSpec

    rec = report.get("calibration") or {}
    if all(isinstance(rec.get(k), int) for k in ("sequences", "seq_len", "seed")):
        return CalibrationSpec(rec["sequences"], rec["seq_len"], rec["seed"])
    return CalibrationSpec()


def measure(report: dict[str, Any], loaded: Any, dense: Any, threads: int,
            generate: bool, contexts: dict | None = None, **timing: Any) -> dict[str, Any]:
    """Rebuild the report's model from ``loaded`` (left unchanged) and time it against
    ``dense``; returns ``{"source": ..., "profile": ...}`` or ``{"skip": reason}``.
    ``contexts``: a cache of compress contexts by calibration (one per model, as the
    benchmark scripts share one: the data and tokenized calibration load once).
    ``timing``: the profiler's shapes and rounds (default :data:`SHAPES`, its defaults)."""
    from compress.api import compress
    from compress.cli import build_context
    from eval.profiler import profile
    from eval.report import git_commit

    try:
        plan = rebuild_configs(report)
    except UserError as exc:
        return {"skip": str(exc)}
    spec = _calibration(report)
    contexts = {} if contexts is None else contexts
    key = json.dumps(spec.key(), sort_keys=True)
    if key not in contexts:
        contexts[key] = build_context(loaded, spec)
    context = contexts[key]
    context.info = {}
    context.teacher = lambda: copy.deepcopy(dense)
    model = copy.deepcopy(loaded.model)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for config in plan.configs:
            model = compress(model, config, context)
    rebuild_s = time.perf_counter() - t0
    prof = profile(model, loaded.tokenizer, loaded.task, threads=threads,
                   dense=dense, generate=generate, **{"shapes": SHAPES, **timing})
    wrong = check_rebuild(prof, report.get("profile") or {})
    if wrong:
        return {"skip": f"the rebuild differs from the report's model: {wrong}"}
    note = disk_note(prof, report.get("profile") or {})
    if note:
        plan.changes.append(note)
    if prof.get("busy_machine"):
        return {"skip": "the machine was busy while timing "
                        f"(other processes {prof.get('other_processes_cores')} cores): not written"}
    source = {
        "measured_by": "eval.reprofile: the report's pipeline rebuilt and timed against "
                       "dense in alternating rounds in one process",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "git_commit": git_commit(),
        "rebuild_changes": plan.changes,
        "rebuild_seconds": round(rebuild_s, 1),
        "checked": "parameter count equal, nonzeros and bytes in memory within "
                   f"{TOLERANCE:.0%} of the report's",
        "threads": prof.get("threads"),
        "repeats": prof.get("repeats"),
        "warmup": prof.get("warmup"),
        "other_processes_cores": prof.get("other_processes_cores"),
        "load_average": prof.get("load_average"),
        "machine": prof.get("machine"),
    }
    return {"source": source, "profile": prof}


def apply(report: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The report with the rebuild's ratios added under ``profile`` (nothing else changes)."""
    out = copy.deepcopy(report)
    prof = out.setdefault("profile", {})
    prof["latency_vs_dense"] = result["profile"]["latency_vs_dense"]
    if "generate_vs_dense" in result["profile"]:
        prof["generate_vs_dense"] = result["profile"]["generate_vs_dense"]
    prof["latency_vs_dense_source"] = result["source"]
    return out


def _todo(folder: Path, models: list[str] | None, redo: bool) -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(report, dict) or "pipeline" not in report:
            continue
        name = (report.get("model") or {}).get("name")
        if models and name not in models:
            continue
        if needs_ratio(report) or (redo and report.get("status") == "ok"
                                   and not report.get("quick")
                                   and "latency_vs_dense_source" in report.get("profile", {})):
            out.append((path, report))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.reprofile",
                                description=__doc__.splitlines()[0])
    p.add_argument("reports", type=Path, help="folder of run reports (not searched below)")
    p.add_argument("--models", nargs="+", default=None, help="only these models' reports")
    p.add_argument("--skip-recipes", nargs="+", default=(), metavar="RECIPE",
                   help="leave out reports whose pipeline uses one of these recipes")
    p.add_argument("--shapes", nargs="+", default=[f"{b}x{n}" for b, n in SHAPES],
                   metavar="BxL", help="forward shapes to time (the latency budget reads 1x128)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--generate", action="store_true",
                   help="also time generation against dense (causal LM, seq2seq)")
    p.add_argument("--redo", action="store_true",
                   help="measure again the reports this command measured before")
    p.add_argument("--dry-run", action="store_true",
                   help="list the reports and their rebuilds; measure nothing")
    args = p.parse_args(argv)
    if not args.reports.is_dir():
        raise UserError(f"{args.reports} is not a folder of reports; give the folder "
                        "eval.run wrote into (default: reports/)")
    if args.threads < 1:
        raise UserError("--threads must be at least 1")
    shapes = parse_shapes(args.shapes)
    todo = [(path, r) for path, r in _todo(args.reports, args.models, args.redo)
            if not {s.get("recipe") for s in r["pipeline"]} & set(args.skip_recipes)]
    print(f"{len(todo)} report(s) without a same-process latency ratio", flush=True)
    if args.dry_run:
        for path, report in todo:
            try:
                changes = rebuild_configs(report).changes
                print(f"  {path.name}: " + ("; ".join(changes) or "rebuilt as recorded"))
            except UserError as exc:
                print(f"  {path.name}: cannot rebuild: {exc}")
        return 0
    import torch

    from compress.fileio import atomic_write_json
    from compress.models import load_model

    torch.set_num_threads(args.threads)
    by_model: dict[str, list[tuple[Path, dict]]] = {}
    for path, report in todo:
        by_model.setdefault(report["model"]["name"], []).append((path, report))
    written = skipped = 0
    for name, items in by_model.items():
        task = items[0][1]["model"].get("task")
        try:
            loaded = load_model(name, task)
        except Exception as exc:  # noqa: BLE001 - the other models' reports still run
            skipped += len(items)
            print(f"  skip the {len(items)} report(s) of {name}: cannot load it "
                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                  "run this where the model loads", flush=True)
            continue
        dense = copy.deepcopy(loaded.model).eval()
        contexts: dict[str, Any] = {}
        for path, report in items:
            t0 = time.perf_counter()
            try:
                result = measure(report, loaded, dense, args.threads, args.generate, contexts,
                                 shapes=shapes)
            except Exception as exc:  # noqa: BLE001 - one report's failure is not the run's
                result = {"skip": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            if "skip" in result:
                skipped += 1
                print(f"  skip {path.name}: {result['skip']}", flush=True)
                continue
            atomic_write_json(path, apply(report, result))
            written += 1
            vs = result["profile"]["latency_vs_dense"]
            shown = ", ".join(f"{k} {v['ratio']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
                              for k, v in vs.items())
            print(f"  {path.name}: {shown} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"{written} written, {skipped} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
