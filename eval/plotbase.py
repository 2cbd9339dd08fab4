"""What every plot of the suite shares: family colours, the Pareto front, saving a PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from compress.fileio import atomic_write_bytes
from eval.report import slug

FAMILY_STYLE: dict[str, tuple[str, str]] = {  # family -> (colour, marker)
    "baseline": ("black", "*"),
    "pruning": ("tab:blue", "o"),
    "quantization": ("tab:orange", "s"),
    "distillation": ("tab:green", "^"),
    "moefication": ("tab:purple", "D"),
}
_EXTRA_STYLES = [
    ("tab:red", "P"),
    ("tab:brown", "X"),
    ("tab:pink", "v"),
    ("tab:olive", "<"),
    ("tab:cyan", ">"),
    ("tab:gray", "h"),
]


def pareto_front(
    points: Sequence[tuple[float, float]], minimize_x: bool = True, maximize_y: bool = True
) -> list[int]:
    """Indices of the points no other point dominates, sorted by x (best x first).

    A point dominates another when it is at least as good on both axes and better
    on one. Equal points are all kept.

    >>> pareto_front([(1, 1), (2, 3), (3, 2), (4, 4)])
    [0, 1, 3]
    >>> pareto_front([(1, 5), (2, 3)], maximize_y=False)
    [1]
    """
    sx = 1.0 if minimize_x else -1.0
    sy = -1.0 if maximize_y else 1.0
    # minimise both keys after the sign flip
    keyed = [(sx * x, sy * y) for x, y in points]
    front = []
    for i, (x, y) in enumerate(keyed):
        dominated = any(
            (ox <= x and oy <= y) and (ox < x or oy < y)
            for j, (ox, oy) in enumerate(keyed)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (keyed[i][0], keyed[i][1]))


def model_slug(model: str) -> str:
    return slug(model.replace("/", "--"))


def style_for(family: str, extra: dict[str, tuple[str, str]]) -> tuple[str, str]:
    if family in FAMILY_STYLE:
        return FAMILY_STYLE[family]
    if family not in extra:
        extra[family] = _EXTRA_STYLES[len(extra) % len(_EXTRA_STYLES)]
    return extra[family]


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _pyplot():
    # deferred: matplotlib takes a second or two to import and only drawing needs it;
    # the Agg backend must be chosen before pyplot is first imported
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
