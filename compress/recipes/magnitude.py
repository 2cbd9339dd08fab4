"""``magnitude``: unstructured (or N:M) pruning by ``|w|``, with optional recovery fine-tuning.

The baseline of every pruning paper (Han et al. 2015, "Learning both Weights and
Connections"). Scope ``layer`` prunes each targeted matrix to the target, ``global``
ranks all targeted matrices together (one exact threshold, found by a streamed
selection without concatenating the weights), ``row`` prunes each output row;
``--group-ratios attn=0.9,cross=0.4,ffn=0.7,lm_head=0.8`` sets one target per group.
Embeddings and norms are left alone unless named in ``--groups``.

    python -m compress.recipes.magnitude --model smollm2-135m --sparsity 0.5 --out out/m50
    python -m compress.recipes.magnitude --model smollm2-135m --pattern 2:4 --out out/m24
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from compress.config import option
from compress.context import Context
from compress.pruning.config import UnstructuredConfig
from compress.pruning.recovery import run_with_recovery
from compress.pruning.sparse_format import NAME as SPARSE_FORMAT
from compress.pruning.targets import select_targets
from compress.pruning.unstructured import magnitude_step, plan, record_sparsity
from compress.registry import register_recipe
from compress.traits import Knob, Traits, config_memory, nm_divides, pattern_sparsity


@dataclass(frozen=True)
class MagnitudeConfig(UnstructuredConfig):
    """Unstructured or N:M pruning by weight magnitude."""

    scope: str = option("layer", "where the target applies: row (each output row), layer "
                        "(each matrix) or global (one threshold over all targeted matrices)",
                        choices=("row", "layer", "global"))


@register_recipe(
    "magnitude", MagnitudeConfig, family="pruning",
    knobs=(Knob("sparsity", "up", 0.01, 0.99, 0.01, fixed_by=("pattern",)),),
    traits=Traits(sparsity=pattern_sparsity, divides=nm_divides),
    formats=(SPARSE_FORMAT,), memory=config_memory,
)
def magnitude(model: nn.Module, config: MagnitudeConfig, context: Context) -> nn.Module:
    """Set the smallest-magnitude weights of the targeted matrices to zero."""
    plan(model, config)  # validate targets before any work

    def rewind_weights(m: nn.Module) -> dict:
        return {t.name: t.weight for t in select_targets(m, tuple(config.ratios()))}

    model = run_with_recovery(
        model, config, context, lambda m, f: magnitude_step(m, config, f), rewind_weights
    )
    record_sparsity(model, config, context, "magnitude")
    return model


if __name__ == "__main__":
    import sys

    from compress.cli import recipe_main

    sys.exit(recipe_main("magnitude"))
