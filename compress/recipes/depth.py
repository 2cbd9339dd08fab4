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
drops a fixed number per stack instead. Blocks of an encoder-decoder's two stacks
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
from compress.pruning.influence import BLOCK_METRICS, block_importance
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



def _depth_widths(config: DepthConfig, widths: dict[str, int]) -> dict[str, int]:
    """Linear widths are unchanged: whole blocks go."""
    return dict(widths)


def _choose(model: nn.Module, config: DepthConfig, scores: dict[str, Any]
            ) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """Per stack role, the blocks (depth positions) kept."""
    spec = arch_for(model)
    counts = teacher_layer_counts(model)
    allowed = [s.role for s in spec.stacks if config.stacks in ("all", s.role)]
    if not allowed:
        raise UserError(f"depth: stacks={config.stacks} names no stack of this model (it has "
                        f"{', '.join(counts)})")
    importance = {r: scores[r].scores(config.metric) for r in counts}
    dropped: dict[str, set[int]] = {r: set() for r in counts}
    shared = {s.role for s in spec.stacks if s.shared}
    if config.blocks is not None:
        for r in allowed:
            if config.blocks >= counts[r]:
                raise UserError(f"depth: blocks={config.blocks} would leave the {r} with no "
                                f"block (it has {counts[r]})")
            order = sorted(range(counts[r]), key=lambda i: (importance[r][i], i))
            dropped[r] = set(order[:config.blocks])
    elif all(r in shared for r in allowed):
        for r in allowed:  # weights shared across depth: the target is a share of the calls
            keep = max(1, math.floor(config.target * counts[r] + 1e-9))
            if keep == counts[r]:
                raise UserError(f"depth: target={config.target:g} keeps every one of the "
                                f"{counts[r]} calls of the shared {r} block; choose less")
            order = sorted(range(counts[r]), key=lambda i: (importance[r][i], i))
            dropped[r] = set(order[:counts[r] - keep])
    else:
        per_block = sizes.block_params(model, spec)
        before = sizes.non_embedding(model, spec)
        goal = config.target * before
        now = before
        candidates = sorted(((importance[r][i], r, i) for r in allowed if r not in shared
                             for i in range(counts[r])), key=lambda t: (t[0], t[1], t[2]))
        for _, r, i in candidates:
            if now <= goal:
                break
            if len(dropped[r]) + 1 >= counts[r]:
                continue  # every stack keeps a block
            dropped[r].add(i)
            now -= per_block[r][i]
        if now > goal:
            raise UserError(f"depth: target={config.target:g} cannot be reached by dropping "
                            f"blocks (every stack keeps one: {now / before:.3f} of the "
                            "non-embedding parameters is the least)")
    maps = {r: [i for i in range(n) if i not in dropped[r]] for r, n in counts.items()}
    if all(len(m) == counts[r] for r, m in maps.items()):
        raise UserError(f"depth: target={config.target:g} drops no block; choose less")
    return maps, {r: sorted(d) for r, d in dropped.items()}


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
    metrics = ("bi",) if config.metric == "bi" else BLOCK_METRICS
    scores = block_importance(model, batches, task, metrics)
    maps, dropped = _choose(model, config, scores)
    before = sizes.summary(model)
    student, maps = make_student(model, maps, adjust=True)
    setattr(student.config, BLOCK_MAP_ATTR, compose_block_map(model, maps))
    after = sizes.summary(student)
    context.info["depth"] = {
        "metric": config.metric,
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
    log.info("depth: dropped %s", dropped)
    return student


if __name__ == "__main__":
    from compress.cli import recipe_main

    sys.exit(recipe_main("depth"))
