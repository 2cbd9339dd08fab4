"""Which CPU engine wins, at which precision, on each architecture? One process, alternating rounds.

    python bench/cpu_engines.py                       # the three zoo models, every variant
    python bench/cpu_engines.py --model smollm2-135m --engines onnxruntime
    python bench/cpu_engines.py --model tiny-llama tiny-bert tiny-t5 --rounds 2   # smoke run

Variants: ``eager`` (PyTorch, fp32, Hugging Face ``generate`` with its KV cache) and the
``runtime`` recipe (:mod:`compress.quant.runtime`) for every engine in ``--engines``
(ONNX Runtime with transformer fusions and ``MatMulNBits``; OpenVINO with NNCF weight
compression; llama.cpp on a GGUF file, decoders only, F32 / Q8_0 / Q4_0, when the
``llamacpp`` extra is installed) at fp32, int8 and int4 weights, and ONNX Runtime's ``w8a8``
(dynamic int8 weights and activations; it counts as int8 for the bars). Every engine carries the KV cache
(decoders and encoder-decoders), so a speed-up against the same engine's fp32 is the
kernel's, and the one against eager is what a user gets.

Workloads, per model:

* encoders (classification / embedding): one forward of 8 x 128 tokens;
* decoders: greedy generation of ``--gen-tokens`` tokens after a 32-token prompt, batch
  1: time per generated token with the prefill included (``generate_ms_per_token``), and
  per decode step alone (``decode_ms_per_token``: within each round, the generation's
  time minus that of a one-token generation of the same prompt, over N - 1 steps); and
  one 1 x 128 forward (prefill). The issue's decoder bars are per decode step;
* encoder-decoders: greedy generation of ``--gen-tokens`` tokens from a 64-token input.

Protocol: ``torch.set_num_threads(--threads)`` (engines get the same intra-op threads),
one warm-up per variant, then ``--rounds`` rounds timing every variant once in rotating
order (:mod:`eval.paired`). Reported per variant and workload: median ms and the paired
ratio (variant / eager and variant / same engine fp32; below 1 = faster) with its 95%
bootstrap interval. Quality next to speed: greedy-token agreement with eager, max |logit
difference| on a fixed batch, and for decoders perplexity on 4 x 512 tokens of the wiki
test split (a proxy, not the reports' 24-window protocol). The JSON records the CPU
(model, ISA flags) and the CPU other processes used while timing (above 0.25 cores:
provisional), and checks the issue's bars (``must_show``).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WEIGHTS = ("fp32", "int8", "int4", "w8a8")
#: weights that only some engines run (the others skip the variant)
WEIGHT_ENGINES = {"w8a8": ("onnxruntime",)}
ENGINES = ("onnxruntime", "openvino", "llamacpp")
#: engines that run only some kinds of model
ENGINE_KINDS = {"llamacpp": ("decoder",)}
DEFAULT_MODELS = ("minilm-l6-sentiment", "smollm2-135m", "bert2bert-punct")
#: the issue's bars: (workload, variant weights, against, at most)
BARS = {
    "encoder": [("forward_8x128_ms", "int8", "eager", 0.55)],
    "decoder": [("decode_ms_per_token", "int8", "fp32", 0.60),
                ("decode_ms_per_token", "int4", "fp32", 0.45),
                ("decode_ms_per_token", "int4", "eager", 0.30)],
    "seq2seq": [],
}


def _load(name: str):
    if name.startswith("tiny-"):
        from compress.tiny import tiny_model

        family = name.removeprefix("tiny-")
        model, tok = tiny_model(family, classifier=family == "bert")
        task = {"bert": "classification", "t5": "seq2seq", "bart": "seq2seq",
                "bert2bert": "seq2seq"}.get(family, "causal-lm")
        return model, tok, task
    from compress.models import load_model

    loaded = load_model(name)
    return loaded.model, loaded.tokenizer, loaded.task


def _kind(task: str) -> str:
    return {"causal-lm": "decoder", "seq2seq": "seq2seq"}.get(task, "encoder")


def _ids(vocab: int, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, min(vocab, 20000), (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _vocab(model) -> int:
    cfg = model.config
    return getattr(cfg, "vocab_size", None) or cfg.decoder.vocab_size


def _text_ids(tok, n: int) -> dict[str, torch.Tensor]:
    from eval.profiler import _token_stream

    ids = _token_stream(tok, n)[:n].unsqueeze(0)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def workloads(model, tok, task: str, gen_tokens: int) -> dict:
    """name -> (callable, scale): scale turns the call's ms into the reported unit."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    kind = _kind(task)
    if kind == "encoder":
        x = _ids(_vocab(model), 8, 128)
        return {"forward_8x128_ms": (lambda: model(**x), 1.0)}

    def gen(prompt):
        return lambda: model.generate(**prompt, max_new_tokens=gen_tokens,
                                      min_new_tokens=gen_tokens, do_sample=False,
                                      pad_token_id=pad)

    if kind == "decoder":
        x = _ids(_vocab(model), 1, 128)
        prompt = _text_ids(tok, 32)

        def first():  # prefill + the first token: subtracted to leave the decode steps
            return model.generate(**prompt, max_new_tokens=1, min_new_tokens=1,
                                  do_sample=False, pad_token_id=pad)

        return {"generate_ms_per_token": (gen(prompt), 1.0 / gen_tokens),
                "first_token_ms": (first, 1.0),
                "prefill_1x128_ms": (lambda: model(**x), 1.0)}
    return {"generate_ms_per_token": (gen(_text_ids(tok, 64)), 1.0 / gen_tokens)}


def _logits(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def quality(model, ref_model, tok, task: str, gen_tokens: int, ppl: bool) -> dict:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    x = _ids(_vocab(ref_model), 2, 64, seed=1)
    if task == "seq2seq":
        x["decoder_input_ids"] = x["input_ids"][:, :16]
    with torch.no_grad():
        a, b = _logits(model(**x)).float(), _logits(ref_model(**x)).float()
    out = {"max_abs_logit_diff": round(float((a - b).abs().max()), 5)}
    if task in ("causal-lm", "seq2seq"):
        prompt = _text_ids(tok, 32)
        with torch.no_grad():
            kw = dict(max_new_tokens=gen_tokens, min_new_tokens=gen_tokens, do_sample=False,
                      pad_token_id=pad)
            ga, gb = model.generate(**prompt, **kw), ref_model.generate(**prompt, **kw)
        n = min(ga.shape[1], gb.shape[1])
        out["greedy_agreement"] = round(float((ga[0, :n] == gb[0, :n]).float().mean()), 4)
    else:
        out["argmax_agreement"] = round(float((a.argmax(-1) == b.argmax(-1)).float().mean()), 4)
    if ppl and task == "causal-lm":
        from eval.benchmark import perplexity
        from eval.benchmark.suites import _columns

        (texts,) = _columns("wiki", "test", ["text"])
        value, n = perplexity(model, tok, texts, 512, 512, 4, 4)
        out["ppl_wiki_4x512"] = round(value, 3)
    return out


def build(base, tok, task: str, engine: str, weights: str, group_size: int):
    from compress import Context, compress, make_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compress(copy.deepcopy(base), make_config("runtime", engine=engine, weights=weights,
                                                         group_size=group_size),
                        Context(tokenizer=tok, task=task))


def bench_model(name: str, engines: list[str], weights: list[str], rounds: int, gen_tokens: int,
                group_size: int) -> dict:
    from eval.paired import alternate, ratio_interval

    base, tok, task = _load(name)
    base.eval()
    kind = _kind(task)
    variants = {"eager": base}
    build_s, errors = {}, {}
    for engine in engines:
        if kind not in ENGINE_KINDS.get(engine, (kind,)):
            continue
        for w in weights:
            if engine not in WEIGHT_ENGINES.get(w, (engine,)):
                continue
            key = f"{engine}-{w}"
            t0 = time.perf_counter()
            try:
                variants[key] = build(base, tok, task, engine, w, group_size)
            except Exception as exc:  # noqa: BLE001 - recorded: one engine failing is a result
                errors[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                continue
            build_s[key] = round(time.perf_counter() - t0, 1)
            print(f"  built {key} in {build_s[key]} s", flush=True)
    loads = {k: workloads(m, tok, task, gen_tokens) for k, m in variants.items()}
    names = list(loads["eager"])
    result = {"model": name, "task": task, "kind": kind, "errors": errors, "variants": {}}
    raw = {}
    with torch.inference_mode():
        for w in names:
            fns = {k: load[w][0] for k, load in loads.items()}
            raw[w] = alternate(fns, rounds=rounds, warmup=1)
    if "first_token_ms" in raw:  # decode steps alone: (generate - first token) / (N - 1)
        gen_t, first_t = raw["generate_ms_per_token"], raw["first_token_ms"]
        keep = [i for i in range(rounds)  # a round where noise made a difference <= 0 goes
                if all(gen_t[k][i] > first_t[k][i] for k in gen_t)]
        result["decode_rounds_kept"] = len(keep)
        if keep:
            raw["decode_ms_per_token"] = {k: [gen_t[k][i] - first_t[k][i] for i in keep]
                                          for k in gen_t}
            names.append("decode_ms_per_token")
    scales = {w: loads["eager"][w][1] for w in loads["eager"]}
    scales["decode_ms_per_token"] = 1.0 / max(gen_tokens - 1, 1)
    for w in names:
        times, scale = raw[w], scales[w]
        for k, ts in times.items():
            entry = result["variants"].setdefault(k, {"build_s": build_s.get(k)})
            ms = [t * scale for t in ts]
            entry[w] = round(sorted(ms)[len(ms) // 2], 4)
            entry[f"{w}_vs_eager"] = ratio_interval(times["eager"], ts)
            engine = k.rsplit("-", 1)[0]
            if k != "eager" and f"{engine}-fp32" in times:
                entry[f"{w}_vs_engine_fp32"] = ratio_interval(times[f"{engine}-fp32"], ts)
    for k, m in variants.items():
        result["variants"][k]["quality"] = quality(m, base, tok, task, gen_tokens,
                                                   ppl=not name.startswith("tiny-"))
    result["must_show"] = must_show(result)
    return result


def must_show(result: dict) -> list[dict]:
    """The issue's bars for this model's kind, each with the best engine's ratio."""
    out = []
    for workload, weights, against, bar in BARS[result["kind"]]:
        key = f"{workload}_vs_{'eager' if against == 'eager' else 'engine_fp32'}"
        kinds = ("-int8", "-w8a8") if weights == "int8" else (f"-{weights}",)  # both are int8
        cands = [(k, v[key]) for k, v in result["variants"].items()
                 if k.endswith(kinds) and key in v]
        if not cands:
            continue
        best, vs = min(cands, key=lambda kv: kv[1]["ratio"])
        out.append({"workload": workload, "weights": weights, "against": against, "bar": bar,
                    "best": best, "ratio": vs["ratio"], "ci95": vs["ci95"],
                    "met": vs["ratio"] <= bar})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--weights", nargs="+", default=list(WEIGHTS), choices=WEIGHTS)
    p.add_argument("--group-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--gen-tokens", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("reports/bench/cpu_engines.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from compress.fileio import atomic_write_json
    from eval.machine import OtherCPU, cpu_info, quiet_reading

    others = OtherCPU()
    t0 = time.time()
    results = []
    for name in args.model:
        print(f"{name}:", flush=True)
        res = bench_model(name, args.engines, list(args.weights), args.rounds, args.gen_tokens,
                          args.group_size)
        results.append(res)
        for k, e in res["variants"].items():
            cols = "  ".join(f"{w}={e[w]} ({e[w + '_vs_eager']['ratio']}x eager)"
                             for w in e if f"{w}_vs_eager" in e)
            print(f"  {k:20s} {cols}  {e['quality']}")
        for m in res["must_show"]:
            print(f"  must show: {m}")
        if res["errors"]:
            print(f"  errors: {res['errors']}")
    machine = quiet_reading(others.cores())
    doc = {
        "bench": "cpu_engines", "threads": args.threads, "rounds": args.rounds,
        "gen_tokens": args.gen_tokens, "group_size": args.group_size,
        "torch": torch.__version__, "cpu": cpu_info(), "machine": machine,
        "provisional": machine["quiet"] is False, "seconds": round(time.time() - t0, 1),
        "versions": _versions(),
        "note": ("provisional: other processes used "
                 f"{machine['other_processes_cores']} cores while timing; re-run quiet"
                 if machine["quiet"] is False else "quiet machine"),
        "results": results,
    }
    atomic_write_json(args.out, doc)
    print(f"wrote {args.out}" + ("  (PROVISIONAL: machine busy)" if doc["provisional"] else ""))
    return 0


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for lib in ("onnxruntime", "openvino", "nncf", "transformers", "onnx"):
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
