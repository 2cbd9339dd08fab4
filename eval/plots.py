"""Plots of the comparison, drawn from the JSON reports (matplotlib, PNG).

* ``<model>_sparsity.png``: quality against sparsity, one line per pruning method
  (N:M patterns as separate markers), the dense model at 0 %, one panel per metric;
  perplexity on a log scale where it explodes.
* ``<model>_pareto.png``: quality kept (fraction of dense, with its interval) against
  cost / dense, one panel per budget kind, each family's front in its colour, collapsed
  runs in a strip at the bottom, labels that do not overlap (:mod:`eval.frontplot`).

Every figure carries its title, axis units and a legend, so it reads without the
code. :func:`pareto_front` is the pure function behind the front.

    python -m eval.plots reports/ --out reports/plots/
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from compress.errors import run_main
from compress.registry import get_recipe
from eval.budget import (
    comparable_runs,
    metric,
    primary_metric,
    recipe_family,
)
from eval.frontplot import plot_fronts
from eval.plotbase import (  # noqa: F401 - re-exported
    FAMILY_STYLE,
    _pyplot,
    _save,
    model_slug,
    pareto_front,
    style_for,
)
from eval.report import read_reports, runs_by_model

log = logging.getLogger(__name__)

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


def plot_pareto(reports: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Quality kept against each cost / dense, per model (:mod:`eval.frontplot`)."""
    return plot_fronts(reports, out_dir)


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
