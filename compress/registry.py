"""The recipe registry: one name -> everything the suite knows about that recipe.

Recipes register themselves at import time, and the registration carries every fact
about the recipe (:mod:`compress.traits`): its config class, technique family, the
knob(s) the budget search may turn, traits for the pipeline checks, the on-disk
formats it introduces and its memory estimate::

    @register_recipe("identity", IdentityConfig, family="baseline", knobs=(),
                     traits=Traits(), formats=(), memory=config_memory)
    def identity(model, config, context):
        return model

The sweep, the budget search and the report read these facts from here; a recipe
that leaves one out fails ``tests/test_registry.py``, and asking for a fact it did not
declare (:meth:`Recipe.fact`) is a one-line error, never a silent default.
``get_recipe("identiy")`` raises a one-line error with the closest names and the list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import compress.recipes
from compress.config import RecipeConfig
from compress.errors import UserError, did_you_mean
from compress.traits import Knob, MemoryEstimate, Traits

if TYPE_CHECKING:
    import torch.nn as nn

    from compress.context import Context

Handler = Callable[["nn.Module", Any, "Context"], "nn.Module"]

#: the facts a registration declares besides the config (see :func:`register_recipe`).
FACTS = ("family", "knobs", "traits", "formats", "memory")


@dataclass(frozen=True)
class Recipe:
    name: str
    config_cls: type[RecipeConfig]
    handler: Handler
    summary: str
    #: technique family ("pruning", "quantization", ...; "baseline" for identity).
    family: str | None = None
    #: fields the equal-budget search may turn (``()``: none).
    knobs: tuple[Knob, ...] | None = None
    traits: Traits | None = None
    #: names of the on-disk formats (:mod:`compress.saving`) the recipe introduces.
    formats: tuple[str, ...] | None = None
    #: extra bytes the recipe needs beyond the model, checked before it runs.
    memory: MemoryEstimate | None = None

    @property
    def missing(self) -> list[str]:
        """The facts this registration did not declare."""
        return [f for f in FACTS if getattr(self, f) is None]

    def fact(self, name: str) -> Any:
        """A declared fact; a one-line error naming the recipe when it was left out."""
        value = getattr(self, name)
        if value is None:
            raise UserError(
                f"recipe {self.name!r} declares no {name}; add {name}=... to its "
                f"@register_recipe (see recipes/README.md, 'Adding a recipe')"
            )
        return value

    def memory_bytes(self, config: RecipeConfig, param_bytes: int, hidden: int) -> int:
        """The declared estimate, else the config's own (``RecipeConfig.extra_memory_bytes``).

        The contract check of :func:`compress.compress` runs for every recipe, so an
        undeclared estimate falls back to the documented config hook rather than zero.
        """
        if self.memory is not None:
            return int(self.memory(config, param_bytes, hidden))
        return config.extra_memory_bytes(param_bytes, hidden)


_RECIPES: dict[str, Recipe] = {}
_LOADED = False


def register_recipe(
    name: str,
    config_cls: type[RecipeConfig],
    *,
    family: str | None = None,
    knobs: tuple[Knob, ...] | None = None,
    traits: Traits | None = None,
    formats: tuple[str, ...] | None = None,
    memory: MemoryEstimate | None = None,
) -> Callable[[Handler], Handler]:
    """Decorator registering ``handler`` for ``config_cls`` under ``name`` with its facts.

    Every recipe of the suite declares all of them (``tests/test_registry.py``).
    """
    if not name or name != name.strip() or " " in name:
        raise ValueError(f"bad recipe name {name!r}")
    if not (isinstance(config_cls, type) and issubclass(config_cls, RecipeConfig)):
        raise TypeError(f"recipe {name!r}: config must subclass RecipeConfig")
    if family is not None and (not isinstance(family, str) or not family.strip()):
        raise TypeError(f"recipe {name!r}: family must be a non-empty string")
    if knobs is not None:
        knobs = tuple(knobs)
        if not all(isinstance(k, Knob) for k in knobs):
            raise TypeError(f"recipe {name!r}: knobs must be Knob instances")
        fields = set(config_cls.__dataclass_fields__)
        for k in knobs:
            if k.field not in fields or any(f not in fields for f in k.fixed_by):
                raise ValueError(f"recipe {name!r}: knob {k.field!r} names a field that "
                                 f"{config_cls.__name__} does not have")
    if traits is not None and not isinstance(traits, Traits):
        raise TypeError(f"recipe {name!r}: traits must be a Traits instance")
    if formats is not None:
        formats = tuple(formats)
    if memory is not None and not callable(memory):
        raise TypeError(f"recipe {name!r}: memory must be a callable (config, param_bytes, "
                        "hidden) -> bytes")

    def wrap(handler: Handler) -> Handler:
        existing = _RECIPES.get(name)
        if existing is not None and existing.handler is not handler:
            if existing.handler.__qualname__ != handler.__qualname__:
                raise ValueError(f"recipe {name!r} is already registered")
        config_cls.RECIPE = name
        summary = (handler.__doc__ or config_cls.__doc__ or "").strip().splitlines()
        _RECIPES[name] = Recipe(
            name, config_cls, handler, summary[0] if summary else "",
            family=family, knobs=knobs, traits=traits, formats=formats, memory=memory,
        )
        return handler

    return wrap


def _load_builtin() -> None:
    """Import every module in ``compress.recipes`` so they register themselves.

    Deferred to the first look-up (not at import) on purpose: the recipe modules import
    this one to register, and importing them all (torch, transformers, peft, onnx...)
    costs seconds that ``import compress`` should not.
    """
    global _LOADED
    if _LOADED:
        return
    for info in pkgutil.iter_modules(compress.recipes.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"compress.recipes.{info.name}")
    _LOADED = True


def recipe_names() -> list[str]:
    _load_builtin()
    return sorted(_RECIPES)


def all_recipes() -> list[Recipe]:
    """Every registered recipe, by name."""
    _load_builtin()
    return [_RECIPES[n] for n in sorted(_RECIPES)]


def get_recipe(name: str) -> Recipe:
    """Look a recipe up by name; unknown names get the closest names and the list."""
    _load_builtin()
    try:
        return _RECIPES[name]
    except KeyError:
        raise did_you_mean("recipe", name, _RECIPES) from None


def find_recipe(name: str) -> Recipe | None:
    """The recipe registered as ``name``, or None (reports may name recipes this
    checkout does not have)."""
    _load_builtin()
    return _RECIPES.get(name)


def recipe_for_config(config: RecipeConfig) -> Recipe:
    _load_builtin()
    for recipe in _RECIPES.values():
        if type(config) is recipe.config_cls:
            return recipe
    raise TypeError(f"no recipe is registered for config type {type(config).__name__}")


def make_config(name: str, **values: Any) -> RecipeConfig:
    """Build the config of recipe ``name`` from keyword values (validated)."""
    return get_recipe(name).config_cls.from_dict(values)
