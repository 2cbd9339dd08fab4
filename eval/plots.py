"""Plots of the comparison, drawn from the JSON reports (matplotlib, PNG).

* ``<model>_sparsity.png``: quality against sparsity, one line per pruning method
  (N:M patterns as separate markers), the dense model at 0 %, one panel per metric;
  perplexity on a log scale where it explodes.
* ``<model>_pareto.png``: quality against size on disk and against latency (batch 1 x
  128 tokens), every successful run of every family, the dense model as a star, and
  the Pareto front (the runs no other run beats on both cost and quality) drawn as a
  step line with its runs labelled.

Every figure carries its title, axis units and a legend, so it reads without the
code. :func:`pareto_front` is the pure function behind the front.

    python -m eval.plots reports/ --out reports/plots/
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compress.errors import run_main
from compress.fileio import atomic_write_bytes
from compress.registry import get_recipe
from compress.traits import BASELINE, FAMILIES
from eval.budget import (
    COSTS,
    comparable_runs,
    family_of,
    metric,
    primary_metric,
    recipe_family,
)
from eval.report import read_reports, runs_by_model, slug

log = logging.getLogger(__name__)

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


def sparsity_point(report: dict[str, Any]) -> tuple[str, float] | None:
    """(line name, sparsity) of a single-step pruning run, or None.

    The line is the recipe, plus the pattern for N:M runs (``wanda 2:4``, at
    sparsity 1 - N/M); the sparsity is the configured one (for ``structured``, the
    fraction of FFN neurons, or of heads, removed).
    """
    pipeline = report.get("pipeline", [])
    if len(pipeline) != 1 or recipe_family(pipeline[0].get("recipe", "?")) != "pruning":
        return None
    recipe = pipeline[0]["recipe"]
    config = pipeline[0].get("config", {})
    if get_recipe(recipe).fact("traits").changes_shapes:
        ffn, heads = config.get("ffn_ratio") or 0.0, config.get("heads_ratio") or 0.0
        if ffn and not heads:
            return "structured (FFN neurons)", float(ffn)
        if heads and not ffn:
            return "structured (heads)", float(heads)
        return None
    pattern = config.get("pattern")
    if isinstance(pattern, str) and ":" in pattern:
        try:
            n, m = (int(x) for x in pattern.split(":"))
        except ValueError:
            return None
        return f"{recipe} {pattern}", 1 - n / m
    sparsity = config.get("sparsity")
    if not isinstance(sparsity, (int, float)):
        return None
    return recipe, float(sparsity)


def _metric_names(runs: list[dict[str, Any]], base: dict[str, Any]) -> list[str]:
    first = primary_metric(base)
    names = [m["name"] for m in base.get("metrics", [])]
    return ([first] if first in names else []) + [n for n in names if n != first]


def _is_ppl(name: str) -> bool:
    return name.startswith("ppl")


def _axis_label(m: dict[str, Any]) -> str:
    return f"{m['name']} ({'higher' if m['higher_is_better'] else 'lower'} is better)"


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


def plot_sparsity(reports: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Quality against sparsity per pruning method, one figure per model with pruning runs."""
    out_dir = Path(out_dir)
    written = []
    for model, runs in runs_by_model(reports).items():
        base, runs = comparable_runs(runs)
        if base is None:
            continue
        lines: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        for r in runs:
            point = sparsity_point(r)
            if point is not None:
                lines.setdefault(point[0], []).append((point[1], r))
        if not lines:
            continue
        names = _metric_names(runs, base)
        plt = _pyplot()
        fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            base_m = metric(base, name)
            values = [base_m["value"]]
            for i, (line, pts) in enumerate(sorted(lines.items())):
                pts = sorted(pts, key=lambda p: p[0])
                xs = [0.0] + [p[0] * 100 for p in pts]
                ys = [base_m["value"]]
                for _, r in pts:
                    m = metric(r, name)
                    ys.append(m["value"] if m else float("nan"))
                values += [y for y in ys if y == y]
                colour = f"C{i}"
                if ":" in line:  # an N:M pattern: one point, a marker, no line
                    ax.plot(
                        xs[1:],
                        ys[1:],
                        linestyle="none",
                        marker="X",
                        markersize=9,
                        color=colour,
                        label=line,
                    )
                else:
                    ax.plot(xs, ys, marker="o", color=colour, label=line)
            ax.axhline(base_m["value"], color="black", linestyle=":", linewidth=1, label="dense")
            positive = [v for v in values if v > 0]
            if _is_ppl(name) and positive and max(positive) / min(positive) > 3:
                ax.set_yscale("log")
            ax.set_xlabel("sparsity (% of weights set to zero)")
            ax.set_ylabel(_axis_label(base_m))
            ax.set_xlim(-2, 102)
            ax.grid(True, alpha=0.3)
            ax.set_title(name)
        axes[0][0].legend(fontsize=8)
        quick = " [quick]" if base.get("quick") else ""
        fig.suptitle(f"{model}{quick}: quality against sparsity, by pruning method")
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{model_slug(model)}_sparsity.png"))
    return written


PARETO_AXES = (
    ("size", "size on disk (MB)", 1e-6),
    ("latency", "latency / dense, batch 1 x 128 (same-process ratio)", 1.0),
)


def plot_pareto(reports: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Quality against size on disk and against latency, Pareto front drawn, per model."""
    out_dir = Path(out_dir)
    written = []
    for model, runs in runs_by_model(reports).items():
        base, runs = comparable_runs(runs)
        if base is None:
            continue
        name = primary_metric(base)
        base_m = metric(base, name) if name else None
        if base_m is None:
            continue
        plt = _pyplot()
        fig, axes = plt.subplots(1, len(PARETO_AXES), figsize=(13, 5.2), squeeze=False)
        extra: dict[str, tuple[str, str]] = {}
        any_points = False
        for ax, axis in zip(axes[0], PARETO_AXES, strict=True):
            any_points |= _pareto_panel(ax, runs, axis, name, base_m, extra)
        if not any_points:
            plt.close(fig)
            continue
        quick = " [quick]" if base.get("quick") else ""
        fig.suptitle(
            f"{model}{quick}: quality against cost, every run (front: no run is better on both)"
        )
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{model_slug(model)}_pareto.png"))
    return written


def _pareto_panel(
    ax: Any,
    runs: list[dict[str, Any]],
    axis: tuple[str, str, float],
    name: str,
    base_m: dict[str, Any],
    extra: dict[str, tuple[str, str]],
) -> bool:
    """One panel: every run's quality against one cost, the front drawn; False if empty."""
    kind, xlabel, scale = axis
    pts: list[tuple[float, float, dict[str, Any]]] = []
    for r in runs:
        x = COSTS[kind].get(r)
        m = metric(r, name)
        if x is None or m is None:
            continue
        pts.append((x * scale, float(m["value"]), r))
    if not pts:
        ax.text(0.5, 0.5, f"no run with {kind} measured", ha="center", transform=ax.transAxes)
        return False
    order = [BASELINE, *FAMILIES]
    pts.sort(
        key=lambda p: (
            order.index(family_of(p[2])) if family_of(p[2]) in order else len(order),
            family_of(p[2]),
        )
    )
    seen: set[str] = set()
    for x, y, r in pts:
        family = family_of(r)
        colour, marker = style_for(family, extra)
        size = 160 if family == BASELINE else 45
        ax.scatter([x], [y], color=colour, marker=marker, s=size, zorder=3,
                   label=family if family not in seen else None, alpha=0.85)
        seen.add(family)
    front = pareto_front([(x, y) for x, y, _ in pts], minimize_x=True,
                         maximize_y=bool(base_m["higher_is_better"]))
    fx = [pts[i][0] for i in front]
    fy = [pts[i][1] for i in front]
    ax.step(fx, fy, where="post", color="crimson", linewidth=1.3, zorder=2, label="Pareto front")
    for i in front:
        x, y, r = pts[i]
        ax.annotate(r.get("label", "?"), (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize=7, color="crimson")
    ys = [p[1] for p in pts if p[1] > 0]
    if _is_ppl(name) and ys and max(ys) / min(ys) > 3:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel + " (lower is better)")
    ax.set_ylabel(_axis_label(base_m))
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{name} against {kind}")
    ax.legend(fontsize=8)
    return True


def make_plots(reports: list[dict[str, Any]], out_dir: str | Path) -> dict[str, list[Path]]:
    """Every plot for ``reports`` in ``out_dir``: {"sparsity": [...], "pareto": [...]}."""
    return {"sparsity": plot_sparsity(reports, out_dir), "pareto": plot_pareto(reports, out_dir)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.plots", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("reports", type=Path, nargs="?", default=Path("reports"))
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the PNGs (default: REPORTS/plots)"
    )
    args = parser.parse_args(argv)
    reports = read_reports(args.reports, warn=lambda w: print(f"warning: {w}", file=sys.stderr))
    written = make_plots(reports, args.out or args.reports / "plots")
    for paths in written.values():
        for p in paths:
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
