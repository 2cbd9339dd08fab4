"""``depth``: drop whole blocks, the least important first, measured on calibration text.

Depth pruning in the manner of ShortGPT (Men et al. 2024, arXiv:2403.03853), Shortened
LLaMA (Kim et al. 2024, arXiv:2402.02834) and Minitron's depth axis (Muralidharan et
al. 2024, arXiv:2407.14679): every block's importance is measured on the context's
shared calibration tokens (:mod:`compress.calibration`, ``--calib-sequences`` x
``--calib-seq-len``; every calibrating recipe of a run sees the same tokens) by
:mod:`compress.pruning.influence`:

* ``metric=skip`` (default): KL(full || skipped) of the output distribution when the
  block is skipped (its output replaced by its input); 0 exactly when skipping changes
  nothing, and the quantity recovery distillation minimises;
* ``metric=loss``: the increase of the task cross-entropy when the block is skipped
  (Shortened LLaMA's perplexity criterion, Minitron's LM-loss depth metric);
* ``metric=bi``: ShortGPT's block influence, 1 - cos(block input, block output).

The least important blocks go until the non-embedding parameters
(:mod:`compress.pruning.sizes`) are at most ``target`` of the dense model's; ``blocks``
drops a fixed number per stack instead. ``selection=iterative`` (default) chooses one
block at a time and re-measures the others with the chosen ones skipped, as SLEB does
(Song et al. 2024, arXiv:2402.09025): blocks that are each redundant alone but not
together (two neighbours doing the same work) are not dropped together. The re-measuring
is lazy (:func:`_greedy`): only the blocks whose last estimate is lowest are measured
again, a few per calibration pass, so it costs a few more passes than ranking once
(``selection=oneshot``), not one pass per block per drop. Blocks of an encoder-decoder's two stacks
compete on the same score (``stacks`` limits which stacks lose blocks); every stack
keeps at least one.

The student is built by :func:`compress.distill.student.make_student` (a plain model
whose config states the new depth: ``save_pretrained`` / ``from_pretrained`` reload
it; per-layer config lists and KV-cache indices follow the kept blocks). A
shared-weight stack (ALBERT: one block run N times) loses calls, which saves compute
but no parameters: there ``target`` is the fraction of calls kept.

The dense model's block behind each kept block is recorded in
``config.compress_block_map`` (per stack role, composed through earlier depth steps) so
that a recovery step distilling from the dense teacher can align hidden states.

    python -m compress.recipes.depth --model smollm2-135m --target 0.75 --out out/d75
    python -m eval.run --model smollm2-135m --recipe depth --target 0.75 --metric bi
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from compress.arch import arch_for
from compress.calib_footprint import CALIB_BATCH, calib_forward_parts, calib_hint
from compress.calibration import calibration_batches
from compress.config import RecipeConfig, option
from compress.context import Context
from compress.distill.student import BLOCK_MAP_ATTR, make_student, teacher_layer_counts
from compress.errors import UserError
from compress.footprint import ModelFacts, Need, logits_bytes
from compress.pruning import sizes
from compress.pruning.influence import BLOCK_METRICS, block_importance, skip_costs
from compress.pruning.recovery import task_for
from compress.registry import register_recipe
from compress.traits import Knob, Traits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DepthConfig(RecipeConfig):
    """Drop the least important blocks (measured on calibration text)."""

    target: float = option(0.75, "fraction of the dense non-embedding parameters kept: blocks "
                           "are dropped, least important first, until at most this much is "
                           "left", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    blocks: int | None = option(None, "drop exactly this many blocks from every stack named "
                                "by --stacks (instead of --target)", low=1)
    metric: str = option("skip", "block importance: skip (KL of the outputs from the full "
                         "model's when the block is skipped), loss (task-loss increase when "
                         "skipped) or bi (angular distance between the block's input and "
                         "output)", choices=BLOCK_METRICS)
    stacks: str = option("all", "which stacks may lose blocks: all, encoder or decoder",
                         choices=("all", "encoder", "decoder"))
    selection: str = option("iterative", "iterative: re-measure the remaining blocks after "
                            "each drop, with the dropped ones skipped (SLEB's greedy, lazily "
                            "evaluated); oneshot: rank every block once, alone",
                            choices=("iterative", "oneshot"))

    VERSION = 2  # selection=iterative by default (version 1 ranked once)



def _depth_widths(config: DepthConfig, widths: dict[str, int]) -> dict[str, int]:
    """Linear widths are unchanged: whole blocks go."""
    return dict(widths)


#: candidates re-measured together in one lazy-greedy refresh (they share the pass that
#: computes the full model's reference outputs)
REFRESH_CHUNK = 3


class _Rule:
    """Which blocks may go next and when enough have gone: ``quota`` blocks per stack, or
    else down to ``target`` of the non-embedding parameters; every stack keeps a block."""

    def __init__(self, model: nn.Module, counts: dict[str, int], allowed: list[str],
                 quota: dict[str, int] | None = None, target: float = 1.0):
        spec = arch_for(model)
        self.counts, self.allowed, self.quota, self.target = counts, allowed, quota, target
        self.shared = {s.role for s in spec.stacks if s.shared}
        self.dropped: dict[str, set[int]] = {r: set() for r in counts}
        if quota is None:
            self.per_block = sizes.block_params(model, spec)
            self.before = sizes.non_embedding(model, spec)
            self.goal = target * self.before
            self.now = self.before

    def candidates(self) -> list[tuple[str, int]]:
        return [(r, i) for r in self.allowed for i in range(self.counts[r])]

    def may_drop(self, r: str, i: int) -> bool:
        if r not in self.allowed or i in self.dropped[r]:
            return False
        if self.quota is not None:
            return len(self.dropped[r]) < self.quota[r]
        return r not in self.shared and len(self.dropped[r]) + 1 < self.counts[r]

    def done(self) -> bool:
        if self.quota is not None:
            return all(len(self.dropped[r]) >= q for r, q in self.quota.items())
        return self.now <= self.goal

    def drop(self, r: str, i: int) -> None:
        self.dropped[r].add(i)
        if self.quota is None:
            self.now -= self.per_block[r][i]

    def unreachable(self) -> UserError:
        if self.quota is not None:
            return UserError("depth: no block is left to drop; choose fewer blocks")
        return UserError(f"depth: target={self.target:g} cannot be reached by dropping "
                         f"blocks (every stack keeps one: {self.now / self.before:.3f} of the "
                         "non-embedding parameters is the least)")


def _rule_for(model: nn.Module, config: DepthConfig, counts: dict[str, int]) -> _Rule:
    """The rule of a ``depth`` config: ``blocks`` per stack, a shared stack's share of
    its calls, or the parameter ``target``."""
    spec = arch_for(model)
    allowed = [s.role for s in spec.stacks if config.stacks in ("all", s.role)]
    if not allowed:
        raise UserError(f"depth: stacks={config.stacks} names no stack of this model (it "
                        f"has {', '.join(counts)})")
    shared = {s.role for s in spec.stacks if s.shared}
    if config.blocks is not None:
        for r in allowed:
            if config.blocks >= counts[r]:
                raise UserError(f"depth: blocks={config.blocks} would leave the {r} with "
                                f"no block (it has {counts[r]})")
        return _Rule(model, counts, allowed, {r: config.blocks for r in allowed})
    if all(r in shared for r in allowed):
        quota = {}  # weights shared across depth: the target is a share of the calls
        for r in allowed:
            keep = max(1, math.floor(config.target * counts[r] + 1e-9))
            if keep == counts[r]:
                raise UserError(f"depth: target={config.target:g} keeps every one of the "
                                f"{counts[r]} calls of the shared {r} block; choose less")
            quota[r] = counts[r] - keep
        return _Rule(model, counts, allowed, quota)
    return _Rule(model, counts, allowed, target=config.target)


def _greedy(rule: _Rule, first: dict[tuple[str, int], float], base: float,
            refresh: Callable[[dict[str, set[int]], list[tuple[str, int]]],
                              dict[tuple[str, int], float]] | None,
            marginal: bool) -> list[dict[str, Any]]:
    """Drop blocks one at a time, the least costly first; returns one record per drop.

    ``refresh=None`` ranks once by ``first`` (one-shot). Otherwise lazy greedy (Minoux
    1978): a candidate's estimate is its marginal cost (cost with it and the blocks
    already dropped skipped, minus the cost of the dropped ones alone) from the last
    time it was measured; the least estimate is re-measured against the current set until
    the least is current, and that block goes. When dropping blocks only makes the next
    drop cost more, this equals re-measuring every block every round (SLEB's greedy) at a
    fraction of the passes. ``marginal=False`` (block influence, not a cost): every
    refresh re-measures all candidates.
    """
    stale = dict(first)
    fresh = set(stale)
    trace = []
    while not rule.done():
        eligible = [c for c in stale if rule.may_drop(*c)]
        if not eligible:
            raise rule.unreachable()
        measured = 0
        while True:
            eligible.sort(key=lambda c: (stale[c], c))
            best = eligible[0]
            if refresh is None or best in fresh:
                break
            todo = [c for c in eligible if c not in fresh]
            todo = todo[:REFRESH_CHUNK] if marginal else todo
            costs = refresh({r: set(d) for r, d in rule.dropped.items()}, todo)
            for c in todo:
                stale[c] = costs[c] - base if marginal else costs[c]
            fresh.update(todo)
            measured += len(todo)
        trace.append({"stack": best[0], "block": best[1], "score": round(stale[best], 6),
                      "measured": measured})
        rule.drop(*best)
        if marginal:
            base += stale[best]  # the cost of the dropped set
        del stale[best]
        fresh = set()
    return trace


def _choose(rule: _Rule, metric: str, scores: dict[str, Any],
            refresh: Callable | None = None) -> tuple[dict[str, list[int]], list[dict]]:
    """Per stack role, the blocks (depth positions) kept, and the record of each drop."""
    first = {(r, i): scores[r].scores(metric)[i] for r, i in rule.candidates()}
    base = 0.0
    if metric == "loss":
        base = next(scores[r].base_loss for r in rule.allowed)
    trace = _greedy(rule, first, base, refresh, marginal=metric != "bi")
    maps = {r: [i for i in range(n) if i not in rule.dropped[r]]
            for r, n in rule.counts.items()}
    return maps, trace


def select_blocks(model: nn.Module, batches: list, task: str, metric: str, selection: str,
                  rule: _Rule | None = None, keep: dict[str, int] | None = None
                  ) -> tuple[dict[str, list[int]], dict[str, Any], list[dict]]:
    """Measure block importance and choose the blocks kept, per stack role: by ``rule``,
    or keeping ``keep[role]`` blocks of each stack (``distill``'s student depth).

    Returns the kept blocks, the one-shot scores and the record of each drop.
    """
    scores = block_importance(model, batches, task, ("bi",) if metric == "bi"
                              else BLOCK_METRICS)
    if rule is None:
        counts = teacher_layer_counts(model)
        quota = {r: counts[r] - k for r, k in (keep or {}).items() if counts[r] > k}
        rule = _Rule(model, counts, list(quota), quota)
    refresh = None
    if selection == "iterative":
        def refresh(skipped, candidates):
            return skip_costs(model, batches, task, metric, skipped, candidates)
    maps, trace = _choose(rule, metric, scores, refresh)
    return maps, scores, trace


def compose_block_map(model: nn.Module, maps: dict[str, list[int]]) -> dict[str, list[int]]:
    """The dense model's block behind each kept block (through earlier depth steps)."""
    before = getattr(model.config, BLOCK_MAP_ATTR, None) or {}
    return {r: [before[r][i] for i in m] if r in before else list(m) for r, m in maps.items()}


def depth_memory(config: DepthConfig, facts: ModelFacts) -> Need:
    """The student (a copy of the model), whole-model calibration forwards one batch at a
    time, and for the skip and loss metrics one batch's reference outputs beside the
    skipped run's and their log-probabilities (about three logits-sized tensors)."""
    parts = {"the student (a copy of the model)": facts.param_bytes,
             **calib_forward_parts(facts, hooked=config.metric == "bi")}
    n = facts.data.calib_sequences
    if n and config.metric != "bi":
        parts["reference and skipped outputs"] = logits_bytes(
            facts, min(CALIB_BATCH, n), facts.data.calib_len(), 3)
    return Need(parts, calib_hint(facts, "metric=bi (no logits kept)"))


@register_recipe(
    "depth", DepthConfig, family="pruning",
    knobs=(Knob("target", "down", 0.05, 0.95, 0.05, fixed_by=("blocks",)),),
    traits=Traits(calibrates=True, widths=_depth_widths),
    formats=(), memory=depth_memory,
)
def depth(model: nn.Module, config: DepthConfig, context: Context) -> nn.Module:
    """Drop the blocks whose removal costs least (measured), to a parameter target."""
    task = task_for(model, context)
    batches = calibration_batches(context, model, recipe="depth")
    counts = teacher_layer_counts(model)
    rule = _rule_for(model, config, counts)
    maps, scores, trace = select_blocks(model, batches, task, config.metric, config.selection,
                                        rule)
    if all(len(m) == counts[r] for r, m in maps.items()):
        raise UserError(f"depth: target={config.target:g} drops no block; choose less")
    before = sizes.summary(model)
    student, maps = make_student(model, maps, adjust=True)
    setattr(student.config, BLOCK_MAP_ATTR, compose_block_map(model, maps))
    after = sizes.summary(student)
    context.info["depth"] = {
        "metric": config.metric,
        "selection": config.selection,
        "drops": trace,
        "remeasured": sum(t["measured"] for t in trace),  # block evaluations after the first
        "importance": {r: s.to_dict() for r, s in scores.items()},
        "dropped": {r: [i for i in range(len(scores[r].bi)) if i not in maps[r]]
                    for r in maps},
        "kept": maps,
        "blocks_before": {r: len(scores[r].bi) for r in maps},
        "blocks_after": {r: len(m) for r, m in maps.items()},
        "params_before": before, "params_after": after,
        "non_embedding_fraction": round(after["non_embedding"] / max(before["non_embedding"], 1),
                                        6),
        "reload": "from_pretrained",
    }
    log.info("depth: dropped %s", context.info["depth"]["dropped"])
    return student


if __name__ == "__main__":
    from compress.cli import recipe_main

    sys.exit(recipe_main("depth"))
