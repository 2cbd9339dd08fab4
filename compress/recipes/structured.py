"""``structured``: remove whole FFN neurons and attention heads; the matrices shrink.

Unlike unstructured zeros, removed rows and columns make the model smaller in memory
and on disk and faster on any hardware. Every block of a stack loses the same number
of neurons (and heads), chosen by importance within the block, so the stock config
records the new sizes and ``save_pretrained`` / ``from_pretrained`` reload the model
(heads of BERT/GPT-2/BART/OPT go through the ``structured-heads`` loader, see
:mod:`compress.pruning.surgery`). Importance: ``activation`` (default; activation
norm times outgoing weight norm, from calibration text), ``magnitude`` (weights
only) or ``taylor`` (first-order Taylor, needs a loss).

    python -m compress.recipes.structured --model smollm2-135m --ffn-ratio 0.5 --out out/s50
    python -m compress.recipes.structured --model smollm2-135m --ffn-ratio 0.5 \\
        --finetune-steps 200 --out out/s50-ft
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from compress.calibration import calibration_batches
from compress.config import option
from compress.context import Context
from compress.errors import UserError
from compress.pruning.config import RecoveryConfig
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
from compress.traits import Knob, Traits, config_memory


@dataclass(frozen=True)
class StructuredConfig(RecoveryConfig):
    """Remove FFN neurons and attention heads physically (uniform count per block)."""

    ffn_ratio: float = option(0.5, "fraction of FFN neurons removed from every block (gate, "
                              "up and down together)", low=0.0, high=1.0, high_inclusive=False)
    heads_ratio: float = option(0.0, "fraction of attention heads removed from every attention "
                                "module (self and cross)", low=0.0, high=1.0,
                                high_inclusive=False)
    importance: str = option("activation", "how units are ranked: activation (calibration "
                             "activation norm x outgoing weight norm), magnitude (weight norm) "
                             "or taylor (|sum w * grad|, needs a loss)", choices=IMPORTANCES)
    gqa: str = option("query", "with grouped KV heads: remove query heads evenly from every KV "
                      "group (query) or whole KV groups (group)", choices=("query", "group"))

    VERSION = 2  # calibration moved to the context (compress.calibration)


    def validate(self) -> None:
        super().validate()
        if self.ffn_ratio == 0 and self.heads_ratio == 0:
            raise UserError(f"{self._where('ffn_ratio')} and heads_ratio are both 0: nothing "
                            "to remove")
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


@register_recipe(
    "structured", StructuredConfig, family="pruning",
    knobs=(Knob("ffn_ratio", "up", 0.05, 0.95, 0.05),),
    traits=Traits(calibrates=lambda c: c.importance != "magnitude", widths=structured_widths),
    formats=(FORMAT_NAME,), memory=config_memory,
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
    before = parameter_counts(model)
    removed_ffn = dict.fromkeys(ffn_total, 0)
    removed_heads = dict.fromkeys(head_total, 0)

    def step(m: nn.Module, fraction: float) -> dict[str, Any]:
        ffn_now = {r: int(round(fraction * n)) - removed_ffn[r] for r, n in ffn_total.items()}
        heads_now = {r: int(round(fraction * n)) - removed_heads[r] for r, n in head_total.items()}
        if not any(ffn_now.values()) and not any(heads_now.values()):
            return {"removed": {}}
        if config.importance == "magnitude":
            scores = magnitude_scores(m)
        else:
            batches = calibration_batches(context, m, recipe="structured")
            scores = activation_scores(m, batches) if config.importance == "activation" \
                else taylor_scores(m, batches, task)
        sizes = apply_selection(m, select(m, scores, ffn_now, heads_now, config.gqa))
        for r, n in ffn_now.items():
            removed_ffn[r] += n
        for r, n in heads_now.items():
            removed_heads[r] += n
        return {"removed": {"ffn": ffn_now, "head_units": heads_now}, "sizes": sizes}

    model = run_with_recovery(model, config, context, step)
    after = parameter_counts(model)
    ffn1, _, geom1 = _sizes(model, config.gqa)
    blocks = list(attention_units(model))
    context.info["structured"] = {
        "importance": config.importance,
        "ffn": {r: {"before": n, "after": ffn1[r], "removed_fraction": round(1 - ffn1[r] / n, 6)}
                for r, n in ffn0.items()},
        "heads": {r: {"before": g, "after": geom1[r]} for r, g in geom0.items()},
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
