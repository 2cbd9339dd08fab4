"""``python -m eval.lm_eval``: lm-eval tasks on a model, compressed in memory or from a folder.

    # offline: the suite's own held-out splits (see eval.lm_eval)
    python -m eval.lm_eval --model smollm2-135m --recipe rtn --opt bits=4 \\
        --tasks suite_wiki,suite_news,suite_sentiment
    python -m eval.lm_eval --model smollm2-135m --compressed out/smollm2-gptq4 --tasks suite_offline
    # with the hub: any lm-eval task on any hub model
    python -m eval.lm_eval --model EleutherAI/pythia-160m --recipe gptq --opt bits=4 \\
        --tasks hellaswag,arc_easy

The results go into the suite's report of the same run (the file ``eval.run`` writes for
this model, pipeline and calibration: its metrics gain ``<task>/<metric>`` entries, so
``eval.compare`` shows them in that run's row); when no such report exists, into a report
of their own (``harness: lm-eval``, no profile; its key differs, so a sweep never takes it
for a finished run). ``--compressed DIR`` evaluates a folder ``save_model`` wrote; its
pipeline is recorded as the step ``compressed(folder=DIR)``.

Every metric has a 95% bootstrap interval over documents; ``vs_dense`` (its change
against the dense model on the same documents, paired) is added whenever the dense
model's per-document values are cached for this setting: an uncompressed run caches them,
and ``--vs-dense`` measures them first when missing (:mod:`eval.lm_eval.paired`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from compress.calibration import run_key_part
from compress.cli import (
    add_model_arguments,
    build_context,
    calibration_spec_from_args,
    run_main,
)
from compress.errors import UserError
from compress.fileio import atomic_write_json
from eval.lm_eval import TASKS_DIR, evaluate, paired, split_tasks
from eval.pipeline import parse_step, parse_step_text, step_record
from eval.report import Report, environment
from eval.report.schema import report_filename

HARNESS = "lm-eval"
log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.lm_eval",
        description="Run lm-evaluation-harness tasks on a (compressed) model held in memory "
        "and write the results into the suite's report.")
    add_model_arguments(parser)
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks: the "
                        "suite's offline suite_wiki, suite_news, suite_sentiment (all: "
                        "suite_offline), or any lm-eval task when the hub is reachable")
    parser.add_argument("--recipe", default=None, help="compress with this recipe first")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of --recipe (repeatable), e.g. --opt bits=4")
    parser.add_argument("--then", action="append", default=[], metavar="'RECIPE k=v ...'",
                        help="chain another recipe after --recipe (repeatable)")
    parser.add_argument("--compressed", type=Path, default=None, metavar="DIR",
                        help="evaluate a compressed model saved in DIR (save_model / --save)")
    parser.add_argument("--limit", type=float, default=None,
                        help="at most this many documents per task (below 1: that fraction)")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples")
    parser.add_argument("--batch-size", type=int, default=4, help="batch size (default: 4)")
    parser.add_argument("--max-length", type=int, default=1024,
                        help="longest sequence scored at once; rolling perplexity windows "
                        "are this long (default: 1024)")
    parser.add_argument("--include-path", action="append", default=[], metavar="DIR",
                        help="another folder of lm-eval task YAMLs (repeatable)")
    parser.add_argument("--vs-dense", action="store_true",
                        help="pair every metric with the dense model's on the same documents "
                        "(measuring dense first unless an earlier run cached it)")
    parser.add_argument("--reports", type=Path, default=Path("reports"),
                        help="folder of the suite's JSON reports (default: reports/)")
    return parser


def configs_from_args(args: argparse.Namespace) -> list:
    """The pipeline ``--recipe``/``--opt``/``--then`` name (``identity`` when none is named,
    as ``eval.run``; empty with ``--compressed``)."""
    from compress.registry import get_recipe, make_config

    if args.recipe is None:
        if args.opt or args.then:
            raise UserError("--opt and --then need --recipe")
        return [] if args.compressed is not None else [make_config("identity")]
    if args.compressed is not None:
        raise UserError("give --recipe (compress now) or --compressed DIR (compressed "
                        "before), not both")
    bad = [o for o in args.opt if "=" not in o]
    if bad:
        raise UserError(f"--opt takes KEY=VALUE, got {bad[0]!r}")
    name, params = parse_step_text(" ".join([args.recipe, *args.opt]), where="--recipe/--opt")
    first = get_recipe(name).config_cls.from_dict(params)
    return [first] + [parse_step(s) for s in args.then]


class Evaluator:
    """One lm-eval setting (tasks, limit, shots, lengths) applied to several models, with the
    dense model's per-document values cached for the paired comparison
    (:mod:`eval.lm_eval.paired`)."""

    def __init__(self, args: argparse.Namespace, tasks: list[str], limit: int | float | None):
        self.tasks, self.limit = tasks, limit
        self.settings = {"limit": limit, "num_fewshot": args.num_fewshot,
                         "batch_size": args.batch_size, "max_length": args.max_length,
                         "include_path": [str(p) for p in args.include_path]}

    def __call__(self, model: Any, tokenizer: Any, task: str) -> tuple[list, dict[str, Any]]:
        return evaluate(model, tokenizer, self.tasks, task=task, **self.settings)

    def dense_key(self, dense: Any) -> str:
        """The cache key of ``dense`` (the uncompressed model) under this setting."""
        from lm_eval import __version__ as lm_eval_version

        # the suite's task files: editing a prompt or a split makes a new dense entry
        files = hashlib.sha256()
        for path in sorted(TASKS_DIR.glob("*.*")):
            files.update(path.name.encode() + path.read_bytes())
        protocol = {"lm_eval": lm_eval_version, **self.settings, "suite_tasks": files.hexdigest()}
        return paired.dense_key(paired.fingerprint(dense), protocol)

    def dense_documents(self, dense: Any, tokenizer: Any, task: str, measure: bool
                        ) -> tuple[str, dict[str, Any]]:
        """(cache key, dense per-document values by metric): cached, and with ``measure``
        the tasks the cache lacks measured now (and cached)."""
        key = self.dense_key(dense)
        entry = paired.load_dense(key)
        missing = [t for t in self.tasks if t not in entry["requested"]]
        if missing and measure:
            log.info("lm-eval: measuring the dense model on %s for the paired comparison",
                     ", ".join(missing))
            metrics = evaluate(dense, tokenizer, missing, task=task, **self.settings)[0]
            paired.save_dense(key, missing, paired.documents(metrics))
            entry = paired.load_dense(key)
        return key, entry["documents"]


def _load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"device_map": args.device_map, "allow_pickle": args.allow_pickle,
            "trust_remote_code": args.trust_remote_code}


def compress_now(args: argparse.Namespace, configs: list, ev: Evaluator) -> tuple:
    """Load ``--model``, read (or, with ``--vs-dense``, measure) dense's documents, compress.
    Returns (model, tokenizer, model record, recipe info, dense key, dense documents)."""
    from compress.api import compress
    from compress.models import load_model

    loaded = load_model(args.model, args.task, **_load_kwargs(args))
    identity = all(c.RECIPE == "identity" for c in configs)
    key, dense = ev.dense_documents(loaded.model, loaded.tokenizer, loaded.task,
                                    measure=args.vs_dense and not identity)
    context = build_context(loaded, calibration_spec_from_args(args))
    model = loaded.model
    for config in configs:
        model = compress(model, config, context)
    record = {"name": args.model, "source": loaded.source, "path": loaded.path,
              "task": loaded.task}
    return model, loaded.tokenizer, record, dict(context.info), (key if identity else None), dense


def load_saved(args: argparse.Namespace, ev: Evaluator) -> tuple:
    """The model ``--compressed DIR`` holds (its tokenizer, else ``--model``'s); dense's
    documents from the cache (with ``--vs-dense``: measured when missing)."""
    import transformers as tf

    from compress.models import check_model_name, load_model, resolve_path, task_of
    from compress.saving import load_compressed

    folder = args.compressed
    if not folder.is_dir():
        raise UserError(f"--compressed {folder}: no such folder")
    check_model_name(args.model)
    model = load_compressed(folder)
    if not isinstance(model, tf.PreTrainedModel):
        raise UserError(f"--compressed {folder} holds a {type(model).__name__}, not a "
                        "transformers model: lm-eval's HFLM scores transformers models only")
    model.eval()
    has_tokenizer = any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    tok_path = str(folder) if has_tokenizer else resolve_path(args.model)[1]
    tokenizer = tf.AutoTokenizer.from_pretrained(tok_path,
                                                 trust_remote_code=args.trust_remote_code)
    task = args.task or task_of(model.config)
    dense = None
    if args.vs_dense:
        base = load_model(args.model, task, **_load_kwargs(args)).model
        dense = ev.dense_documents(base, tokenizer, task, measure=True)[1]
        del base
    record = {"name": args.model, "source": f"local:{folder.resolve()}", "path": str(folder),
              "task": task}
    return model, tokenizer, record, {}, None, dense


def write_results(reports: Path, report: Report, metrics: list[dict[str, Any]],
                  record: dict[str, Any]) -> tuple[Path, bool]:
    """Add ``metrics`` to the report of the same run if ``reports`` has one, else write
    ``report`` as a report of its own (key with ``harness``). Returns (path, merged)."""
    path = reports / report_filename(report.model["name"], report.pipeline, report.key)
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") == report.key:
            names = {m["name"] for m in metrics}
            data["metrics"] = [m for m in data.get("metrics", []) if m["name"] not in names]
            data["metrics"] += metrics
            data.setdefault("lm_eval", {}).update(record)
            atomic_write_json(path, data)
            return path, True
    report.harness = HARNESS
    report.metrics = metrics
    report.status = "ok"
    data = report.to_dict() | {"lm_eval": record}
    path = reports / report_filename(report.model["name"], report.pipeline, report.key)
    atomic_write_json(path, data)
    return path, False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # lm-eval warns about every in-memory model and custom dataset: keep its errors only
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    tasks = split_tasks(args.tasks)
    limit = args.limit
    if limit is not None:
        if limit <= 0:
            raise UserError("--limit must be positive")
        limit = int(limit) if limit >= 1 else limit
    configs = configs_from_args(args)
    ev = Evaluator(args, tasks, limit)
    if args.compressed is None:
        model, tokenizer, model_record, info, dense_key, dense = compress_now(args, configs, ev)
        pipeline = [step_record(c) for c in configs]
        calibration = run_key_part(configs, calibration_spec_from_args(args))
    else:
        model, tokenizer, model_record, info, dense_key, dense = load_saved(args, ev)
        pipeline = [{"recipe": "compressed", "config": {"folder": str(args.compressed.resolve())},
                     "defaults": {}}]
        calibration = None
    metrics, record = ev(model, tokenizer, model_record["task"])
    if dense_key is not None:  # the uncompressed model: later runs pair against it
        paired.save_dense(dense_key, tasks, paired.documents(metrics))
    elif dense:
        record["paired_with_dense"] = paired.add_vs_dense(metrics, dense)
    report = Report(model=model_record, pipeline=pipeline, calibration=calibration)
    report.environment = environment()
    report.info = json.loads(json.dumps(info, default=str))
    record["tasks_asked"] = tasks
    metrics = paired.public(metrics)
    path, merged = write_results(args.reports, report, metrics, record)
    for m in metrics:
        iv, vs = m.get("interval"), m.get("vs_dense")
        band = f" [{iv['low']:.4g}, {iv['high']:.4g}]" if iv else ""
        if vs:
            band += (f"  vs dense {vs['delta']:+.4g} [{vs['low']:.4g}, {vs['high']:.4g}]"
                     + (" (within noise)" if vs["within_noise"] else ""))
        print(f"{m['name']}: {m['value']:.4g}{band}")
    print(f"{'added to' if merged else 'wrote'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
