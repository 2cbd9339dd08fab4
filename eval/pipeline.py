"""Pipeline steps as text and as records: the one ``RECIPE key=value ...`` parser.

``eval.run --then "rtn bits=4 group_size=64"`` and the string steps of a sweep file
(``pipeline = ["rtn bits=4"]``) are parsed by :func:`parse_step_text`; values are JSON
where they parse as JSON (``4``, ``0.5``, ``true``, ``[1, 2]``) and strings otherwise,
and ``-`` in a key is read as ``_``. :func:`step_record` is how a step is written into
a report.

>>> parse_step_text("rtn bits=4 scheme=asym")
('rtn', {'bits': 4, 'scheme': 'asym'})
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from compress.config import RecipeConfig
from compress.errors import UserError
from compress.registry import get_recipe


def parse_step_text(text: str, where: str = "pipeline step") -> tuple[str, dict[str, Any]]:
    """``"rtn bits=4"`` -> ``("rtn", {"bits": 4})``; bad text is a one-line UserError."""
    words = text.split()
    if not words:
        raise UserError(f"{where}: empty pipeline step; write it as 'RECIPE key=value ...'")
    params: dict[str, Any] = {}
    for word in words[1:]:
        if "=" not in word:
            raise UserError(f"{where}: expected key=value in {text!r}, got {word!r}")
        key, raw = word.split("=", 1)
        try:
            params[key.replace("-", "_")] = json.loads(raw)
        except ValueError:
            params[key.replace("-", "_")] = raw
    return words[0], params


def parse_step(text: str) -> RecipeConfig:
    """``"rtn bits=4 group_size=128"`` -> the validated config of recipe ``rtn``."""
    name, params = parse_step_text(text)
    return get_recipe(name).config_cls.from_dict(params)


def read_recorded(recipe: str, values: dict[str, Any]) -> tuple[RecipeConfig, list[str]]:
    """A config a report recorded, read by today's version of its recipe, and what that
    changed: options the recipe no longer has are left out (per-recipe calibration sizes,
    now the shared set of :mod:`compress.calibration`) and options the recorded version did
    not have take today's defaults. Invalid values are a UserError as usual."""
    cls = get_recipe(recipe).config_cls
    values = dict(values)
    values.pop("recipe", None)
    version = values.pop("version", cls.VERSION)
    names = {f.name for f in dataclasses.fields(cls)}
    notes = []
    if version != cls.VERSION:
        new = sorted(names - set(values))
        notes.append(f"{recipe} config version {version} read by version {cls.VERSION}"
                     + (f"; options it did not have take today's defaults: {', '.join(new)}"
                        if new else ""))
    dropped = sorted(set(values) - names)
    for k in dropped:
        values.pop(k)
    if dropped:
        notes.append(f"{recipe}: options no longer read left out (calibration now comes from "
                     f"the shared set): {', '.join(dropped)}")
    return cls.from_dict(values), notes


def step_record(config: RecipeConfig) -> dict[str, Any]:
    """A step as reports hold it: recipe, its full config and the config's defaults."""
    defaults = type(config)().to_dict() if _has_all_defaults(type(config)) else {}
    return {"recipe": config.RECIPE, "config": config.to_dict(), "defaults": defaults}


def _has_all_defaults(cls: type[RecipeConfig]) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def report_label(configs: list[RecipeConfig]) -> str:
    """``wanda+rtn``: the recipes of a pipeline, for progress lines."""
    return "+".join(c.RECIPE for c in configs)
