"""How much of an FFN's output can routing to experts keep? Error of one FFN, no training.

    python bench/moe_granularity.py                      # smollm2-135m, writes reports/bench/
    python bench/moe_granularity.py --model minilm-l6-sentiment --blocks 0,2,5

For chosen blocks of a model, the hidden states entering each FFN are captured on the
suite's calibration set (``moefy``'s own capture: 8,192 tokens, one sequence at a time)
and split 80/20 into fitting and held-out tokens. On the held-out tokens, the relative
error ``||y - y_dense|| / ||y_dense||`` of the FFN output (without its output bias) is
measured for half of the FFN active, chosen five ways:

* ``static``: the same half of the neurons for every token, the ones with the largest
  mean output energy ``E[h_j^2] ||w_out_j||^2`` (what FFN-width pruning keeps);
* ``neuron_oracle``: per token, the half of the neurons with the largest ``h_j^2
  ||w_out_j||^2`` (routing with experts of one neuron and a perfect router: the bound);
* ``experts_oracle`` (per expert count ``E``): ``moefy``'s co-activation partition into
  ``E`` experts, per token the ``E/2`` experts with the largest activation energy;
* ``experts_learned``: the same partition, ``moefy``'s learned router (an MLP fitted on
  the fitting tokens) choosing the ``E/2`` experts;
* ``shared_learned`` (``E = 16``): MoEBERT-style, the 4 experts' worth of neurons with the
  largest mean output energy always on, 4 of the other 12 routed (learned router);
* ``neuron_lowrank`` (per rank ``r``): experts of one neuron chosen per token by a rank-``r``
  predictor of the FFN's input projections (gate and up, or the one input projection),
  Deja Vu-style contextual sparsity (Liu et al. 2023, arXiv:2310.17157). The predictor is
  the activation-aware truncation ``x W^T V_r V_r^T``, ``V_r`` the top right singular
  vectors of the projections' outputs on the fitting tokens; a neuron's score is its
  predicted ``h_j^2 ||w_out_j||^2``. The predictor's weights ``r (d + k ff)`` count as
  active: the neurons kept are ``(1/2 - router share) ff``, so every row is at the same
  active parameters.

The numbers say where MoEfication of a gated FFN loses its quality: if the per-token
neuron oracle is far below the expert oracle, grouping neurons into experts is the
loss and no router can win it back; if the learned router is far above the expert
oracle, the router is.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.calibration import CalibrationSpec  # noqa: E402
from compress.cli import build_context  # noqa: E402
from compress.fileio import atomic_write_json  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.moe import calib  # noqa: E402
from compress.moe.convert import find_sites  # noqa: E402
from compress.moe.partition import partition_by_coactivation  # noqa: E402
from compress.moe.routers import energy_from_activations, train_mlp_router  # noqa: E402
from compress.recipes.moefy import _activations, _calibration_inputs, _split  # noqa: E402
from eval.machine import cpu_info  # noqa: E402


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return round(float((y - ref).norm() / ref.norm().clamp_min(1e-30)), 4)


def _topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.zeros_like(scores).scatter_(1, scores.topk(k, dim=-1).indices, 1.0)


def _expand(mask: torch.Tensor, cols: torch.Tensor, ff: int, size: int,
            always: torch.Tensor | None = None) -> torch.Tensor:
    """(N, E) expert mask over the neuron order ``cols`` -> (N, ff) neuron mask."""
    out = torch.zeros(mask.shape[0], ff)
    if always is not None:
        out[:, always] = 1.0
    out[:, cols] = mask.repeat_interleave(size, dim=1)
    return out


def _learned(x, h_sub, E, tr, val, seed):
    """(held-out scores, held-out energies) of a learned router over experts of ``h_sub``."""
    energy = energy_from_activations(h_sub, torch.arange(h_sub.shape[1]), E, "act_norm")
    router, _ = train_mlp_router(x[tr], energy[tr], x[val], energy[val], width=128,
                                 steps=300, lr=3e-3, seed=seed)
    with torch.no_grad():
        return router(x[val]), energy[val]


def _lowrank(dense, x, tr, val, ranks) -> dict[str, dict[str, float]]:
    """``neuron_lowrank`` rows: held-out error at half active, predictor counted."""
    with torch.no_grad():
        W = dense.w_out.float()
        ff, d = W.shape
        projs = [dense.w_in] + ([dense.w_gate] if dense.gated else [])
        biases = [dense.b_in] + ([dense.b_gate] if dense.gated else [])
        Y = torch.cat([F.linear(x, w.float(), b) for w, b in zip(projs, biases, strict=True)],
                      dim=1)
        _, _, Vh = torch.linalg.svd(Y[tr], full_matrices=False)
        h = _activations(dense, x)[val]
        y = h @ W
        out = {}
        for r in ranks:
            V = Vh[:r].T
            parts = (Y[val] @ V @ V.T).split(ff, dim=1)
            pred = dense.act(parts[1]) * parts[0] if dense.gated else dense.act(parts[0])
            share = r * (d + len(projs) * ff) / (ff * d * (len(projs) + 1))
            k = max(1, round((0.5 - share) * ff))
            mask = _topk_mask(pred.pow(2) * W.pow(2).sum(1), k)
            out[str(r)] = {"router_share": round(share, 4), "neurons_kept": k,
                           "rel_error": _rel((h * mask) @ W, y)}
        return out


def measure_block(site, x: torch.Tensor, experts: list[int], seed: int = 0,
                  ranks: tuple[int, ...] = (32, 64)) -> dict:
    dense = site.dense()
    tr, val = _split(x.shape[0], 0.2, seed + site.index)
    with torch.no_grad():
        h = _activations(dense, x)
        W = dense.w_out.float()  # (ff, d)
        ff = h.shape[1]
        y = h[val] @ W
        imp = h[tr].pow(2).mean(0) * W.pow(2).sum(1)
        order = imp.argsort(descending=True)
        static = torch.zeros(ff)
        static[order[: ff // 2]] = 1.0
        contrib = h[val].pow(2) * W.pow(2).sum(1)
        row = {"block": site.name, "ff": ff, "held_out_tokens": int(val.numel()),
               "static": _rel((h[val] * static) @ W, y),
               "neuron_oracle": _rel((h[val] * _topk_mask(contrib, ff // 2)) @ W, y),
               "experts_oracle": {}, "experts_learned": {}}
    for E in experts:
        size = ff // E
        perm = partition_by_coactivation(h[tr].float(), E, seed=seed, iters=25)
        h_p = h[:, perm]
        scores, energy = _learned(x, h_p, E, tr, val, seed + site.index)
        with torch.no_grad():
            row["experts_oracle"][str(E)] = _rel(
                (h[val] * _expand(_topk_mask(energy, E // 2), perm, ff, size)) @ W, y)
            row["experts_learned"][str(E)] = _rel(
                (h[val] * _expand(_topk_mask(scores, E // 2), perm, ff, size)) @ W, y)
    E, shared = 16, 4
    size = ff // E
    always, rest = order[: shared * size], order[shared * size:]
    part = partition_by_coactivation(h[tr][:, rest].float(), E - shared, seed=seed, iters=25)
    cols = rest[part]
    scores, _ = _learned(x, h[:, cols], E - shared, tr, val, seed + site.index)
    with torch.no_grad():
        mask = _expand(_topk_mask(scores, E // 2 - shared), cols, ff, size, always)
        row["shared_learned"] = {"experts": E, "shared": shared,
                                 "rel_error": _rel((h[val] * mask) @ W, y)}
    row["neuron_lowrank"] = _lowrank(dense, x, tr, val, ranks)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--blocks", default="0,5,10,15,20,25,29",
                        help="block indices (comma-separated; default: 0,5,10,15,20,25,29)")
    parser.add_argument("--experts", default="16,32,64,128")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/moe_granularity.json"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    model = loaded.model.eval()
    context = build_context(loaded, CalibrationSpec())
    sites = find_sites(model)
    wanted = [int(b) for b in args.blocks.split(",")]
    chosen = [s for i, s in enumerate(sites) if i in wanted]
    experts = [int(e) for e in args.experts.split(",")]
    inputs = _calibration_inputs(model, context, 8192)
    xs = calib.capture_ffn_inputs(model, chosen, inputs)
    rows = []
    for site in chosen:
        row = measure_block(site, xs[site.name], experts)
        rows.append(row)
        print(f"{row['block']}: static {row['static']}, neuron oracle {row['neuron_oracle']}, "
              f"experts oracle {row['experts_oracle']}, learned {row['experts_learned']}, "
              f"shared {row['shared_learned']['rel_error']}, low-rank neurons "
              f"{ {r: v['rel_error'] for r, v in row['neuron_lowrank'].items()} }", flush=True)

    def mean(get):
        return round(sum(get(r) for r in rows) / len(rows), 4)

    summary = {"static": mean(lambda r: r["static"]),
               "neuron_oracle": mean(lambda r: r["neuron_oracle"]),
               **{f"experts_oracle_E{E}": mean(lambda r, E=E: r["experts_oracle"][str(E)])
                  for E in experts},
               **{f"experts_learned_E{E}": mean(lambda r, E=E: r["experts_learned"][str(E)])
                  for E in experts},
               "shared_learned_E16": mean(lambda r: r["shared_learned"]["rel_error"]),
               **{f"neuron_lowrank_r{k}": mean(lambda r, k=k: r["neuron_lowrank"][k]["rel_error"])
                  for k in rows[0]["neuron_lowrank"]}}
    print("mean over blocks:", summary)
    if not args.no_write:
        atomic_write_json(args.out, {
            "bench": "moe_granularity", "model": args.model, "active_fraction": 0.5,
            "metric": "held-out relative error of the FFN output, ||y - y_dense|| / ||y_dense||",
            "calibration": context.info.get("calibration"), "blocks": rows,
            "mean": summary, "cpu": cpu_info(), "seconds": round(time.perf_counter() - t0, 1),
        })
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
