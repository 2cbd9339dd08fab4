"""How reproducible is the profiler's same-process latency ratio? Run the same config N times.

    python bench/ratio_spread.py                                   # SmolLM2, 50% magnitude, 2 runs
    python bench/ratio_spread.py --model minilm-l6-sentiment --recipe "dynamic-int8" --runs 3
    python bench/ratio_spread.py --model tiny-llama --runs 2 --quick   # smoke run

Each run is a fresh process (``python bench/ratio_spread.py --one ...``) that loads the
model, applies the recipe, and profiles it against the reloaded dense model exactly as
``eval.run`` does (:func:`eval.profiler.profile` with ``dense=``; no quality benchmark).
The JSON lists every run's ratios (per shape and per generated token) with their 95%
intervals, and per measure the spread ``max / min - 1`` across runs: the issue's bar is
10%. It also records the CPU and, per run, the CPU other processes used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one(model_name: str, recipe: str, threads: int, quick: bool) -> dict:
    import torch

    from compress import compress
    from compress.calibration import CalibrationSpec
    from compress.cli import build_context
    from compress.models import load_model
    from eval.profiler import profile
    from eval.run import parse_step

    torch.set_num_threads(threads)
    if model_name.startswith("tiny-"):
        from compress.tiny import tiny_model

        family = model_name.removeprefix("tiny-")
        model, tok = tiny_model(family)
        task = "causal-lm"
        dense = lambda: tiny_model(family)[0]  # noqa: E731 - same seed, same weights
        from compress import Context

        context = Context(tokenizer=tok, task=task)
    else:
        loaded = load_model(model_name)
        model, tok, task = loaded.model, loaded.tokenizer, loaded.task
        dense = lambda: load_model(model_name).model  # noqa: E731
        context = build_context(loaded, CalibrationSpec(sequences=32))
    config = parse_step(recipe)
    model = compress(model, config, context)
    shapes = ((1, 16), (2, 16)) if quick else ((1, 128), (8, 128))
    prof = profile(model, tok, task, threads=threads, quick=quick, dense=dense, shapes=shapes,
                   gen_tokens=4 if quick else 32)
    out = {f"latency_{k}": v for k, v in prof["latency_vs_dense"].items()}
    if "generate_vs_dense" in prof:
        out["generate_per_token"] = prof["generate_vs_dense"]
    return {"ratios": out, "other_processes_cores": prof["machine"]["other_processes_cores"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--recipe", default="magnitude sparsity=0.5",
                   help="'RECIPE key=value ...' as eval.run --then takes it")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=Path("reports/bench/ratio_spread.json"))
    p.add_argument("--one", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one is not None:  # a child: one run, result as JSON
        args.one.write_text(json.dumps(one(args.model, args.recipe, args.threads, args.quick)))
        return 0
    from compress.fileio import atomic_write_json
    from eval.machine import cpu_info

    runs = []
    t0 = time.time()
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / "run.json"
            cmd = [sys.executable, __file__, "--model", args.model, "--recipe", args.recipe,
                   "--threads", str(args.threads), "--one", str(dst)] + (["--quick"] if args.quick else [])
            subprocess.run(cmd, check=True)
            runs.append(json.loads(dst.read_text()))
        print(f"run {i + 1}: " + ", ".join(f"{k} {v['ratio']} {v['ci95']}"
                                           for k, v in runs[-1]["ratios"].items()), flush=True)
    spread = {}
    for key in runs[0]["ratios"]:
        values = [r["ratios"][key]["ratio"] for r in runs]
        spread[key] = {"ratios": values, "spread": round(max(values) / min(values) - 1, 4),
                       "within_10pct": max(values) / min(values) - 1 <= 0.10}
    busy = max((r["other_processes_cores"] or 0) for r in runs)
    doc = {"bench": "ratio_spread", "model": args.model, "recipe": args.recipe,
           "threads": args.threads, "quick": args.quick, "cpu": cpu_info(),
           "max_other_processes_cores": busy, "provisional": busy > 0.25,
           "seconds": round(time.time() - t0, 1), "spread": spread, "runs": runs}
    atomic_write_json(args.out, doc)
    for key, s in spread.items():
        print(f"{key}: ratios {s['ratios']} spread {s['spread']:.1%}"
              f" ({'within' if s['within_10pct'] else 'OUTSIDE'} +-10%)")
    print(f"wrote {args.out}" + ("  (PROVISIONAL: machine busy)" if doc["provisional"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
