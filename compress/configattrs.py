"""A config's attributes by name, aliases included (no suite imports: the arch package
and :mod:`compress.models` both read configs through it)."""

from __future__ import annotations

from typing import Any


def attrs_of(config: Any) -> dict[str, Any]:
    """Every attribute a config holds (its dict, plus the names its attribute map adds)."""
    out = {}
    try:
        out.update({k: v for k, v in vars(config).items() if not k.startswith("_")})
    except TypeError:
        pass
    for alias in getattr(config, "attribute_map", {}) or {}:
        try:
            out[alias] = getattr(config, alias)
        except AttributeError:
            continue
    return out
