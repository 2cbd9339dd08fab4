"""Compression recipes for Hugging Face transformer models behind one contract.

>>> from compress import compress, make_config
>>> model = compress(model, make_config("identity"))  # doctest: +SKIP
"""

from compress.api import compress
from compress.config import RecipeConfig, option
from compress.context import Context
from compress.errors import UserError
from compress.registry import get_recipe, make_config, recipe_names, register_recipe
from compress.traits import Knob, Traits

__all__ = [
    "Context",
    "Knob",
    "RecipeConfig",
    "Traits",
    "UserError",
    "compress",
    "get_recipe",
    "make_config",
    "option",
    "recipe_names",
    "register_recipe",
]
