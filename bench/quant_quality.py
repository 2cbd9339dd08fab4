"""Quality of quantization formats on one model, benchmark only (no profiler), one process.

    python bench/quant_quality.py --model smollm2-135m --out reports/quant_quality_smollm2-135m.json
    python bench/quant_quality.py --model minilm-l6-sentiment --variants dense rtn8 rtn4-g128 gptq4-g128

The model is loaded once; each variant is a deep copy compressed with the registered
recipe (the same ``compress`` call ``eval.run`` makes, with the same calibration and
training data from ``compress.cli.build_context``) and scored with
``eval.benchmark.run_benchmarks`` (the full protocol unless ``--quick``). It skips the
profiler, so it costs a fraction of ``eval.run``; sizes come from the recipes'
``context.info["quant"]`` (``packed_bytes`` = the real packed size for simulated
formats). The JSON is rewritten after every variant, so an interrupted run keeps what
it finished. Use ``eval.run`` for full reports with speed and memory.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: calibration for gptq here: 16 texts x 256 tokens (4k tokens; the recipe default is 32 x 512)
GPTQ_CAL: dict = {}
#: variant name -> (recipe, config values)
VARIANTS = {
    "dense": ("identity", {}),
    "rtn8": ("rtn", {"bits": 8, "granularity": "channel"}),
    "rtn4-g128": ("rtn", {"bits": 4, "granularity": "group", "group_size": 128}),
    "gptq4-g128": ("gptq", {"bits": 4, "granularity": "group", "group_size": 128, **GPTQ_CAL}),
    "rtn3-g128": ("rtn", {"bits": 3, "granularity": "group", "group_size": 128}),
    "gptq3-g128": ("gptq", {"bits": 3, "granularity": "group", "group_size": 128, **GPTQ_CAL}),
    "rtn4-row": ("rtn", {"bits": 4, "granularity": "channel"}),
    "gptq4-row": ("gptq", {"bits": 4, "granularity": "channel", **GPTQ_CAL}),
    "bnb-nf4": ("bnb-4bit", {"quant_type": "nf4"}),
    "bnb-int8": ("bnb-int8", {}),
    "quanto-int8": ("quanto", {"weights": "int8"}),
    "bnb-fp4": ("bnb-4bit", {"quant_type": "fp4"}),
    "dynamic-int8": ("dynamic-int8", {}),
    "onnx-int8": ("onnx-int8", {}),
    "qlora": ("qlora", {"steps": 60}),
    "quanto-int4": ("quanto", {"weights": "int4"}),
}
DEFAULT = ["dense", "rtn4-g128", "gptq4-g128", "rtn3-g128", "gptq3-g128", "rtn8", "bnb-nf4",
           "bnb-int8", "quanto-int8", "bnb-fp4", "qlora", "dynamic-int8", "onnx-int8"]


def _windows(model, tokenizer, n: int):
    """ppl_wiki / ppl_news on ``n`` evenly spaced 512-token windows (the full suite's
    windows are 24 of the same kind; these are a subset chosen the same way)."""
    from eval.benchmark import _columns, perplexity

    metrics, protocols = {}, {}
    for name, corpus in (("ppl_wiki", "wiki"), ("ppl_news", "news")):
        (texts,) = _columns(corpus, "test", ["text"])
        ppl, n_tok = perplexity(model, tokenizer, texts, 512, 512, 4, n)
        metrics[name] = round(float(ppl), 4)
        protocols[name] = {"corpus": corpus, "split": "test", "seq_len": 512, "stride": 512,
                           "max_windows": n, "tokens_scored": n_tok, "level": "token",
                           "window_selection": "evenly spaced over the joined split"}
    return metrics, protocols


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--variants", nargs="+", default=DEFAULT, choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib-sequences", type=int, default=None)
    p.add_argument("--calib-seq-len", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--windows", type=int, default=None,
                   help="causal LMs: score only this many evenly spaced 512-token windows per "
                        "corpus (the full suite scores 24); a cheaper, paired protocol")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    from compress import compress, make_config
    from compress.calibration import CalibrationSpec
    from compress.cli import build_context
    from compress.fileio import atomic_write_json
    from compress.models import load_model
    from eval.benchmark import run_benchmarks
    from eval.report import environment

    spec = CalibrationSpec(args.calib_sequences or CalibrationSpec().sequences,
                           args.calib_seq_len or CalibrationSpec().seq_len)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    doc = {"bench": "quant_quality", "model": args.model, "task": loaded.task,
           "quick": args.quick, "windows": args.windows, "threads": args.threads, "environment": environment(args.threads),
           "protocol": "eval.benchmark.run_benchmarks (full suite unless quick); "
                       "compress() with build_context(calibration_samples) as eval.run does",
           "results": {}}
    for name in args.variants:
        recipe, values = VARIANTS[name]
        t0 = time.perf_counter()
        entry = {"recipe": recipe, "config": values}
        try:
            context = build_context(loaded, spec)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = compress(copy.deepcopy(loaded.model), make_config(recipe, **values), context)
            entry["compress_s"] = round(time.perf_counter() - t0, 1)
            entry["info"] = context.info.get("quant", {k: v for k, v in context.info.items()})
            if args.windows and loaded.task == "causal-lm":
                entry["metrics"], entry["metric_protocols"] = _windows(model, loaded.tokenizer,
                                                                       args.windows)
            else:
                metrics = run_benchmarks(model, loaded.tokenizer, loaded.task, quick=args.quick)
                entry["metrics"] = {m.name: round(float(m.value), 4) for m in metrics}
                entry["metric_protocols"] = {m.name: m.protocol for m in metrics}
            entry["status"] = "ok"
            del model
        except Exception as exc:  # noqa: BLE001 - recorded, the next variant runs
            entry["status"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            entry["traceback"] = traceback.format_exc()[-2000:]
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        doc["results"][name] = entry
        atomic_write_json(args.out, doc)
        shown = entry.get("metrics") or entry.get("error")
        print(f"{name:14s} {entry['seconds']:7.1f}s  {shown}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
