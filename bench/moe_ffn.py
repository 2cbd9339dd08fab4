"""One MoE FFN against the dense FFN it came from: where does MoEfication break even?

    python bench/moe_ffn.py                       # full grid, 2 threads, writes reports/bench/
    python bench/moe_ffn.py --threads 1           # the same on one core
    python bench/moe_ffn.py --decode              # one token per sequence (decoding)
    python bench/moe_ffn.py --quick               # a smoke run (small grid, few rounds)

Shapes: SmolLM2-135M's FFN (d=576, ff=1536, SwiGLU: gate, up, down) and MiniLM-L6's
(d=384, ff=1536, GELU: in, out). For each shape, batch (1x128 and 8x128 tokens),
expert count E in {8, 16, 32} and active fraction k/E in {1/8, 1/4, 3/8, 1/2, 3/4, 1},
the dense FFN (``nn.Linear`` modules, as in transformers) and the
:class:`compress.moe.layer.MoEFFN` built from the same weights (random partition,
learned-router MLP of width 128 with random weights: the router's cost is included,
its choices are near uniform) are timed in alternating rounds in one process under
``torch.inference_mode`` after warm-up (:mod:`eval.paired`). ``ratio`` is MoE / dense
time (median per-round ratio, 95% bootstrap interval ``ci95``; below 1 = the MoE FFN is
faster), ``speedup`` its inverse, ``path`` the computation the layer chose
(:meth:`compress.moe.layer.MoEFFN.path_for`: grouped, batched, single, or the dense
fallback); the break-even fraction is where the speedup crosses 1, interpolated
linearly between measured fractions. ``must_show`` checks the issue's bar: at 1/4
active and 8x128 tokens, MoE time at most 0.5x dense (best expert count per shape).

Threads are pinned (``--threads``, default 2, the machine's cores). The JSON records
the CPU (model, ISA flags) and the CPU other processes used while timing; above
0.25 cores it is marked provisional: re-run on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from compress.moe.convert import DenseFFN, build_moe  # noqa: E402
from compress.moe.layer import MLPRouter, SimilarityRouter  # noqa: E402
from eval.machine import OtherCPU, cpu_info, quiet_reading  # noqa: E402
from eval.paired import alternate, ratio_interval  # noqa: E402


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    ff: int
    gated: bool


SHAPES = (Shape("smollm2-ffn", 576, 1536, True), Shape("minilm-ffn", 384, 1536, False))
FRACTIONS = (1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1.0)


class DenseSwiGLU(nn.Module):
    def __init__(self, d: int, ff: int):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(d, ff, bias=False), nn.Linear(d, ff, bias=False)
        self.down_proj, self.act = nn.Linear(ff, d, bias=False), nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DenseGELU(nn.Module):
    def __init__(self, d: int, ff: int):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(d, ff), nn.Linear(ff, d), nn.GELU()

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _dense_module(shape: Shape) -> tuple[nn.Module, DenseFFN]:
    if shape.gated:
        m = DenseSwiGLU(shape.hidden, shape.ff).eval()
        rows = DenseFFN(m.up_proj.weight.detach(), None, m.gate_proj.weight.detach(), None,
                        m.down_proj.weight.detach().t(), None, m.act)
    else:
        m = DenseGELU(shape.hidden, shape.ff).eval()
        rows = DenseFFN(m.fc1.weight.detach(), m.fc1.bias.detach(), None, None,
                        m.fc2.weight.detach().t(), m.fc2.bias.detach(), m.act)
    return m, rows


def run(
    shapes=SHAPES, batches=(1, 8), experts=(8, 16, 32), fractions=FRACTIONS, *,
    tokens: int = 128, rounds: int = 15, router: str = "learned", router_width: int = 128,
    decode: bool = False,
) -> list[dict]:
    """Time every grid point; returns one row per (shape, batch, E, fraction)."""
    torch.manual_seed(0)
    rows = []
    for shape in shapes:
        dense_mod, dense = _dense_module(shape)
        for batch in batches:
            n_tok = 1 if decode else tokens
            x = torch.randn(batch, n_tok, shape.hidden)
            for E in experts:
                perm = torch.randperm(shape.ff)
                for frac in fractions:
                    k = max(1, round(E * frac))
                    r = (MLPRouter(shape.hidden, E, router_width) if router == "learned"
                         else SimilarityRouter(shape.hidden, E))
                    if router == "similarity":
                        nn.init.normal_(r.centroids)
                    moe = build_moe(dense, perm, E, router=r.eval(), routing="topk", top_k=k,
                                    threshold=0.9, out_bias_inside=True).eval()
                    if k == E:  # all experts: the same function as dense
                        with torch.inference_mode():
                            torch.testing.assert_close(moe(x), dense_mod(x), rtol=1e-3, atol=1e-3)
                    with torch.inference_mode():
                        times = alternate(
                            {"dense": lambda m=dense_mod, x=x: m(x), "moe": lambda m=moe, x=x: m(x)},
                            rounds=rounds, warmup=3, inner=3 if batch * n_tok < 64 else 1,
                        )
                    vs = ratio_interval(times["dense"], times["moe"])
                    rows.append({
                        "shape": shape.name, "hidden": shape.hidden, "ff": shape.ff,
                        "gated": shape.gated, "batch": batch, "tokens": n_tok, "experts": E,
                        "top_k": k, "active_fraction": k / E, "path": moe.last_path,
                        "dense_ms": vs["dense_median_ms"], "moe_ms": vs["median_ms"],
                        "ratio": vs["ratio"], "ci95": vs["ci95"], "verdict": vs["verdict"],
                        "speedup": vs["speedup"],
                    })
                    print(f"{shape.name:12s} {batch}x{n_tok:<4d} E={E:<3d} k={k:<3d} "
                          f"dense {vs['dense_median_ms']:8.3f} ms  moe {vs['median_ms']:8.3f} ms  "
                          f"ratio {vs['ratio']:5.2f} {vs['ci95']} ({moe.last_path})", flush=True)
    return rows


def break_even(rows: list[dict]) -> list[dict]:
    """Per (shape, batch, E): the active fraction where speedup crosses 1 (interpolated)."""
    out = []
    keys = sorted({(r["shape"], r["batch"], r["tokens"], r["experts"]) for r in rows})
    for shape, batch, tokens, E in keys:
        pts = sorted((r["active_fraction"], r["speedup"]) for r in rows
                     if (r["shape"], r["batch"], r["tokens"], r["experts"]) == (shape, batch, tokens, E))
        frac = None
        if pts[0][1] < 1:
            frac = 0.0  # slower than dense even at the smallest fraction measured
        else:
            frac = pts[-1][0]  # faster everywhere measured
            for (f0, s0), (f1, s1) in zip(pts, pts[1:], strict=False):
                if s0 >= 1 > s1:
                    frac = f0 + (f1 - f0) * (s0 - 1) / (s0 - s1)
                    break
        out.append({"shape": shape, "batch": batch, "tokens": tokens, "experts": E,
                    "break_even_fraction": round(frac, 3),
                    "best_speedup": max(s for _, s in pts),
                    "speedup_at_quarter": next((s for f, s in pts if abs(f - 0.25) < 1e-9), None),
                    "speedup_at_half": next((s for f, s in pts if abs(f - 0.5) < 1e-9), None)})
    return out


def must_show(rows: list[dict], fraction: float = 0.25, bar: float = 0.5) -> list[dict]:
    """Per FFN shape at 8x128 tokens: the best MoE/dense ratio at ``fraction`` active
    over the expert counts measured, and whether it (and its interval) is at most ``bar``."""
    out = []
    for shape in sorted({r["shape"] for r in rows}):
        pts = [r for r in rows if r["shape"] == shape and r["batch"] == 8 and r["tokens"] == 128
               and abs(r["active_fraction"] - fraction) < 1e-9]
        if not pts:
            continue
        best = min(pts, key=lambda r: r["ratio"])
        out.append({"shape": shape, "tokens": "8x128", "active_fraction": fraction,
                    "experts": best["experts"], "ratio": best["ratio"], "ci95": best["ci95"],
                    "bar": bar, "met": best["ratio"] <= bar, "met_by_interval": best["ci95"][1] <= bar})
    return out


def markdown(rows: list[dict], even: list[dict], meta: dict, shown: list[dict] = ()) -> str:
    lines = ["# MoE FFN vs dense FFN (bench/moe_ffn.py)", "",
             f"Protocol: {meta['protocol']}", "",
             f"Machine: {meta['machine']}; torch {meta['torch']}; threads {meta['threads']}; "
             f"{meta['rounds']} alternating rounds, median. **{meta['note']}**", "",
             f"CPU: {meta['cpu']['model']} ({meta['cpu']['isa_summary']})", ""]
    for m in shown:
        lines.append(f"- must show, {m['shape']} {m['tokens']} at {m['active_fraction']:g} active: "
                     f"MoE/dense {m['ratio']:.2f} {m['ci95']} (E={m['experts']}) <= {m['bar']}: "
                     f"{'met' if m['met'] else 'NOT met'}")
    lines += ["",
             "## Break-even", "",
             "| FFN | tokens | E | break-even k/E | speedup at 1/4 | at 1/2 | best |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for e in even:
        lines.append(f"| {e['shape']} | {e['batch']}x{e['tokens']} | {e['experts']} | "
                     f"{e['break_even_fraction']:.2f} | {e['speedup_at_quarter']} | "
                     f"{e['speedup_at_half']} | {e['best_speedup']} |")
    lines += ["", "break-even k/E: the MoE FFN is faster than dense below this active fraction "
              "(0 = slower everywhere measured, 1 = faster everywhere).", "",
              "## All points", "",
              "| FFN | tokens | E | k | k/E | path | dense ms | MoE ms | MoE / dense [95% CI] |",
              "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lo, hi = r["ci95"]
        lines.append(f"| {r['shape']} | {r['batch']}x{r['tokens']} | {r['experts']} | {r['top_k']} | "
                     f"{r['active_fraction']:.3f} | {r['path']} | {r['dense_ms']:.3f} | "
                     f"{r['moe_ms']:.3f} | {r['ratio']:.2f} [{lo:.2f}, {hi:.2f}] |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (pinned)")
    parser.add_argument("--rounds", type=int, default=15, help="alternating timed rounds")
    parser.add_argument("--router", choices=("learned", "similarity"), default="learned")
    parser.add_argument("--decode", action="store_true",
                        help="one token per sequence (decoding) instead of 128")
    parser.add_argument("--quick", action="store_true", help="small grid, 3 rounds (smoke run)")
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS),
                        help="active fractions k/E")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8],
                        help="sequences of 128 tokens")
    parser.add_argument("--out", type=Path, default=Path("reports/bench"),
                        help="folder for moe_ffn[-decode].json and .md (default: reports/bench)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.rounds < 1:
        parser.error("--threads and --rounds must be at least 1")
    torch.set_num_threads(args.threads)
    grid = dict(experts=tuple(args.experts), fractions=tuple(args.fractions),
                batches=tuple(args.batches))
    if args.quick:
        grid = dict(shapes=(Shape("tiny-swiglu", 32, 64, True), Shape("tiny-gelu", 32, 64, False)),
                    batches=(1,), experts=(8,), fractions=(0.25, 1.0), tokens=16)
        args.rounds = min(args.rounds, 3)
    t0 = time.time()
    load_before = os.getloadavg()[0]
    others = OtherCPU()
    rows = run(rounds=args.rounds, router=args.router, decode=args.decode, **grid)
    even = break_even(rows)
    meta = {
        "protocol": ("dense nn.Linear FFN vs MoEFFN from the same random weights, random "
                     f"partition, {args.router} router (random weights, cost included), random "
                     "normal inputs, torch.inference_mode, 3 warm-up rounds, alternating "
                     "timed rounds; ratio = median per-round MoE/dense time, 95% bootstrap "
                     "interval over rounds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu": cpu_info(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "rounds": args.rounds, "quick": args.quick, "seconds": round(time.time() - t0, 1),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    # the suite's one definition of a busy machine (eval.machine.is_busy)
    meta["machine_quiet"] = quiet_reading(others.cores(), meta["load_average"])
    busy = meta["machine_quiet"]["quiet"] is False
    meta["provisional"] = busy
    meta["note"] = ("provisional: other processes used "
                    f"{meta['machine_quiet']['other_processes_cores']} cores while timing; "
                    "re-run on a quiet machine" if busy else
                    f"quiet machine ({meta['machine_quiet']['other_processes_cores']} other cores)")
    shown = must_show(rows)
    md = markdown(rows, even, meta, shown)
    print(md)
    if not args.no_write:
        stem = "moe_ffn" + ("-decode" if args.decode else "") + ("-quick" if args.quick else "")
        atomic_write_json(args.out / f"{stem}.json", {"meta": meta, "must_show": shown,
                                                      "break_even": even, "rows": rows})
        atomic_write_text(args.out / f"{stem}.md", md)
        print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
