"""Width pruning before any recovery: FFN neurons against hidden (residual) channels at
one non-embedding parameter budget, on held-out text, each option pruned from the same
dense model with the same calibration tokens.

Held-out perplexity on the first ``--windows`` windows of 256 tokens of the causal-LM
validation rows (:func:`compress.distill.data.held_out_rows`: wiki and news
interleaved, never the test split), 2 threads. The options are ``structured`` configs.

    .venv/bin/python bench/width_oneshot.py reports/bench/width_oneshot_smollm2.json
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from compress import compress, make_config
from compress.calibration import CalibrationSpec
from compress.cli import build_context
from compress.distill.data import held_out_rows
from compress.fileio import atomic_write_text
from compress.models import load_model

OPTIONS = [
    {"ffn_ratio": 0.3333},
    {"ffn_ratio": 0.0, "hidden_ratio": 0.25},
    {"ffn_ratio": 0.0, "hidden_ratio": 0.25, "rescale_norms": False},
    {"ffn_ratio": 0.0, "hidden_ratio": 0.25, "importance": "magnitude"},
    {"ffn_ratio": 0.2424, "hidden_ratio": 0.0833},
    {"ffn_ratio": 0.2424, "hidden_ratio": 0.0833, "rescale_norms": False},
]


def _non_embedding(model: torch.nn.Module) -> int:
    emb = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings())
           if m is not None for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=24)
    ap.add_argument("--options", default=None, help="JSON list of structured configs")
    args = ap.parse_args()
    torch.set_num_threads(2)
    loaded = load_model(args.model)
    tok, dense = loaded.tokenizer, loaded.model.eval()
    ctx = build_context(loaded, CalibrationSpec())
    ids = tok("\n\n".join(held_out_rows("causal-lm")[:400]), return_tensors="pt").input_ids[0]
    windows = [ids[i * 256:(i + 1) * 256] for i in range(args.windows)]
    if len(windows[-1]) < 256:
        raise SystemExit("not enough held-out text for the windows asked for")

    def ppl(model: torch.nn.Module) -> float:
        nll = 0.0
        with torch.inference_mode():
            for w in windows:
                nll += float(model(input_ids=w[None], labels=w[None]).loss) * (len(w) - 1)
        return math.exp(nll / (len(windows) * 255))

    base = _non_embedding(dense)
    rows = [{"options": "dense", "ppl": round(ppl(dense), 3), "non_embedding": base,
             "parameters": sum(p.numel() for p in dense.parameters())}]
    print(rows[0], flush=True)
    for opts in (json.loads(args.options) if args.options else OPTIONS):
        t0 = time.perf_counter()
        model = compress(copy.deepcopy(dense), make_config("structured", **opts), ctx)
        rows.append({"options": opts, "ppl": round(ppl(model), 3),
                     "non_embedding_vs_dense": round(_non_embedding(model) / base, 4),
                     "parameters_vs_dense": round(sum(p.numel() for p in model.parameters())
                                                  / rows[0]["parameters"], 4),
                     "hidden": ctx.info["structured"].get("hidden"),
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    out = {"model": args.model, "protocol": {
        "text": "compress.distill.data.held_out_rows('causal-lm') (validation), joined",
        "windows": args.windows, "tokens_per_window": 256, "threads": 2,
        "calibration": ctx.calib.key() if hasattr(ctx.calib, "key") else None},
        "rows": rows}
    atomic_write_text(args.out, json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
