"""The recipe registry: one name -> (config class, handler).

Recipes register themselves at import time::

    @register_recipe("identity", IdentityConfig)
    def identity(model, config, context):
        return model

``get_recipe("identiy")`` raises a one-line error with the closest names and the list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compress.config import RecipeConfig
from compress.errors import did_you_mean

if TYPE_CHECKING:
    import torch.nn as nn

    from compress.context import Context

Handler = Callable[["nn.Module", Any, "Context"], "nn.Module"]


@dataclass(frozen=True)
class Recipe:
    name: str
    config_cls: type[RecipeConfig]
    handler: Handler
    summary: str


_RECIPES: dict[str, Recipe] = {}
_LOADED = False


def register_recipe(name: str, config_cls: type[RecipeConfig]) -> Callable[[Handler], Handler]:
    """Class decorator registering ``handler`` for ``config_cls`` under ``name``."""
    if not name or name != name.strip() or " " in name:
        raise ValueError(f"bad recipe name {name!r}")
    if not (isinstance(config_cls, type) and issubclass(config_cls, RecipeConfig)):
        raise TypeError(f"recipe {name!r}: config must subclass RecipeConfig")

    def wrap(handler: Handler) -> Handler:
        existing = _RECIPES.get(name)
        if existing is not None and existing.handler is not handler:
            if existing.handler.__qualname__ != handler.__qualname__:
                raise ValueError(f"recipe {name!r} is already registered")
        config_cls.RECIPE = name
        summary = (handler.__doc__ or config_cls.__doc__ or "").strip().splitlines()
        _RECIPES[name] = Recipe(name, config_cls, handler, summary[0] if summary else "")
        return handler

    return wrap


def _load_builtin() -> None:
    """Import every module in ``compress.recipes`` so they register themselves."""
    global _LOADED
    if _LOADED:
        return
    import compress.recipes as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"compress.recipes.{info.name}")
    _LOADED = True


def recipe_names() -> list[str]:
    _load_builtin()
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    """Look a recipe up by name; unknown names get the closest names and the list."""
    _load_builtin()
    try:
        return _RECIPES[name]
    except KeyError:
        raise did_you_mean("recipe", name, _RECIPES) from None


def recipe_for_config(config: RecipeConfig) -> Recipe:
    _load_builtin()
    for recipe in _RECIPES.values():
        if type(config) is recipe.config_cls:
            return recipe
    raise TypeError(f"no recipe is registered for config type {type(config).__name__}")


def make_config(name: str, **values: Any) -> RecipeConfig:
    """Build the config of recipe ``name`` from keyword values (validated)."""
    return get_recipe(name).config_cls.from_dict(values)
