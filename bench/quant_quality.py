"""Every weight-only quantizer and every pruning method side by side, on one model and one
calibration set, with ratios to dense. Benchmark only (no profiler), one process.

    python bench/quant_quality.py --model smollm2-135m --set quant --metrics ppl_wiki \
        --out reports/bench/method_quality_smollm2-135m.json
    python bench/quant_quality.py --model smollm2-135m --set prune --metrics ppl_wiki --out ...
    python bench/quant_quality.py --model bert2bert-punct --variants dense rtn4-g128 gptq4-g128

The model is loaded once; each variant is a deep copy compressed with the registered
recipe through the same ``compress`` call ``eval.run`` makes, with **one** context
(``compress.cli.build_context`` with one :class:`~compress.calibration.CalibrationSpec`):
every calibrating variant reads the identical token tensors, and the JSON records the
calibration record (source, N x L, tokens, sha256) once and checks every variant saw the
same sha256. Quality is ``eval.benchmark.run_benchmarks`` (the full protocol unless
``--quick``); ``--metrics ppl_wiki`` scores only that metric with its full protocol (24
windows x 512 tokens of held-out Wikipedia, the same windows and numbers as
``eval.run``). Sizes come from the recipes' ``context.info`` (``packed_bytes`` = the real
packed size for simulated formats). The JSON is rewritten after every variant, so an
interrupted run keeps what it finished; variants already in ``--out`` with status ok are
skipped unless ``--redo``. Use ``eval.run`` for full reports with speed and memory.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

G128 = {"granularity": "group", "group_size": 128}
G64 = {"granularity": "group", "group_size": 64}
ROW = {"granularity": "channel"}
NOSCALE = {"scale_search": "none"}
#: variant name -> (recipe, config values)
QUANT: dict[str, tuple[str, dict[str, Any]]] = {
    "rtn4-g128": ("rtn", {"bits": 4, **G128}),
    "gptq4-g128": ("gptq", {"bits": 4, **G128}),
    "awq4-g128": ("awq", {"bits": 4, **G128}),
    "hqq4-g128": ("hqq", {"bits": 4, **G128}),
    "rotate-rtn4-g128": ("rotate", {"bits": 4, **G128}),
    "rotate-gptq4-g128": ("rotate", {"bits": 4, "method": "gptq", **G128}),
    "rtn3-g128": ("rtn", {"bits": 3, **G128}),
    "gptq3-g128": ("gptq", {"bits": 3, **G128}),
    "awq3-g128": ("awq", {"bits": 3, **G128}),
    "hqq3-g128": ("hqq", {"bits": 3, **G128}),
    "awq-gptq3-g128": ("awq", {"bits": 3, "rounding": "gptq", **G128}),
    "awq-gptq4-g128": ("awq", {"bits": 4, "rounding": "gptq", **G128}),
    "rotate-rtn3-g128": ("rotate", {"bits": 3, **G128}),
    "rotate-gptq3-g128": ("rotate", {"bits": 3, "method": "gptq", **G128}),
    "rtn4-row": ("rtn", {"bits": 4, **ROW}),
    "gptq4-row": ("gptq", {"bits": 4, **ROW}),
    "awq4-row": ("awq", {"bits": 4, **ROW}),
    "rtn4-g64": ("rtn", {"bits": 4, **G64}),
    "hqq4-g64": ("hqq", {"bits": 4, **G64}),
    "rtn3-g64": ("rtn", {"bits": 3, **G64}),
    "hqq3-g64": ("hqq", {"bits": 3, **G64}),
    # the float-zero start and the package's loop, measured without the step search
    "hqq4-g64-floatstart": ("hqq", {"bits": 4, "round_zero": False, **NOSCALE, **G64}),
    "hqq3-g64-floatstart": ("hqq", {"bits": 3, "round_zero": False, **NOSCALE, **G64}),
    # the hqq package's own default loop (constant beta, one early stop per matrix); it
    # starts from the float zero at 3 bits (its round_zero is on at 4 bits only)
    "hqq4-g64-reference": ("hqq", {"bits": 4, "solver": "reference", **NOSCALE, **G64}),
    "hqq3-g64-reference": ("hqq", {"bits": 3, "solver": "reference", **NOSCALE, **G64}),
    # the step search off, and the package's absolute-offset version of it
    "hqq4-g64-noscale": ("hqq", {"bits": 4, **NOSCALE, **G64}),
    "hqq3-g64-noscale": ("hqq", {"bits": 3, **NOSCALE, **G64}),
    "hqq4-g64-scaleref": ("hqq", {"bits": 4, "scale_search": "reference", **G64}),
    "hqq3-g64-scaleref": ("hqq", {"bits": 3, "scale_search": "reference", **G64}),
    "hqq3-g64-reference-floatstart": ("hqq", {"bits": 3, "solver": "reference",
                                             "round_zero": False, **NOSCALE, **G64}),
    "rtn4-g128-sym": ("rtn", {"bits": 4, "scheme": "sym", **G128}),
    "gptq4-g128-sym": ("gptq", {"bits": 4, "scheme": "sym", **G128}),
    "gptq4-g128-plain": ("gptq", {"bits": 4, "act_order": False, "true_sequential": False,
                                  **G128}),
    "rtn8": ("rtn", {"bits": 8, **ROW}),
    "smoothquant-w8a8": ("smoothquant", {}),
    "dynamic-int8": ("dynamic-int8", {}),
}
PRUNE: dict[str, tuple[str, dict[str, Any]]] = {
    "magnitude-50": ("magnitude", {"sparsity": 0.5}),
    "wanda-50": ("wanda", {"sparsity": 0.5}),
    "sparsegpt-50": ("sparsegpt", {"sparsity": 0.5}),
    "magnitude-2:4": ("magnitude", {"pattern": "2:4", "sparsity": 0.5}),
    "wanda-2:4": ("wanda", {"pattern": "2:4", "sparsity": 0.5}),
    "sparsegpt-2:4": ("sparsegpt", {"pattern": "2:4", "sparsity": 0.5}),
    "wanda-70": ("wanda", {"sparsity": 0.7}),
    "owl-wanda-70": ("owl", {"sparsity": 0.7}),
    "sparsegpt-70": ("sparsegpt", {"sparsity": 0.7}),
    "owl-sparsegpt-70": ("owl", {"sparsity": 0.7, "method": "sparsegpt"}),
}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"dense": ("identity", {}), **QUANT, **PRUNE}
SETS = {
    "quant": ["dense", "rtn4-g128", "gptq4-g128", "awq4-g128", "rtn3-g128", "gptq3-g128",
              "awq3-g128", "rtn4-row", "gptq4-row", "rtn4-g64", "hqq4-g64", "rtn3-g64",
              "hqq3-g64", "hqq4-g128", "hqq3-g128", "awq4-row"],
    "prune": ["dense", "magnitude-50", "wanda-50", "sparsegpt-50", "magnitude-2:4", "wanda-2:4",
              "sparsegpt-2:4", "wanda-70", "owl-wanda-70", "sparsegpt-70", "owl-sparsegpt-70"],
}
SETS["all"] = SETS["quant"] + [v for v in SETS["prune"] if v != "dense"]
#: GPTQ against RTN where the weights are not pre-rounded (bert2bert-punct, fine-tuned here)
SETS["gptq-vs-rtn"] = ["dense", "rtn4-g128", "gptq4-g128", "rtn3-g128", "gptq3-g128"]


def _ppl(model, tokenizer, corpus: str, windows: int) -> tuple[float, dict[str, Any]]:
    """Token perplexity on ``windows`` evenly spaced 512-token windows of a test corpus:
    the shared benchmark's protocol (24 windows is exactly its full ``ppl_wiki``)."""
    from eval.benchmark import perplexity
    from eval.benchmark.suites import _columns

    (texts,) = _columns(corpus, "test", ["text"])
    ppl, n_tok = perplexity(model, tokenizer, texts, 512, 512, 4, windows)
    return float(ppl), {"corpus": corpus, "split": "test", "seq_len": 512, "stride": 512,
                        "max_windows": windows, "tokens_scored": n_tok, "level": "token",
                        "window_selection": "evenly spaced over the joined split"}


def score(model, loaded, args) -> tuple[dict[str, float], dict[str, Any]]:
    from eval.benchmark import run_benchmarks

    corpora = {"ppl_wiki": "wiki", "ppl_news": "news"}
    if loaded.task == "causal-lm" and args.metrics:
        windows = args.windows or (4 if args.quick else 24)
        out, prot = {}, {}
        for name in args.metrics:
            out[name], prot[name] = _ppl(model, loaded.tokenizer, corpora[name], windows)
        return out, prot
    metrics = run_benchmarks(model, loaded.tokenizer, loaded.task, quick=args.quick)
    keep = [m for m in metrics if not args.metrics or m.name in args.metrics]
    return ({m.name: float(m.value) for m in keep}, {m.name: m.protocol for m in keep})


def ratios(doc: dict[str, Any]) -> None:
    """Add ``ratio_to_dense`` (and ``excess`` = value - dense) to every finished variant."""
    dense = doc["results"].get("dense", {}).get("metrics")
    if not dense:
        return
    for entry in doc["results"].values():
        if entry.get("status") != "ok":
            continue
        entry["ratio_to_dense"] = {k: round(v / dense[k], 4) for k, v in entry["metrics"].items()
                                   if dense.get(k)}
        entry["excess"] = {k: round(v - dense[k], 4) for k, v in entry["metrics"].items()
                           if k in dense}


def table(doc: dict[str, Any]) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    names = sorted({k for e in doc["results"].values() for k in e.get("metrics", {})})
    t = Table(title=f"{doc['model']}: one calibration set, ratios to dense", box=box.MARKDOWN)
    for col in ["variant", "recipe", *names, *(f"{n} / dense" for n in names), "bits/weight",
                "sparsity"]:
        t.add_column(col, justify="left" if col in ("variant", "recipe") else "right")
    for name, e in doc["results"].items():
        if e.get("status") != "ok":
            t.add_row(name, e.get("recipe", ""), *(["failed"] + [""] * (2 * len(names) + 1)))
            continue
        info = e.get("info", {})
        bpw = info.get("quant", {}).get("target_bits_per_weight")
        sp = info.get("sparsity", {}).get("measured")
        t.add_row(name, e["recipe"], *(f"{e['metrics'].get(n, float('nan')):.4g}" for n in names),
                  *(f"{e.get('ratio_to_dense', {}).get(n, float('nan')):.3f}" for n in names),
                  "" if bpw is None else f"{bpw:.3f}", "" if sp is None else f"{sp:.3f}")
    import io

    console = Console(record=True, width=200, file=io.StringIO())
    console.print(t)
    return console.export_text()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--set", choices=sorted(SETS), default=None,
                   help="a named list of variants (quant, prune, all)")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib-sequences", type=int, default=None)
    p.add_argument("--calib-seq-len", type=int, default=None)
    p.add_argument("--calib-seed", type=int, default=0)
    p.add_argument("--metrics", nargs="+", default=None,
                   help="only these metrics (causal LMs: ppl_wiki and/or ppl_news, full protocol)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--windows", type=int, default=None,
                   help="causal LMs: score this many evenly spaced 512-token windows per corpus "
                        "(the full protocol is 24)")
    p.add_argument("--redo", action="store_true", help="rerun variants already in --out")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    import json

    from compress import compress, make_config
    from compress.calibration import CalibrationSpec
    from compress.cli import build_context
    from compress.fileio import atomic_write_json
    from compress.models import load_model
    from eval.report import environment, git_commit

    names = args.variants or SETS[args.set or "quant"]
    default = CalibrationSpec()
    spec = CalibrationSpec(args.calib_sequences or default.sequences,
                           args.calib_seq_len or default.seq_len, args.calib_seed)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    doc: dict[str, Any] = {}
    if args.out.exists():
        doc = json.loads(args.out.read_text())
        if doc.get("calibration_spec") not in (None, spec.key()):
            raise SystemExit(f"{args.out} was made with calibration {doc['calibration_spec']}; "
                             "use another --out")
        for entry in doc.get("results", {}).values():  # older entries: the file's commit
            entry.setdefault("git_commit", doc.get("git_commit"))
    doc.update({"bench": "quant_quality", "model": args.model, "task": loaded.task,
                "quick": args.quick, "windows": args.windows, "threads": args.threads,
                "environment": environment(args.threads), "git_commit": git_commit(),
                "calibration_spec": spec.key(),
                "protocol": "compress() with one build_context(CalibrationSpec) for every "
                            "variant; eval.benchmark metrics (full protocol unless quick)"})
    doc.setdefault("results", {})
    context = build_context(loaded, spec)
    for name in names:
        if not args.redo and doc["results"].get(name, {}).get("status") == "ok":
            continue
        recipe, values = VARIANTS[name]
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"recipe": recipe, "config": values, "git_commit": doc["git_commit"]}
        context.info = {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = compress(copy.deepcopy(loaded.model), make_config(recipe, **values),
                                 context)
            entry["compress_s"] = round(time.perf_counter() - t0, 1)
            entry["info"] = json.loads(json.dumps(context.info, default=str))
            cal = context.info.get("calibration")
            if cal:
                doc.setdefault("calibration", cal)
                if cal["sha256"] != doc["calibration"]["sha256"]:
                    raise RuntimeError("calibration tokens differ between variants")
            entry["metrics"], entry["metric_protocols"] = score(model, loaded, args)
            entry["status"] = "ok"
            del model
        except Exception as exc:  # noqa: BLE001 - recorded, the next variant runs
            entry["status"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            entry["traceback"] = traceback.format_exc()[-2000:]
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        doc["results"][name] = entry
        ratios(doc)
        atomic_write_json(args.out, doc)
        shown = entry.get("metrics") or entry.get("error")
        print(f"{name:20s} {entry['seconds']:7.1f}s  {shown}", flush=True)
    print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
