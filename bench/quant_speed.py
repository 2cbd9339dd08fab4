"""CPU speed of real int8 against fp32, measured in one process in alternating rounds.

    python bench/quant_speed.py                      # both zoo models, every method below
    python bench/quant_speed.py --model minilm-l6-sentiment --extra bnb-int8 quanto-int8
    python bench/quant_speed.py --model tiny-llama --rounds 2     # smoke run on a tiny model

Methods: fp32 (torch eager), dynamic-int8 (torch.ao), onnx-fp32 (the same ONNX graph
unquantized: how much of onnx-int8's gain is the runtime, not int8), onnx-int8, and
for decoders the ``-keep`` variants that leave linears with calibration inputs above
|x| = 40 in fp32.

Workloads:
* encoder models (classification / embedding): one forward of a batch of 8 x 128 tokens;
* decoders: greedy generation of ``--gen-tokens`` tokens from a 32-token prompt, time
  per generated token (prompt included; HF models and the ONNX graphs both with their KV
  cache, one token per step), and one forward of 1 x 128 tokens (prefill).

Protocol: ``torch.set_num_threads(--threads)`` (ONNX Runtime gets the same number of
intra-op threads), one warm-up per method, then ``--rounds`` rounds; in each round
every method is timed once (median of ``--inner`` calls) in rotating order, so slow
drifts of a shared machine hit all methods alike. Reported: median over rounds and the
ratio ``fp32 time / method time`` (above 1 = faster than fp32), and ``*_vs_fp32``: the
paired ratio method / fp32 over the same rounds with its 95% interval (:mod:`eval.paired`);
the JSON records the CPU model and ISA flags. The CPU other
processes used while the benchmark ran is recorded (``other_processes_cores``, from
``/proc/stat`` minus this process): above 0.25 cores the timings are provisional. Outputs are checked against fp32 (max |logit diff|, argmax agreement)
so a speed-up cannot come from a broken model; decoders also get a perplexity on 4
windows of 512 tokens of the wiki test split (a proxy, not the reports' protocol).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.paired import ratio_interval  # noqa: E402

METHODS = ("fp32", "dynamic-int8", "onnx-fp32", "onnx-int8", "dynamic-int8-keep", "onnx-int8-keep")
# "-keep": linears whose calibration inputs exceed |x| = 40 stay fp32 (SmolLM2: 11-12 of 30
# down_proj); decoders only (no MiniLM input reaches 40, so it would repeat the plain run)
KEEP_THRESHOLD = 40.0
EXTRA = ("bnb-int8", "bnb-4bit", "quanto-int8", "rtn-4bit")


def _load(name: str):
    if name.startswith("tiny-"):
        from compress.tiny import tiny_model

        family = name.removeprefix("tiny-")
        model, tok = tiny_model(family, classifier=family == "bert")
        task = "classification" if family == "bert" else "causal-lm"
        return model, tok, task
    from compress.models import load_model

    loaded = load_model(name)
    return loaded.model, loaded.tokenizer, loaded.task


def _variant(method: str, base, tok, task):
    from compress import Context, compress, make_config

    if method == "fp32":
        return base
    if method == "onnx-fp32":  # ONNX Runtime without int8: what the runtime alone buys
        from compress.quant import onnx as onnx_q

        return onnx_q.build(copy.deepcopy(base), task, per_channel=False, reduce_range=False,
                            quantize=False)
    recipe, kw = {
        "dynamic-int8": ("dynamic-int8", {}),
        "onnx-int8": ("onnx-int8", {}),
        "bnb-int8": ("bnb-int8", {}),
        "bnb-4bit": ("bnb-4bit", {}),
        "quanto-int8": ("quanto", {"weights": "int8"}),
        "rtn-4bit": ("rtn", {"bits": 4, "granularity": "group"}),
        "dynamic-int8-keep": ("dynamic-int8", {"outlier_threshold": KEEP_THRESHOLD}),
        "onnx-int8-keep": ("onnx-int8", {"outlier_threshold": KEEP_THRESHOLD}),
    }[method]
    calibration = []
    if "outlier_threshold" in kw:
        from compress.data import calibration_for

        calibration = calibration_for(task, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compress(copy.deepcopy(base), make_config(recipe, **kw),
                        Context(tokenizer=tok, task=task, calibration=calibration))


def _inputs(tok, vocab: int, batch: int, length: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, min(vocab, 20000), (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _logits(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _timer(fn, inner: int) -> float:
    times = []
    for _ in range(inner):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _workloads(model, tok, task: str, gen_tokens: int):
    vocab = model.config.vocab_size
    if task in ("classification", "embedding"):
        x = _inputs(tok, vocab, 8, 128)

        def fwd():
            with torch.no_grad():
                return model(**x)

        return {"forward_8x128_ms": (fwd, 1.0)}
    prompt = _inputs(tok, vocab, 1, 32)
    x = _inputs(tok, vocab, 1, 128)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def gen():
        with torch.no_grad():
            return model.generate(**prompt, max_new_tokens=gen_tokens, min_new_tokens=gen_tokens,
                                  do_sample=False, pad_token_id=pad)

    def prefill():
        with torch.no_grad():
            return model(**x)

    return {"generate_ms_per_token": (gen, 1.0 / gen_tokens), "prefill_1x128_ms": (prefill, 1.0)}


def _agreement(model, ref_logits, x) -> dict[str, float]:
    with torch.no_grad():
        out = _logits(model(**x)).float()
    diff = (out - ref_logits).abs().max().item()
    agree = (out.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
    return {"max_abs_logit_diff": round(diff, 5), "argmax_agreement": round(agree, 4)}


def _wiki_perplexity(model, tok) -> dict[str, float]:
    """Perplexity on 4 evenly spaced 512-token windows of the wiki test split: a real-text
    check that random-token argmax agreement cannot give (a cheap proxy, not the report's
    24-window protocol)."""
    from eval.benchmark import perplexity
    from eval.benchmark.suites import _columns

    (texts,) = _columns("wiki", "test", ["text"])
    ppl, n = perplexity(model, tok, texts, 512, 512, 4, 4)
    return {"ppl_wiki_4x512": round(ppl, 3), "ppl_tokens": n}


def bench_model(name: str, methods: list[str], rounds: int, inner: int, gen_tokens: int) -> dict:
    base, tok, task = _load(name)
    base.eval()
    if task != "causal-lm":
        methods = [m for m in methods if not m.endswith("-keep")]
    models = {}
    build_s = {}
    for m in methods:
        t0 = time.perf_counter()
        models[m] = _variant(m, base, tok, task)
        build_s[m] = round(time.perf_counter() - t0, 1)
    check = _inputs(tok, base.config.vocab_size, 2, 64)
    with torch.no_grad():
        ref = _logits(base(**check)).float()
    loads = {m: _workloads(models[m], tok, task, gen_tokens) for m in methods}
    for m in methods:  # warm-up
        for fn, _ in loads[m].values():
            fn()
    samples = {m: {w: [] for w in loads[m]} for m in methods}
    for r in range(rounds):
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        for m in order:
            for w, (fn, scale) in loads[m].items():
                samples[m][w].append(1000 * scale * _timer(fn, inner))
    result = {"model": name, "task": task, "methods": {}}
    for m in methods:
        entry = {"build_s": build_s[m], **_agreement(models[m], ref, check)}
        if task == "causal-lm" and not name.startswith("tiny-"):
            entry.update(_wiki_perplexity(models[m], tok))
        for w, vals in samples[m].items():
            med = statistics.median(vals)
            fp = statistics.median(samples["fp32"][w])
            entry[w] = round(med, 3)
            entry[w.replace("_ms", "") + "_speedup_vs_fp32"] = round(fp / med, 3)
            # the same rounds paired: method / fp32 time with a 95% interval (eval.paired)
            entry[w.replace("_ms", "") + "_vs_fp32"] = ratio_interval(samples["fp32"][w], vals)
        result["methods"][m] = entry
    return result


def main(argv: list[str] | None = None) -> int:
    global KEEP_THRESHOLD
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["minilm-l6-sentiment", "smollm2-135m"])
    p.add_argument("--extra", nargs="*", default=[], choices=EXTRA,
                   help="also time these (slower than fp32 on a CPU: shown for honesty)")
    p.add_argument("--keep-threshold", type=float, default=KEEP_THRESHOLD,
                   help="outlier_threshold of the -keep variants")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--inner", type=int, default=3)
    p.add_argument("--gen-tokens", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("reports/quant_speed.json"))
    args = p.parse_args(argv)
    KEEP_THRESHOLD = args.keep_threshold
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    methods = list(METHODS) + list(args.extra)
    from eval.machine import OtherCPU, cpu_info, is_busy

    load_before = os.getloadavg()
    others = OtherCPU()
    results = []
    for name in args.model:
        res = bench_model(name, methods, args.rounds, args.inner, args.gen_tokens)
        results.append(res)
        print(f"\n{name} ({res['task']}), threads={args.threads}, rounds={args.rounds}")
        for m, e in res["methods"].items():
            cols = "  ".join(f"{k}={v}" for k, v in e.items())
            print(f"  {m:18s} {cols}")
    load_after = os.getloadavg()
    other_cores = others.cores()
    cpus = os.cpu_count() or 1
    # the suite's one definition of a busy machine (eval.machine.is_busy)
    provisional = is_busy(other_cores, (load_before[0], load_after[0]))
    doc = {
        "bench": "quant_speed", "threads": args.threads, "rounds": args.rounds, "inner": args.inner,
        "gen_tokens": args.gen_tokens, "keep_threshold": KEEP_THRESHOLD, "torch": torch.__version__, "cpu_count": cpus,
        "cpu": cpu_info(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "other_processes_cores": other_cores,
        "provisional": provisional,
        "note": ("machine was shared with other jobs while timing: re-run on a quiet machine"
                 if provisional else "quiet machine"),
        "results": results,
    }
    from compress.fileio import atomic_write_json

    atomic_write_json(args.out, doc)
    print(f"\nwrote {args.out}" + ("  (PROVISIONAL: machine busy)" if provisional else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
