"""``identity``: the baseline every comparison is made against; returns the model unchanged.

    python -m compress.recipes.identity --model minilm-l6 --out out/minilm-identity
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from compress.config import RecipeConfig
from compress.context import Context
from compress.registry import register_recipe
from compress.traits import Traits, config_memory


@dataclass(frozen=True)
class IdentityConfig(RecipeConfig):
    """No compression: the dense baseline."""


@register_recipe("identity", IdentityConfig, family="baseline", knobs=(), traits=Traits(),
                 formats=(), memory=config_memory)
def identity(model: nn.Module, config: IdentityConfig, context: Context) -> nn.Module:
    """The unchanged model: the dense baseline of every comparison."""
    return model


if __name__ == "__main__":
    import sys

    from compress.cli import recipe_main

    sys.exit(recipe_main("identity"))
