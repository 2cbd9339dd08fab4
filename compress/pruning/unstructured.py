"""Unstructured and N:M pruning steps for the magnitude and Wanda recipes.

A *plan* pairs each targeted matrix with its target sparsity and the pool it is
ranked in (``scope=global``: one pool per group; ``layer``: one per matrix; ``row``:
each output row). :func:`magnitude_step` prunes the plan by ``|W|``;
:func:`wanda_step` by ``|W| * ||X||`` with activations gathered block by block
(:func:`compress.pruning.calibration.sequential_blocks`, on the shared calibration
set of :mod:`compress.calibration`). :func:`record_sparsity`
writes the measured result into ``context.info``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from compress.arch import Block
from compress.calibration import calibration_set
from compress.context import Context
from compress.errors import UserError
from compress.pruning import masks
from compress.pruning.calibration import collect_input_sumsq, sequential_blocks
from compress.pruning.config import UnstructuredConfig
from compress.pruning.scoring import magnitude_score, wanda_score
from compress.pruning.targets import GROUPS, Target, lm_head_tied, out_in, select_targets

log = logging.getLogger(__name__)


@dataclass
class Planned:
    target: Target
    sparsity: float
    pool: str  # targets with the same pool share one threshold (scope=global)


def plan(model: nn.Module, config: UnstructuredConfig, fraction: float = 1.0) -> list[Planned]:
    """Targets with their sparsity (``fraction`` of the configured target) and pool."""
    ratios = config.ratios()
    targets = select_targets(model, tuple(ratios))
    present = {t.group for t in targets}
    if config.group_ratios:
        missing = sorted(set(ratios) - present)
        if missing:
            raise UserError(
                f"{config._where('group_ratios')}: this model has no {', '.join(missing)} "
                f"matrices; it has {', '.join(sorted(present)) or 'none'}"
            )
    if not targets:
        raise UserError(f"{config._where('groups')}: no matrices of {', '.join(ratios)} found")
    # global: one threshold over every targeted matrix, or one per group with group ratios
    def pool(t: Target) -> str:
        if config.scope != "global":
            return t.name
        return t.group if config.group_ratios else "all targeted matrices"

    return [Planned(t, ratios[t.group] * fraction, pool(t)) for t in targets]


def check_planned(items: list[Planned], config: UnstructuredConfig) -> None:
    """Raise the error a target would hit, before any weight changes."""
    nm = config.nm()
    pools: dict[str, list[Planned]] = {}
    for it in items:
        t = it.target
        if nm is not None:
            if t.in_features % nm[1]:
                raise UserError(f"{config.pattern} needs the input size to be a multiple of "
                                f"{nm[1]}; {t.name} has {t.in_features}")
        elif config.scope == "row":
            masks.count_to_prune(it.sparsity, t.in_features, f"each row of {t.name}")
        pools.setdefault(it.pool, []).append(it)
    if nm is None and config.scope != "row":
        for pool, members in pools.items():
            total = sum(m.target.numel() for m in members)
            what = f"group {pool}" if pool in GROUPS else pool
            masks.count_to_prune(members[0].sparsity, total, what)


def prune_planned(items: list[Planned], score: masks.ScoreFn, config: UnstructuredConfig) -> int:
    """Prune ``items`` in place by ``score``; returns the number of weights set to zero."""
    nm = config.nm()
    done = 0
    if nm is not None:
        for it in items:
            done += masks.prune_nm_(it.target, score, *nm)
        return done
    if config.scope == "row":
        for it in items:
            done += masks.prune_rows_(it.target, score, it.sparsity)
        return done
    pools: dict[str, list[Planned]] = {}
    for it in items:
        pools.setdefault(it.pool, []).append(it)
    for pool, members in pools.items():
        what = f"group {pool}" if pool in GROUPS else pool
        done += masks.prune_pool_([m.target for m in members], score, members[0].sparsity, what)
    return done


def _override(items: list[Planned], sparsities: dict[str, float] | None,
              fraction: float) -> list[Planned]:
    """Per-matrix targets (OWL's layerwise sparsity) in place of the configured ones."""
    if sparsities:
        for it in items:
            if it.target.name in sparsities:
                it.sparsity = sparsities[it.target.name] * fraction
    return items


def magnitude_step(model: nn.Module, config: UnstructuredConfig, fraction: float,
                   sparsities: dict[str, float] | None = None) -> dict:
    items = _override(plan(model, config, fraction), sparsities, fraction)
    check_planned(items, config)
    return {"zeroed": prune_planned(items, magnitude_score, config)}


def _no_embeddings(items: list[Planned], config: Any, method: str) -> None:
    if any(it.target.group == "embeddings" for it in items):
        raise UserError(f"{config._where('groups')}: {method} cannot score embeddings (they have "
                        "no input activations); prune them with magnitude")


def wanda_step(
    model: nn.Module, config: Any, context: Context, task: str, fraction: float,
    sparsities: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Wanda, calibrated sequentially: block by block on the pruned blocks' outputs."""
    items = _override(plan(model, config, fraction), sparsities, fraction)
    _no_embeddings(items, config, "Wanda")
    check_planned(items, config)
    cal = calibration_set(context, model, recipe=config.RECIPE)
    batches = cal.batches()
    by_name = {it.target.name: it for it in items}
    zeroed = 0

    def components(block: Block) -> dict[str, str]:
        return {c: n for c, n in block.linear_names.items() if n in by_name}

    def on_block(block: Block, sumsq: dict[str, torch.Tensor]) -> None:
        nonlocal zeroed
        mine = [by_name[n] for n in components(block).values()]
        zeroed += prune_planned(mine, wanda_score(sumsq), config)

    n_blocks = 0
    for _ in sequential_blocks(model, batches, on_block, components):
        n_blocks += 1
    head = [it for it in items if it.target.block < 0]
    if head:  # the LM head reads the final hidden states: one more forward of the pruned model
        mods = {it.target.name: (it.target.module, "decoder") for it in head}
        sumsq, _ = collect_input_sumsq(model, batches, mods)
        zeroed += prune_planned(head, wanda_score(sumsq), config)
    return {"zeroed": zeroed, "calibration_blocks": n_blocks}


def sparsegpt_step(
    model: nn.Module, config: Any, context: Context, fraction: float,
    sparsities: dict[str, float] | None = None,
) -> dict[str, Any]:
    """SparseGPT (:mod:`compress.pruning.sparsegpt`), block by block on the shared
    calibration set; true-sequential within a block when ``config.true_sequential``."""
    from compress.hessian import HessianAccumulator, SharedInputs
    from compress.pruning.sparsegpt import sparsegpt_prune
    from compress.sequential import (
        BlockRun,
        all_linears,
        collect_model_inputs,
        run_sequential,
        sequential_groups,
    )

    items = _override(plan(model, config, fraction), sparsities, fraction)
    _no_embeddings(items, config, "SparseGPT")
    check_planned(items, config)
    batches = calibration_set(context, model, recipe=config.RECIPE).batches()
    by_name = {it.target.name: it for it in items}
    names = set(by_name)
    nm = config.nm()
    zeroed, raised = 0, {}

    def prune(name: str, acc: HessianAccumulator | None) -> None:
        nonlocal zeroed
        it = by_name[name]
        view = out_in(it.target)  # (out, in), a transposed view for Conv1D: writes go through
        H = acc.H if acc is not None and acc.H is not None else torch.eye(view.shape[1], dtype=torch.float64,
                                                      device=view.device)
        new, _loss, used = sparsegpt_prune(view, H, it.sparsity, nm=nm, scope=config.scope,
                                           blocksize=config.blocksize, damp=config.damp)
        if used > config.damp * 1.0001:
            raised[name] = round(used, 6)
        with torch.no_grad():
            view.copy_(new.to(view.dtype))
        zeroed += int((new == 0).sum())

    def on_block(run: BlockRun) -> None:
        groups = (sequential_groups(run.block, names) if config.true_sequential
                  else [all_linears(run.block, names)])
        for group in groups:
            acc = SharedInputs(lambda n: HessianAccumulator(by_name[n].target.in_features))
            run.collect(group, acc.add)
            for n in group.values():
                prune(n, acc.get(n))

    n_blocks = run_sequential(model, batches, on_block)
    head = [it for it in items if it.target.block < 0]
    if head:  # the LM head reads the final hidden states: one forward of the pruned model
        acc = {it.target.name: HessianAccumulator(it.target.in_features) for it in head}
        mods = {it.target.name: (it.target.module, "decoder") for it in head}
        collect_model_inputs(model, batches, mods, lambda n, x: acc[n].add(x))
        for it in head:
            prune(it.target.name, acc[it.target.name])
    return {"zeroed": zeroed, "calibration_blocks": n_blocks, "damp_raised": raised or None}


@torch.no_grad()
def record_sparsity(model: nn.Module, config: UnstructuredConfig, context: Context,
                    recipe: str) -> dict[str, Any]:
    """Measure the targeted matrices and write ``context.info["sparsity"]``."""
    items = plan(model, config)
    per_group: dict[str, dict[str, Any]] = {}
    for it in items:
        g = per_group.setdefault(it.target.group, {"target": it.sparsity, "weights": 0,
                                                   "zeros": 0, "matrices": 0})
        g["weights"] += it.target.numel()
        g["zeros"] += masks.zeros_in(it.target)
        g["matrices"] += 1
    for g in per_group.values():
        g["measured"] = round(g["zeros"] / g["weights"], 6)
    weights = sum(g["weights"] for g in per_group.values())
    zeros = sum(g["zeros"] for g in per_group.values())
    overall_target = sum(v["target"] * v["weights"] for v in per_group.values()) / weights
    info = {
        "recipe": recipe,
        # with per-group ratios: the weight-averaged target over the targeted matrices
        "target": round(overall_target, 6) if config.group_ratios else config.sparsity,
        "measured": round(zeros / weights, 6),
        "pattern": config.pattern,
        "scope": config.scope,
        "per_group": per_group,
        "targeted_params": weights,
        "pruned_params": zeros,
        "lm_head_tied_to_embeddings": "lm_head" in per_group and lm_head_tied(model),
    }
    if config.pattern != "unstructured":
        info["nm_holds"] = all(nm_holds(it.target, *config.nm()) for it in items)
    from compress.pruning.sparse_format import sparse_bytes

    info["bytes"] = sparse_bytes(model)
    context.info["sparsity"] = info
    return info


@torch.no_grad()
def nm_holds(target: Target, n: int, m: int) -> bool:
    """At most ``n`` nonzeros in every group of ``m`` consecutive inputs of each row."""
    w = masks.out_in(target)
    out, inp = w.shape
    nz = (w != 0).reshape(out, inp // m, m).sum(-1)
    return bool((nz <= n).all())
