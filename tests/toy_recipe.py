"""A toy recipe, added the way recipes/README.md says: one module, nothing else edited.

``tests/test_toy_recipe.py`` imports it (directly, and through a sweep file's
``imports``) and finds it in the command line, the sweep, the budget search and the
written report.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from compress.cli import recipe_main
from compress.config import RecipeConfig, option
from compress.context import Context
from compress.registry import register_recipe
from compress.traits import Knob, Traits, config_memory, pattern_sparsity

NAME = "toy-prune-test"


@dataclass(frozen=True)
class ToyConfig(RecipeConfig):
    """Toy pruning: the smallest weights of every linear set to zero."""

    sparsity: float = option(0.5, "fraction of each linear's weights set to zero (toy)",
                             low=0.0, high=0.99)


@register_recipe(
    NAME, ToyConfig, family="pruning",
    knobs=(Knob("sparsity", "up", 0.01, 0.99, 0.01),),
    traits=Traits(sparsity=pattern_sparsity),
    formats=(), memory=config_memory,
)
def toy_prune(model: nn.Module, config: ToyConfig, context: Context) -> nn.Module:
    """Zero the smallest-magnitude weights of every linear layer (a toy recipe)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                w = module.weight
                k = int(config.sparsity * w.numel())
                if k:
                    threshold = w.abs().flatten().kthvalue(k).values
                    w.masked_fill_(w.abs() <= threshold, 0)
    context.info["toy"] = {"sparsity": config.sparsity}
    return model


if __name__ == "__main__":
    sys.exit(recipe_main(NAME))
