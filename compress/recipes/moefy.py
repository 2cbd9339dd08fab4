"""``moefy``: MoEfication, every FFN split into experts that a router picks per token.

Zhang et al. 2022, "MoEfication: Transformer Feed-forward Layers are Mixtures of
Experts". The intermediate neurons of each FFN are partitioned into ``num_experts``
equal groups (balanced k-means on input-weight rows, or on co-activation profiles
over calibration tokens; a neuron's gate, up and down slices move together), and a
router per layer picks which experts each token runs: top-k (``k = round(E *
active_fraction)``) or, per token, the fewest experts whose predicted share of
activation energy reaches ``threshold``. Nothing is removed; the MoE FFN computes only
the experts it runs (:class:`compress.moe.layer.MoEFFN`), so FLOPs drop. Whether time
drops is measured: the MoE FFN against the dense FFN in ``bench/moe_ffn.py``
(reports/bench/moe_ffn.json), the whole model in each run's ``profile.latency_vs_dense``.

Routers: ``similarity`` (no training; expert centroid . hidden state), ``learned``
(a small MLP trained on calibration tokens to predict each expert's activation
energy), or ``auto`` (default): both are built and, per layer, the one with the lower
held-out FFN output error is kept. Similarity routing is what works for the sparse
ReLU FFNs of the paper; GELU and SwiGLU FFNs are far less sparse (the report's
``info.moe`` gives each layer's measured activation sparsity), and there ``auto``
picks the learned router. ``finetune_steps`` > 0 fits the experts to the dense FFN's
output with the router fixed.

The report's ``info.moe`` holds per-layer sparsity, router losses and scores, the
active FFN fraction, FFN FLOPs per token dense vs MoE, and (``timing_rounds`` > 0)
median latency of all FFN blocks and of the whole model, dense vs MoE, timed in
alternating rounds in the same process. The result saves in the ``moe`` format
(:mod:`compress.moe.format`) and reloads with ``compress.saving.load_compressed``.

    python -m compress.recipes.moefy --model smollm2-135m --active-fraction 0.25 \
        --out out/smollm2-moe25
    python -m eval.run --model minilm-l6-sentiment --recipe moefy --active-fraction 0.5
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from compress.arch import iter_blocks
from compress.calibration import calibration_set
from compress.config import RecipeConfig, option
from compress.context import Context
from compress.errors import UserError
from compress.moe import calib
from compress.moe.convert import DenseFFN, Site, build_moe, find_sites, install, use
from compress.moe.format import FORMAT_NAME as MOE_FORMAT
from compress.moe.layer import ROUTINGS, MoEFFN
from compress.moe.measure import activation_sparsity, finetune_experts, time_alternating
from compress.moe.partition import check_partition, partition_by_coactivation, partition_by_weights
from compress.moe.routers import (
    TARGETS,
    energy_from_activations,
    score_router,
    similarity_router,
    train_mlp_router,
)
from compress.registry import register_recipe
from compress.traits import Traits, config_memory

log = logging.getLogger(__name__)

PARTITIONS = ("weights", "coactivation")
ROUTERS = ("auto", "similarity", "learned")


@dataclass(frozen=True)
class MoefyConfig(RecipeConfig):
    """MoEfication: split every FFN into experts and route tokens to a few of them."""

    num_experts: int = option(16, "experts per FFN; the FFN width must be divisible by it", low=2)
    active_fraction: float = option(
        0.5, "top-k routing: fraction of experts each token runs (k = round(E * fraction), "
        "at least 1)", low=0.0, high=1.0, low_inclusive=False)
    routing: str = option("topk", "topk: every token runs k experts; threshold: each token "
                          "runs the fewest experts whose predicted energy share reaches "
                          "--threshold", choices=ROUTINGS)
    threshold: float = option(0.9, "threshold routing: predicted share of activation energy "
                              "to cover", low=0.0, high=1.0, low_inclusive=False)
    partition: str = option("coactivation", "weights: balanced k-means on input-weight rows; "
                            "coactivation: on activation profiles over calibration tokens",
                            choices=PARTITIONS)
    router: str = option("auto", "similarity (no training), learned (MLP on calibration "
                         "tokens), or auto (per layer, whichever has the lower held-out "
                         "output error)", choices=ROUTERS)
    router_target: str = option("act_norm", "what the learned router predicts per expert: "
                                "act_norm (||h_e||^2) or output_norm (||h_e W_out_e||^2)",
                                choices=TARGETS)
    router_width: int = option(128, "hidden width of the learned router MLP", low=1)
    router_steps: int = option(300, "Adam steps of learned-router training per layer", low=0)
    router_lr: float = option(3e-3, "learning rate of router training", low=0.0,
                              low_inclusive=False)
    finetune_steps: int = option(0, "Adam steps fitting each layer's experts to the dense "
                                 "FFN output with the router fixed (0: no fine-tuning)", low=0)
    finetune_lr: float = option(1e-4, "learning rate of expert fine-tuning", low=0.0,
                                low_inclusive=False)
    calibration_tokens: int = option(8192, "at most this many of the shared calibration set's "
                                     "tokens are collected per FFN (a share is held out for "
                                     "scoring)", low=64)
    held_out: float = option(0.2, "share of calibration tokens held out for router scores",
                             low=0.05, high=0.5)
    kmeans_iters: int = option(25, "balanced k-means iterations", low=1)
    sparsity_eps: float = option(0.01, "|h| below this counts as near zero (absolute; also "
                                 "relative to the token's max |h|)", low=0.0,
                                 low_inclusive=False)
    timing_rounds: int = option(10, "alternating dense/MoE rounds timing the FFN blocks and "
                                "the whole model at 1x128 (0: skip)", low=0)

    VERSION = 2  # calibration moved to the context (compress.calibration); seq_len removed


    def validate(self) -> None:
        if self.routing == "threshold" and self.router == "similarity":
            raise UserError("moefy: threshold routing needs router=learned or auto (similarity "
                            "scores are not energy shares)")

    def top_k(self) -> int:
        return max(1, min(self.num_experts, round(self.num_experts * self.active_fraction)))


def _needs_data(config: MoefyConfig) -> bool:
    return config.partition == "coactivation" or config.router != "similarity"


def _experts_divide(config: MoefyConfig) -> list[tuple[str, int, tuple[str, ...]]]:
    """The FFN width must split into ``num_experts`` equal experts (pipeline checks)."""
    experts = getattr(config, "num_experts", None)
    return [(f"num_experts={experts}", experts, ("ffn",))] if isinstance(experts, int) else []


def _split(n: int, held_out: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) token indices."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    n_val = max(1, int(round(n * held_out)))
    return order[n_val:], order[:n_val]


def _activations(dense: DenseFFN, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([dense.activations(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


def _r(value: float, n: int = 4) -> float:
    return round(float(value), n)


def _moefy_site(
    site: Site, x: torch.Tensor | None, config: MoefyConfig, k: int
) -> tuple[MoEFFN, dict[str, Any]]:
    """Partition, build routers, choose, optionally fine-tune; returns (module, facts)."""
    dense = site.dense()
    E = config.num_experts
    facts: dict[str, Any] = {"block": site.name, "role": site.role, "index": site.index,
                             "ff": dense.ff, "expert_size": dense.ff // E,
                             "activation": type(dense.act).__name__}
    w = dense.w_in
    if x is not None:
        x = x.to(w.device, w.dtype)
        tr, val = _split(x.shape[0], config.held_out, config.seed + site.index)
        x_tr, x_val = x[tr], x[val]
        h = _activations(dense, x)  # (N, ff), computed once
        facts["sparsity"] = {k_: _r(v) for k_, v in
                             activation_sparsity(h[:4096], config.sparsity_eps).items()}
    if config.partition == "weights":
        perm = partition_by_weights(dense.w_in.float().cpu(),
                                    None if dense.w_gate is None else dense.w_gate.float().cpu(),
                                    E, seed=config.seed, iters=config.kmeans_iters)
    else:
        perm = partition_by_coactivation(h[tr].float().cpu(), E, seed=config.seed,
                                         iters=config.kmeans_iters)
    check_partition(perm, dense.ff, E)
    perm = perm.to(w.device)

    def make(router: nn.Module) -> MoEFFN:
        return build_moe(dense, perm, E, router=router, routing=config.routing, top_k=k,
                         threshold=config.threshold,
                         out_bias_inside=site.layout.out == "inside")

    candidates: dict[str, MoEFFN] = {}
    if config.router in ("auto", "similarity") and config.routing == "topk":
        candidates["similarity"] = make(similarity_router(dense, perm, E))
    if x is not None:
        energy = energy_from_activations(h, perm, E, "act_norm")  # (N, E)
    if config.router in ("auto", "learned"):
        target = (energy if config.router_target == "act_norm" else
                  energy_from_activations(h, perm, E, config.router_target, dense.w_out))
        router, losses = train_mlp_router(
            x_tr.float(), target[tr].float(), x_val.float(), target[val].float(),
            width=config.router_width, steps=config.router_steps, lr=config.router_lr,
            seed=config.seed + site.index,
        )
        facts["router_losses"] = {k_: _r(v) if isinstance(v, float) else v
                                  for k_, v in losses.items()}
        candidates["learned"] = make(router.to(w.device, w.dtype))
    if x is not None:
        y_val = h[val] @ dense.w_out  # dense FFN output without output bias
        scores = {name: {k_: _r(v) for k_, v in
                         score_router(m, dense, x_val, energy[val], y_val).items()}
                  for name, m in candidates.items()}
        facts["router_scores"] = scores
        chosen = min(scores, key=lambda n: scores[n]["rel_error"])
        del h
    else:
        chosen = next(iter(candidates))
    facts["router"] = chosen
    moe = candidates[chosen]
    if config.finetune_steps and x is not None:
        facts["finetune"] = {k_: _r(v) if isinstance(v, float) else v for k_, v in
                             finetune_experts(moe, dense, x_tr, x_val, steps=config.finetune_steps,
                                              lr=config.finetune_lr, seed=config.seed).items()}
    facts["experts_per_token"] = (facts["router_scores"][chosen]["experts_per_token"]
                                  if x is not None else float(k))
    facts["flops_dense"] = dense.flops_per_token()
    facts["flops_router"] = moe.router.flops_per_token()
    facts["flops_moe"] = int(round(facts["experts_per_token"] * moe.expert_flops_per_token()
                                   + facts["flops_router"]))
    return moe, facts


def _dense_call(site: Site, x: torch.Tensor) -> torch.Tensor:
    o = site.originals
    if site.layout.replace == "parent":
        y = o["owner"](x)
        return o["bias"](y) if "bias" in o else y
    return o["bias"](o["act"](o["owner"](x)))


def _moe_call(site: Site, x: torch.Tensor) -> torch.Tensor:
    y = site.moe(x)
    return site.add_bias(y) if site.add_bias is not None else y


def _timings(
    model: nn.Module, sites: list[Site], xs: dict[str, torch.Tensor],
    inputs: list[dict[str, torch.Tensor]], rounds: int,
) -> dict[str, Any]:
    """FFN blocks and whole model, dense vs MoE, alternating rounds, medians (ms)."""
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "rounds": rounds,
                           "method": "alternating dense/MoE rounds in one process after 2 "
                           "warm-up rounds, torch.inference_mode, median ms"}
    for batch in (1,):  # 8x128 per FFN: bench/moe_ffn.py
        n = batch * 128
        if any(xs[s.name].shape[0] < n for s in sites):
            continue
        # each FFN's input on that FFN's device (a device_map may spread the blocks)
        blocks = {}
        for s in sites:
            p = next(s.moe.parameters())
            blocks[s.name] = xs[s.name][:n].reshape(batch, 128, -1).to(p.device, p.dtype)
        med = time_alternating(
            {"dense": lambda b=blocks: [_dense_call(s, b[s.name]) for s in sites],
             "moe": lambda b=blocks: [_moe_call(s, b[s.name]) for s in sites]},
            rounds=rounds,
        )
        out[f"ffn_blocks_{batch}x128"] = {"dense_ms": _r(med["dense"], 3),
                                          "moe_ms": _r(med["moe"], 3),
                                          "speedup": _r(med["dense"] / med["moe"], 3)}
    # whole model at 1x128: calibration token stream, dense and MoE modules swapped in turn
    ids = torch.cat([b["input_ids"][0] for b in inputs])
    if ids.numel() >= 128:
        from compress.models import input_device

        feed = {"input_ids": ids[:128][None].to(input_device(model))}
        feed["attention_mask"] = torch.ones_like(feed["input_ids"])
        if "decoder_input_ids" in inputs[0]:
            feed["decoder_input_ids"] = inputs[0]["decoder_input_ids"][:, :8]
        if getattr(getattr(model, "config", None), "use_cache", None) is not None:
            feed["use_cache"] = False

        def run(which: str) -> None:
            for s in sites:
                use(s, which)
            model(**feed)

        try:
            med = time_alternating({"dense": lambda: run("dense"), "moe": lambda: run("moe")},
                                   rounds=rounds)
        finally:
            for s in sites:
                use(s, "moe")
        out["model_1x128"] = {"dense_ms": _r(med["dense"], 3), "moe_ms": _r(med["moe"], 3),
                              "speedup": _r(med["dense"] / med["moe"], 3)}
    return out


@register_recipe(
    "moefy", MoefyConfig, family="moefication", knobs=(),
    traits=Traits(
        keeps_zeros=lambda c: getattr(c, "finetune_steps", 0) == 0,
        zeros_note="its expert fine-tuning updates every FFN weight",
        calibrates=_needs_data,
        divides=_experts_divide,
        hides_ffn=True,
    ),
    formats=(MOE_FORMAT,), memory=config_memory,
)
def moefy(model: nn.Module, config: MoefyConfig, context: Context) -> nn.Module:
    """MoEfication: split every FFN into experts and route each token to a few of them."""
    t0 = time.perf_counter()
    native = [b.name for b in iter_blocks(model) if b.layout.experts is not None]
    if native:
        raise UserError(f"moefy: the model's FFNs are already mixtures of experts ({native[0]} "
                        f"and {len(native) - 1} more); moefy splits dense FFNs into experts")
    sites = find_sites(model)
    if not sites:
        raise UserError("moefy: found no dense FFN (input and output projections) in the "
                        "model's blocks")
    E, k = config.num_experts, config.top_k()
    for site in sites:
        ff = site.dense().ff
        if ff % E:
            divisors = [n for n in range(2, 129) if ff % n == 0]
            raise UserError(f"moefy: FFN width {ff} ({site.name}) is not divisible by "
                            f"num_experts={E}; choose one of {divisors}")
    have_data = bool(context.calibration)
    if _needs_data(config) and not have_data:
        calibration_set(context, model, recipe="moefy (co-activation partition, learned "
                        "router or sparsity)")
    was_training = model.training
    model.eval()
    xs: dict[str, torch.Tensor] = {}
    inputs: list[dict[str, torch.Tensor]] = []
    try:
        if have_data:
            inputs = _calibration_inputs(model, context, config.calibration_tokens)
            xs = calib.capture_ffn_inputs(model, sites, inputs)
        layers = []
        for site in sites:
            moe, facts = _moefy_site(site, xs.get(site.name), config, k)
            install(site, moe)
            layers.append(facts)
        timing = (_timings(model, sites, xs, inputs, config.timing_rounds)
                  if config.timing_rounds and have_data else None)
    finally:
        if was_training:
            model.train()
    context.info["moe"] = _summary(config, k, layers, timing, inputs, xs, sites,
                                   time.perf_counter() - t0)
    return model


def _calibration_inputs(model: nn.Module, context: Context, max_tokens: int
                        ) -> list[dict[str, torch.Tensor]]:
    """The shared calibration set one sequence at a time (no padding reaches the
    statistics), until ``max_tokens`` encoder tokens; encoder-decoders read the target
    as decoder input, so decoder FFNs see real tokens too."""
    from compress.models import input_device

    device = input_device(model)
    inputs, total = [], 0
    for b in calibration_set(context, model, recipe="moefy").batches(batch_size=1):
        ids = b.inputs["input_ids"]
        if ids.shape[1] < 2:
            continue
        batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
        if "labels" in b.inputs:
            batch["decoder_input_ids"] = b.inputs["labels"].to(device)
        inputs.append(batch)
        total += ids.shape[1]
        if total >= max_tokens:
            break
    if not inputs:
        raise UserError("moefy: the calibration texts produced no tokens")
    return inputs


def _summary(config, k, layers, timing, inputs, xs, sites, seconds) -> dict[str, Any]:
    def mean(values):
        values = [v for v in values if v is not None]
        return _r(sum(values) / len(values)) if values else None

    dense = sum(f["flops_dense"] for f in layers)
    moe = sum(f["flops_moe"] for f in layers)
    experts = sum(f["flops_moe"] - f["flops_router"] for f in layers)
    tokens = xs[sites[0].name].shape[0] if xs else 0
    chosen = [f["router"] for f in layers]
    return {
        "method": "MoEfication (Zhang et al. 2022)",
        "num_experts": config.num_experts,
        "top_k": k if config.routing == "topk" else None,
        "routing": config.routing,
        "threshold": config.threshold if config.routing == "threshold" else None,
        "partition": config.partition,
        "router": config.router,
        "routers_chosen": {name: chosen.count(name) for name in sorted(set(chosen))},
        "router_target": config.router_target,
        "layers_converted": len(layers),
        "active_fraction": mean(f["experts_per_token"] / config.num_experts for f in layers),
        "active_fraction_configured": (k / config.num_experts if config.routing == "topk"
                                       else None),
        "ffn_flops_per_token": {
            "dense": dense, "moe": moe, "experts": experts, "router": moe - experts,
            "moe_over_dense": _r(moe / dense) if dense else None,
        },
        "sparsity_mean": {key: mean(f.get("sparsity", {}).get(key) for f in layers)
                          for key in ("exact_zero", "near_zero_abs", "near_zero_rel",
                                      "neurons_for_90pct")},
        "sparsity_definition": (
            "on FFN intermediate activations h (input of W_out) over calibration tokens: "
            f"exact_zero h==0; near_zero_abs |h|<{config.sparsity_eps}; near_zero_rel "
            f"|h|<{config.sparsity_eps}*max|h| of the token; neurons_for_90pct: fraction of "
            "neurons carrying 90% of sum h^2 per token"),
        "router_scores_mean": {
            name: {key: mean(f["router_scores"][name][key] for f in layers
                             if name in f.get("router_scores", {}))
                   for key in ("energy_recall", "oracle_recall", "topk_overlap", "rel_error")}
            for name in ("similarity", "learned")
            if any(name in f.get("router_scores", {}) for f in layers)
        },
        "calibration": {"sequences": len(inputs), "tokens_per_ffn": tokens,
                        "held_out": config.held_out},
        "timing": timing,
        "timing_note": "same process, alternating rounds; on a shared CPU these numbers are "
        "provisional until re-run on a quiet machine" if timing else None,
        "layers": layers,
        "seconds": _r(seconds, 1),
    }


if __name__ == "__main__":
    from compress.cli import recipe_main

    sys.exit(recipe_main("moefy"))
