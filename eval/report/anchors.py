"""Published results beside ours: the anchors of ``anchors.toml``, loaded and matched.

The numbers live in a data file shipped with the package (``eval/report/anchors.toml``),
each with its source; :func:`load_anchors` reads them and :func:`matches` says whether
one of our runs' configs is the setting an anchor reports.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

ANCHORS_FILE = "anchors.toml"
#: an anchor's ``pattern = "unstructured"`` matches any config without an N:M pattern.
UNSTRUCTURED = "unstructured"


@dataclass(frozen=True)
class Anchor:
    """A published result: dense and compressed value of one metric, with its source."""

    recipe: str
    match: dict[str, Any]  # config fields our run must have
    task: str
    setting: str
    model: str
    metric: str
    dense: float
    compressed: float
    higher_is_better: bool
    source: str



@cache
def load_anchors() -> tuple[Anchor, ...]:
    """The anchors of ``anchors.toml``, in file order."""
    text = resources.files("eval.report").joinpath(ANCHORS_FILE).read_text(encoding="utf-8")
    return tuple(Anchor(**entry) for entry in tomllib.loads(text)["anchor"])


def matches(config: dict[str, Any], match: dict[str, Any]) -> bool:
    """True when ``config`` has every field of ``match`` (floats within 1e-9)."""
    for key, want in match.items():
        have = config.get(key)
        if want is None or want == UNSTRUCTURED:
            if have not in (None, "", UNSTRUCTURED):
                return False
        elif isinstance(want, float):
            if not isinstance(have, (int, float)) or abs(have - want) > 1e-9:
                return False
        elif have != want:
            return False
    return True
