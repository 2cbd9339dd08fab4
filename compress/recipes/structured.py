"""``structured``: remove whole FFN neurons and attention heads; the matrices shrink.

Unlike unstructured zeros, removed rows and columns make the model smaller in memory
and on disk and faster on any hardware. Every block of a stack loses the same number
of neurons (and heads), chosen by importance within the block, so the stock config
records the new sizes and ``save_pretrained`` / ``from_pretrained`` reload the model
(heads of BERT/GPT-2/BART/OPT go through the ``structured-heads`` loader, see
:mod:`compress.pruning.surgery`). Importance: ``activation`` (default; activation
norm times outgoing weight norm, from calibration text), ``magnitude`` (weights
only) or ``taylor`` (first-order Taylor, needs a loss).

``hidden_ratio`` also removes channels of the residual stream (Minitron's embedding
channels, :mod:`compress.pruning.hidden`): embeddings, norms and every projection's
input or output side lose the same channels, and each norm is rescaled by the removed
channels' share of its input energy.

    python -m compress.recipes.structured --model smollm2-135m --ffn-ratio 0.5 --out out/s50
    python -m compress.recipes.structured --model smollm2-135m --ffn-ratio 0.5 \\
        --finetune-steps 200 --out out/s50-ft
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from compress.calib_footprint import CALIB_BATCH, FIRST_FORWARD, calib_hint, calib_text_parts
from compress.calibration import calibration_batches
from compress.config import option
from compress.context import Context
from compress.errors import UserError
from compress.footprint import (
    F32,
    FINETUNE_HINT,
    ModelFacts,
    Need,
    forward_bytes,
    hidden_states_bytes,
    logits_bytes,
    recovery_need,
    saved_activation_bytes,
)
from compress.pruning.config import RecoveryConfig
from compress.pruning.hidden import (
    activation_importance,
    channels_removed,
    check_rebuilds,
    keep_channels,
    magnitude_importance,
    norm_input_energy,
    norm_modules,
    plan_hidden,
    rescale_norms,
    shrink_hidden,
)
from compress.pruning.importance import (
    IMPORTANCES,
    activation_scores,
    count_removed,
    magnitude_scores,
    removal_units,
    select,
    taylor_scores,
)
from compress.pruning.recovery import run_with_recovery, task_for
from compress.pruning.surgery import (
    FORMAT_NAME,
    apply_selection,
    attention_units,
    ffn_blocks,
    ffn_width,
    heads_in_config,
)
from compress.registry import register_recipe
from compress.stats import parameter_counts
from compress.traits import Knob, Traits


@dataclass(frozen=True)
class StructuredConfig(RecoveryConfig):
    """Remove FFN neurons and attention heads physically (uniform count per block)."""

    ffn_ratio: float = option(0.5, "fraction of FFN neurons removed from every block (gate, "
                              "up and down together)", low=0.0, high=1.0, high_inclusive=False)
    heads_ratio: float = option(0.0, "fraction of attention heads removed from every attention "
                                "module (self and cross)", low=0.0, high=1.0,
                                high_inclusive=False)
    hidden_ratio: float = option(0.0, "fraction of hidden (residual stream) channels removed "
                                 "from the whole model: embeddings, norms and every "
                                 "projection's input or output side (Minitron's embedding "
                                 "channels; where the head size is hidden / heads, whole "
                                 "heads leave with them)", low=0.0, high=1.0,
                                 high_inclusive=False, added=True)
    rescale_norms: bool = option(True, "with hidden_ratio: scale each norm so kept channels "
                                 "keep their expected output (the removed channels' share of "
                                 "its input energy, from calibration)", added=True)
    importance: str = option("activation", "how units are ranked: activation (calibration "
                             "activation norm x outgoing weight norm), magnitude (weight norm) "
                             "or taylor (|sum w * grad|, needs a loss)", choices=IMPORTANCES)
    gqa: str = option("query", "with grouped KV heads: remove query heads evenly from every KV "
                      "group (query) or whole KV groups (group)", choices=("query", "group"))

    VERSION = 2  # calibration moved to the context (compress.calibration)


    def validate(self) -> None:
        super().validate()
        if self.ffn_ratio == 0 and self.heads_ratio == 0 and self.hidden_ratio == 0:
            raise UserError(f"{self._where('ffn_ratio')}, heads_ratio and hidden_ratio are all "
                            "0: nothing to remove")
        if self.hidden_ratio > 0 and self.importance == "taylor":
            raise UserError(f"{self._where('hidden_ratio')}: hidden channels are ranked by "
                            "importance=activation or magnitude, not taylor")
        if self.rewind:
            raise UserError(f"{self._where('rewind')}: rewinding applies to unstructured "
                            "recipes (magnitude, wanda); removed units have nothing to rewind")



def structured_widths(config: StructuredConfig, widths: dict[str, int]) -> dict[str, int]:
    """Widths after ``structured``: the same neuron and head counts as its surgery removes.

    The pipeline checks (``eval.sweep``) use it to check later steps against the widths
    this step leaves (an N:M pattern must still divide them).
    """
    out = dict(widths)
    ffn_ratio = getattr(config, "ffn_ratio", 0.0)
    if "ffn" in out and ffn_ratio:
        out["ffn"] -= int(round(ffn_ratio * out["ffn"]))
    hidden_ratio = getattr(config, "hidden_ratio", 0.0)
    if "hidden" in out and hidden_ratio:
        out["hidden"] -= int(round(hidden_ratio * out["hidden"]))
    heads_ratio = getattr(config, "heads_ratio", 0.0)
    if "attn" in out and heads_ratio and widths.get("_heads"):
        heads, kv, dim = (
            widths["_heads"],
            widths.get("_kv_heads") or widths["_heads"],
            widths["_head_dim"],
        )
        if kv != heads and getattr(config, "gqa", "query") == "query":
            per_group = heads // kv
            left = kv * (per_group - int(round(heads_ratio * per_group)))
        elif kv != heads:
            left = (kv - int(round(heads_ratio * kv))) * (heads // kv)
        else:
            left = heads - int(round(heads_ratio * heads))
        out["attn"] = left * dim
        out["_heads"] = left
    return out

def _sizes(model: nn.Module, gqa: str) -> tuple[dict[str, int], dict[str, int], dict[str, Any]]:
    """FFN width and head units per stack role (uniform within a role), plus head geometry."""
    ffn: dict[str, int] = {}
    for b in ffn_blocks(model):
        n = ffn_width(b)
        if ffn.setdefault(b.role, n) != n:
            raise UserError(f"{b.name}: FFN width {n} differs from other blocks of the "
                            f"{b.role}; structured removal needs uniform widths")
    units: dict[str, int] = {}
    geometry: dict[str, Any] = {}
    for u in attention_units(model):
        n = removal_units(u, gqa)
        if units.setdefault(u.block.role, n) != n:
            raise UserError(f"{u.name}: head layout differs from other attention modules of the "
                            f"{u.block.role}; structured head removal needs uniform layouts")
        geometry.setdefault(u.block.role, {"heads": u.n_heads, "kv_heads": u.n_kv,
                                           "head_dim": u.head_dim})
    return ffn, units, geometry


def structured_memory(config: StructuredConfig, facts: ModelFacts) -> Need:
    """Scoring: activation importance runs whole-model forwards on a calibration batch
    (logits included) with squared copies of the watched inputs; taylor adds a backward
    (the block linears' gradients, saved activations, the loss's logits copies); a causal
    LM's calibration text is tokenized as one text. Removal copies the removed columns
    aside to check the result. Then recovery fine-tuning, if any."""
    n, t = facts.data.calib_sequences, facts.data.calib_len()
    b = min(CALIB_BATCH, n)
    parts: dict[str, int] = {}
    if config.importance != "magnitude":
        parts.update(calib_text_parts(facts))
        parts["first forward's kernel caches"] = FIRST_FORWARD  # whole-model forwards
    if config.importance == "activation":
        parts["calibration forward"] = (forward_bytes(facts, b, t)
                                        + 2 * b * t * facts.widest_in() * F32)
    elif config.importance == "taylor":
        parts["gradients of the block linears"] = facts.linear_bytes
        parts["calibration forward and backward"] = (
            saved_activation_bytes(facts, b, t) + hidden_states_bytes(facts, b * t, 4)
            + logits_bytes(facts, b, t, 4))
    parts["removed columns kept to check the result"] = int(
        (config.ffn_ratio + config.heads_ratio) * facts.linear_bytes / 4)
    hint = calib_hint(facts, "importance=magnitude (no calibration)")
    return Need.peak(Need(parts, hint), recovery_need(config, facts, FINETUNE_HINT))


def _remove_hidden(m: nn.Module, config: StructuredConfig, n: int,
                   calib: Callable[[nn.Module], list]) -> dict[str, Any]:
    """Remove the ``n`` least important residual channels; rescale the norms; check.

    Where the config derives the head size from the hidden size, ``n / head size`` of
    the least important heads leave every attention module first (the head count then
    follows the width)."""
    plan = plan_hidden(m)
    if plan.coupled:
        scores = (magnitude_scores(m) if config.importance == "magnitude"
                  else activation_scores(m, calib(m)))
        k = n // plan.head_size
        roles = {u.block.role: k for u in attention_units(m)}
        apply_selection(m, select(m, scores, {}, roles, config.gqa))
    score = (magnitude_importance(m, plan) if config.importance == "magnitude"
             else activation_importance(m, plan, calib(m)))
    norms = norm_modules(m, plan)
    energy = norm_input_energy(m, norms, calib(m)) if config.rescale_norms else {}
    keep = keep_channels(score, n)
    out: dict[str, Any] = {"hidden": shrink_hidden(m, plan, keep)}
    if energy:
        out["norms_rescaled"] = len(rescale_norms(norms, energy, keep, plan.hidden))
    check_rebuilds(m)
    return out


@register_recipe(
    "structured", StructuredConfig, family="pruning",
    knobs=(Knob("ffn_ratio", "up", 0.05, 0.95, 0.05),),
    traits=Traits(calibrates=lambda c: c.importance != "magnitude" or (
        c.hidden_ratio > 0 and c.rescale_norms), widths=structured_widths),
    formats=(FORMAT_NAME,), memory=structured_memory,
)
def structured(model: nn.Module, config: StructuredConfig, context: Context) -> nn.Module:
    """Remove the least important FFN neurons and attention heads from every block."""
    task = task_for(model, context)
    ffn0, units0, geom0 = _sizes(model, config.gqa)
    ffn_total = {r: count_removed(config.ffn_ratio, n, "FFN neuron", "ffn_ratio")
                 for r, n in ffn0.items()} if config.ffn_ratio > 0 else {}
    what = "head" if config.gqa == "query" else "KV group"
    head_total = {r: count_removed(config.heads_ratio, n, f"{what} (per KV group)" if
                                   geom0[r]["kv_heads"] != geom0[r]["heads"] and
                                   config.gqa == "query" else "head", "heads_ratio")
                  for r, n in units0.items()} if config.heads_ratio > 0 else {}
    if config.heads_ratio > 0 and not units0:
        raise UserError(f"{config._where('heads_ratio')}: no attention heads found")
    plan0 = plan_hidden(model) if config.hidden_ratio > 0 else None  # refuse early
    if plan0 is not None and plan0.coupled and config.heads_ratio > 0:
        raise UserError(f"{config._where('heads_ratio')}: here the head size is hidden / heads, "
                        "so hidden_ratio removes whole heads with the channels; use "
                        "heads_ratio=0 with hidden_ratio")
    hidden0 = plan0.hidden if plan0 else None
    hidden_total = channels_removed(plan0, config.hidden_ratio) if plan0 else 0
    before = parameter_counts(model)
    removed_ffn = dict.fromkeys(ffn_total, 0)
    removed_heads = dict.fromkeys(head_total, 0)
    removed_hidden = [0]
    batches: list = []

    def calib(m: nn.Module) -> list:  # model inputs: built once, reused by every step
        if not batches:
            batches.extend(calibration_batches(context, m, recipe="structured"))
        return batches

    def step(m: nn.Module, fraction: float) -> dict[str, Any]:
        ffn_now = {r: int(round(fraction * n)) - removed_ffn[r] for r, n in ffn_total.items()}
        heads_now = {r: int(round(fraction * n)) - removed_heads[r] for r, n in head_total.items()}
        hidden_now = 0
        if plan0 is not None:  # each step's width a multiple the config accepts
            width = plan0.kept_width(hidden0 - fraction * hidden_total)
            hidden_now = hidden0 - removed_hidden[0] - max(width, hidden0 - hidden_total)
        out: dict[str, Any] = {"removed": {}}
        if any(ffn_now.values()) or any(heads_now.values()):
            if config.importance == "magnitude":
                scores = magnitude_scores(m)
            elif config.importance == "activation":
                scores = activation_scores(m, calib(m))
            else:
                scores = taylor_scores(m, calib(m), task)
            out["sizes"] = apply_selection(m, select(m, scores, ffn_now, heads_now, config.gqa))
            for r, n in ffn_now.items():
                removed_ffn[r] += n
            for r, n in heads_now.items():
                removed_heads[r] += n
            out["removed"] = {"ffn": ffn_now, "head_units": heads_now}
        if hidden_now > 0:
            out.update(_remove_hidden(m, config, hidden_now, calib))
            removed_hidden[0] += hidden_now
            out["removed"]["hidden_channels"] = hidden_now
        return out

    model = run_with_recovery(model, config, context, step)
    after = parameter_counts(model)
    ffn1, _, geom1 = _sizes(model, config.gqa)
    blocks = list(attention_units(model))
    context.info["structured"] = {
        "importance": config.importance,
        "ffn": {r: {"before": n, "after": ffn1[r], "removed_fraction": round(1 - ffn1[r] / n, 6)}
                for r, n in ffn0.items()},
        "heads": {r: {"before": g, "after": geom1[r]} for r, g in geom0.items()},
        "hidden": ({"before": hidden0, "after": hidden0 - removed_hidden[0],
                    "removed_fraction": round(removed_hidden[0] / hidden0, 6)}
                   if hidden0 else None),
        "params_before": before["total"],
        "params_after": after["total"],
        "params_removed_fraction": round(1 - after["total"] / before["total"], 6),
        "reload": "from_pretrained" if not head_total or all(
            heads_in_config(model, u.block) for u in blocks) else
            "compress.saving.load_compressed (structured-heads format)",
    }
    return model


if __name__ == "__main__":
    import sys

    from compress.cli import recipe_main

    sys.exit(recipe_main("structured"))
