"""Quality kept against cost, one panel per budget kind: the picture of the equal-budget table.

``<model>_pareto.png`` has one panel per cost kind of :data:`eval.budget.COSTS` that any
run of the model measured (size on disk, packed weight bytes, nonzeros, the
same-process latency ratio). Each panel plots, for every successful run:

* **x = cost / dense**, the ratio :func:`eval.budget.cost_ratio` computes for the
  budget table, on a fixed axis ``[0, 1.1]``. A run costing more than 1.1x dense is
  drawn at the right edge as a ``>`` marker and named in the panel's note, so one slow
  run no longer stretches the axis for all the others;
* **y = quality kept**, the fraction of the dense model's primary metric the run keeps
  (``value / dense`` where higher is better, ``dense / value`` for perplexity), with its
  95% interval as an error bar where the report stores one, on a fixed axis
  ``[0, 1.05]`` (a run better than dense is clipped at the top edge, marked ``^``);
* **runs that collapsed** (< 10% kept) go into a grey strip at the bottom instead of
  setting the scale: a run that destroyed the model is a fact, not a range.

Each family's front (its runs no other run of the same family beats on both cost and
quality) is a step line in the family's colour, so the panel reads as "which family
keeps most at each cost". Labels go to front runs only and are placed greedily where
they overlap no other label and no marker (:func:`place_labels`); a label with no free
place is left out and counted in the panel's note rather than printed over another.

>>> kept(20.0, {"value": 25.0, "higher_is_better": False})
0.8
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.traits import BASELINE, FAMILIES
from eval.budget import COSTS, comparable_runs, cost_ratio, family_of, metric, primary_metric
from eval.plotbase import _pyplot, _save, model_slug, pareto_front, style_for
from eval.report import runs_by_model

log = logging.getLogger(__name__)

X_MAX = 1.1
Y_MAX = 1.05
COLLAPSED = 0.10  # below this fraction of dense quality a run is "collapsed"
STRIP = 0.06  # height of the collapsed strip at the bottom of each panel
PANEL_TITLES = {
    "size": "size on disk / dense",
    "packed": "packed weight bytes / dense",
    "nonzeros": "nonzero parameters / dense",
    "latency": "latency / dense (same process, 1 x 128)",
}
#: label offsets tried in order (points): right-up, right-down, left-up, left-down, ...
OFFSETS = ((5, 4), (5, -11), (-5, 4), (-5, -11), (5, 14), (-5, 14), (5, -21), (-5, -21),
           (12, -3), (-12, -3))


def kept(dense_value: float, m: dict[str, Any], value: float | None = None) -> float | None:
    """Fraction of the dense metric a run keeps (``value`` overrides ``m['value']``)."""
    v = float(m["value"]) if value is None else float(value)
    if m.get("higher_is_better"):
        return v / dense_value if dense_value else None
    return dense_value / v if v > 0 else None


@dataclass
class Point:
    x: float
    y: float
    lo: float | None
    hi: float | None
    family: str
    label: str
    clipped_x: bool = False
    clipped_y: bool = False
    collapsed: bool = False


def panel_points(runs: list[dict[str, Any]], base: dict[str, Any], kind: str,
                 name: str) -> list[Point]:
    """Every run with this cost and the primary metric, as plotted (axes clipped)."""
    base_m = metric(base, name)
    if base_m is None:
        return []
    dense = float(base_m["value"])
    out = []
    for r in runs:
        x = cost_ratio(r, base, kind)
        m = metric(r, name)
        if x is None or m is None:
            continue
        y = kept(dense, m)
        if y is None:
            continue
        iv = m.get("interval") or {}
        lo = kept(dense, m, iv["low"]) if "low" in iv else None
        hi = kept(dense, m, iv["high"]) if "high" in iv else None
        if lo is not None and hi is not None and lo > hi:
            lo, hi = hi, lo
        p = Point(min(x, X_MAX), y, lo, hi, family_of(r), r.get("label", "?"),
                  clipped_x=x > X_MAX)
        if y < COLLAPSED:
            p.collapsed, p.y, p.lo, p.hi = True, STRIP / 2, None, None
        elif y > Y_MAX:
            p.clipped_y, p.y = True, Y_MAX
        out.append(p)
    return out


def family_front(points: Sequence[Point]) -> list[Point]:
    """The points of one family no other point of it beats on both axes, by cost."""
    live = [p for p in points if not p.collapsed]
    idx = pareto_front([(p.x, p.y) for p in live], minimize_x=True, maximize_y=True)
    return [live[i] for i in idx]


def _overlaps(box: Any, boxes: Sequence[Any]) -> bool:
    return any(box.overlaps(b) for b in boxes)


def place_labels(ax: Any, fig: Any, items: Sequence[tuple[Point, str]],
                 avoid: Sequence[Point]) -> tuple[list[Any], int]:
    """Annotate each ``(point, colour)`` at the first offset whose text box overlaps no
    placed label, no marker and stays inside the axes; return the placed boxes (display
    coordinates) and how many labels found no place."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    marks = []
    for p in avoid:
        cx, cy = ax.transData.transform((p.x, p.y))
        marks.append(Bbox.from_extents(cx - 3, cy - 3, cx + 3, cy + 3))
    placed: list[Any] = []
    dropped = 0
    for p, colour in items:
        for dx, dy in OFFSETS:
            text = ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(dx, dy),
                               fontsize=6.5, color=colour, ha="left" if dx >= 0 else "right",
                               zorder=5)
            box = text.get_window_extent(renderer)
            inside = (box.x0 >= axes_box.x0 and box.x1 <= axes_box.x1
                      and box.y0 >= axes_box.y0 and box.y1 <= axes_box.y1)
            if inside and not _overlaps(box, placed) and not _overlaps(box, marks):
                placed.append(box)
                break
            text.remove()
        else:
            dropped += 1
    return placed, dropped


def draw_panel(ax: Any, points: list[Point], kind: str, name: str,
               styles: dict[str, tuple[str, str]]) -> list[tuple[Point, str]]:
    """One budget kind: points, family fronts, collapsed strip; returns the labels to
    place (after the figure's layout is final, see :func:`finish_panel`)."""
    ax.set_xlim(0, X_MAX + 0.02)
    ax.set_ylim(0, Y_MAX + 0.02)
    ax.axhspan(0, STRIP, color="0.88", zorder=0)
    ax.text(0.01, STRIP / 2, "collapsed (< 10% kept)", fontsize=6, va="center", color="0.35",
            transform=ax.get_yaxis_transform())
    ax.axhline(1.0, color="0.6", linewidth=0.8, linestyle=":")
    ax.axvline(1.0, color="0.6", linewidth=0.8, linestyle=":")
    labels: list[tuple[Point, str]] = []
    for family in _ordered({p.family for p in points}):
        colour, marker = styles[family]
        fam = [p for p in points if p.family == family]
        for p in fam:
            mk = ">" if p.clipped_x else "^" if p.clipped_y else marker
            if p.lo is not None and p.hi is not None:
                ax.errorbar([p.x], [p.y], yerr=[[max(p.y - min(p.lo, Y_MAX), 0)],
                                                [max(min(p.hi, Y_MAX) - p.y, 0)]],
                            fmt="none", ecolor=colour, elinewidth=0.8, alpha=0.6, zorder=2)
            ax.scatter([p.x], [p.y], color=colour, marker=mk, s=110 if family == BASELINE
                       else 34, zorder=3, alpha=0.9)
        front = family_front(fam)
        if len(front) > 1:
            ax.step([p.x for p in front], [p.y for p in front], where="post", color=colour,
                    linewidth=1.1, alpha=0.8, zorder=2)
        labels += [(p, colour) for p in front if family != BASELINE]
    ax.set_xlabel(PANEL_TITLES.get(kind, f"{kind} / dense") + " (lower is better)")
    ax.set_ylabel(f"{name} kept (fraction of dense)")
    ax.grid(True, alpha=0.25)
    ax.set_title(f"quality kept against {kind}", fontsize=10)
    return labels


#: characters of a panel's note line (8-point text across one panel of the figure)
NOTE_WIDTH = 95


def finish_panel(ax: Any, fig: Any, points: list[Point],
                 labels: list[tuple[Point, str]]) -> None:
    """Front labels where they overlap nothing, and a note naming clipped runs."""
    _, dropped = place_labels(ax, fig, labels, points)
    notes = [f"> {X_MAX:g}x: " + ", ".join(p.label for p in points if p.clipped_x)] \
        if any(p.clipped_x for p in points) else []
    if dropped:
        notes.append(f"{dropped} front label(s) left out (no free place)")
    if notes:  # under the title, outside the plotting area: it hides no point or label;
        # wrapped to the panel's width so that a long list cannot run into the next panel
        text = "\n".join(textwrap.wrap("; ".join(notes), NOTE_WIDTH))
        ax.set_title(ax.get_title() + "\n" + text, fontsize=8)


def _ordered(families: set[str]) -> list[str]:
    order = [BASELINE, *FAMILIES]
    return sorted(families, key=lambda f: (order.index(f) if f in order else len(order), f))


def plot_fronts(reports: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """``<model>_pareto.png`` per model: one panel per cost kind measured."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    written = []
    for model, runs in runs_by_model(reports).items():
        base, runs = comparable_runs(runs)
        name = primary_metric(base) if base is not None else None
        if base is None or name is None or metric(base, name) is None:
            continue
        panels = {k: panel_points(runs, base, k, name) for k in COSTS}
        panels = {k: pts for k, pts in panels.items() if pts}
        if not panels:
            continue
        cols = min(2, len(panels))
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.8 * rows), squeeze=False)
        extra: dict[str, tuple[str, str]] = {}
        styles = {f: style_for(f, extra) for pts in panels.values() for f in {p.family
                                                                            for p in pts}}
        drawn = [(ax, pts, draw_panel(ax, pts, kind, name, styles))
                 for ax, (kind, pts) in zip(axes.flat, panels.items(), strict=False)]
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        quick = " [quick]" if base.get("quick") else ""
        fig.suptitle(f"{model}{quick}: quality kept against cost, each family's front "
                     f"(dense = 1, 1)", fontsize=11)
        fig.legend(handles=[Line2D([], [], color=styles[f][0], marker=styles[f][1],
                                   linestyle="-" if f != BASELINE else "", label=f)
                            for f in _ordered(set(styles))],
                   loc="lower center", ncol=len(styles), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.04, 1, 0.96))
        fig.canvas.draw()
        for ax, pts, labels in drawn:
            finish_panel(ax, fig, pts, labels)
        written.append(_save(fig, Path(out_dir) / f"{model_slug(model)}_pareto.png"))
    return written
