"""The analysis drawn: weight histograms, the cumulative distribution of ``|w|`` and
per-block fractions, as PNG bytes; :func:`write_outputs` writes them beside the JSON."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compress.fileio import atomic_write_bytes, atomic_write_json
from eval.analyze.core import HIST_LABELS
from eval.analyze.readers import _component_order
from eval.analyze.stats import _tkey

#: the bulk panel of the histogram plot spans 1.25x this quantile of |w|.
BULK_QUANTILE = 0.999
PLOT_BINS = 400


def _figure(width: float, height: float):
    # deferred: matplotlib takes a second or two to import and only drawing needs it
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _count_text(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def _hist_arrays(report: dict[str, Any], kinds: Sequence[str]):
    """(edges, neg, pos) numpy arrays of the bit histogram summed over ``kinds``."""
    h = report["histograms"]
    size = h["hi"] - h["lo"] + 1
    neg, pos = np.zeros(size), np.zeros(size)
    for k in kinds:
        if k in h["kinds"]:
            neg += np.asarray(h["kinds"][k]["neg"], dtype=float)
            pos += np.asarray(h["kinds"][k]["pos"], dtype=float)
    return np.asarray(h["edges"], dtype=float), neg, pos


def cumulative_fraction(report: dict[str, Any], kinds: Sequence[str] = tuple(HIST_LABELS)):
    """(cutoffs c, fraction of weights with |w| < c), exact at the histogram's bin edges."""
    edges, neg, pos = _hist_arrays(report, kinds)
    cum = np.cumsum(neg + pos)
    if not cum.size or cum[-1] == 0:
        return np.array([]), np.array([])
    return edges[1:], cum / cum[-1]


def linear_histogram(report: dict[str, Any], kinds: Sequence[str], limit: float,
                     bins: int = PLOT_BINS):
    """(bin edges, counts) of w in ``bins`` linear bins over ``[-limit, limit]``.

    Each log-spaced bit-histogram bin (about 2 % wide) is spread uniformly over the
    linear bins it overlaps: exact totals, approximate shape inside a fine bin.
    """
    edges, neg, pos = _hist_arrays(report, kinds)
    # the signed CDF at the bin edges: negative bins from the far left, then positive
    xs = np.concatenate([-edges[::-1], edges])
    cdf_neg = np.concatenate([[0.0], np.cumsum(neg[::-1])])
    cdf = np.concatenate([cdf_neg, cdf_neg[-1] + np.concatenate([[0.0], np.cumsum(pos)])])
    grid = np.linspace(-limit, limit, bins + 1)
    return grid, np.diff(np.interp(grid, xs, cdf))


def plot_histogram(report: dict[str, Any]) -> bytes:
    """PNG: weight histograms (log count axis), bulk and full range, by kind."""
    fig = _figure(13, 4.8)
    axes = fig.subplots(1, 2)
    matrices = [k for k in HIST_LABELS if k != "other"]
    cut, frac = cumulative_fraction(report, matrices)
    if not len(cut):
        cut, frac = cumulative_fraction(report)
    bulk = float(cut[np.searchsorted(frac, BULK_QUANTILE)]) * 1.25 if len(cut) else 1.0
    full = float(report["histograms"]["edges"][-1])  # upper edge of the largest |w|'s bin
    for ax, limit, title in (
        (axes[0], min(bulk, full), f"central range: |w| up to 1.25x the {BULK_QUANTILE:.1%} "
         "quantile of the matrices' |w|"),
        (axes[1], full, "full range (up to the largest |w|)"),
    ):
        for kind, label in HIST_LABELS.items():
            grid, counts = linear_histogram(report, [kind], limit)
            if not counts.any():
                continue
            n = sum(sum(report["histograms"]["kinds"][kind][s]) for s in ("neg", "pos"))
            ax.stairs(np.where(counts > 0, counts, np.nan), grid,
                      label=f"{label} ({_count_text(n)} weights)", linewidth=1.2)
        ax.set_yscale("log")
        # below one weight per bin is only the uniform spreading of a wide log bin
        ax.set_ylim(bottom=0.5)
        ax.set_xlim(-limit * 1.03, limit * 1.03)
        ax.set_xlabel("weight value w")
        width = 2 * limit / PLOT_BINS
        ax.set_ylabel(f"number of weights per bin (log scale; bin width {width:.2g})")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8)
    fig.suptitle(f"{report['model']}: distribution of weight values "
                 f"({_count_text(report['overall']['params'])} parameters in the files)")
    return _png(fig)


def plot_cumulative(reports: Sequence[dict[str, Any]]) -> bytes:
    """PNG: fraction of weights with |w| < cutoff, every model; attention vs FFN."""
    fig = _figure(13, 5)
    ax_all, ax_split = fig.subplots(1, 2, sharey=True)
    colors = [f"C{i}" for i in range(10)]
    for i, rep in enumerate(reports):
        color = colors[i % len(colors)]
        xs, ys = cumulative_fraction(rep)
        ax_all.plot(xs, ys, color=color, label=rep["model"])
        for kinds, style, what in ((["attention"], "-", "attention"), (["ffn"], "--", "FFN")):
            xs, ys = cumulative_fraction(rep, kinds)
            if len(xs):
                ax_split.plot(xs, ys, style, color=color, label=f"{rep['model']}: {what}")
    for t in reports[0]["thresholds"] if reports else ():
        for ax in (ax_all, ax_split):
            ax.axvline(t, color="grey", linewidth=0.6, linestyle=":")
    for ax, title in ((ax_all, "all weights in the checkpoint"),
                      (ax_split, "attention (solid) vs FFN (dashed) linear weights")):
        ax.set_xscale("log")
        ax.set_xlim(1e-6, max(float(r["histograms"]["edges"][-1]) for r in reports))
        ax.set_xlabel("cutoff c on |w| (log scale; dotted lines: report thresholds)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    ax_all.set_ylabel("fraction of weights with |w| < c")
    fig.suptitle("How many weights are small: cumulative distribution of |w|")
    return _png(fig)


def plot_blocks(report: dict[str, Any]) -> bytes:
    """PNG: per-block statistics, one line per component type."""
    blocks = report["by_block"]
    thresholds = report["thresholds"]
    stats: list[tuple[str, Callable[[dict], float]]] = [
        (f"fraction with |w| > {t:g}", lambda s, t=t: s["frac_above"][_tkey(t)])
        for t in thresholds
    ]
    if any(b["all"]["zeros"] for b in blocks):
        stats.append(("fraction exactly zero", lambda s: s["frac_zero"]))
    stats += [
        ("standard deviation", lambda s: s["std"]),
        ("mean", lambda s: s["mean"]),
        ("skewness", lambda s: s["skewness"]),
        ("excess kurtosis", lambda s: s["excess_kurtosis"]),
        ("max |w|", lambda s: s["max_abs"]),
    ]
    cols = 3
    rows = math.ceil(len(stats) / cols)
    fig = _figure(5 * cols, 3.3 * rows + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    labels = [f"{b['role'][0].upper()}{b['index']}" for b in blocks]
    comps = [c for c in _component_order() if any(c in b["components"] for b in blocks)]
    from matplotlib import colormaps  # deferred: see _figure

    palette = colormaps["tab20"].colors
    handles = {}
    for ax, (title, get) in zip(axes, stats, strict=False):
        values = []
        for ci, comp in enumerate(comps):
            xs = [i for i, b in enumerate(blocks) if comp in b["components"]]
            ys = [get(blocks[i]["components"][comp]) for i in xs]
            values += [y for y in ys if y is not None]
            ys = [float("nan") if y is None else y for y in ys]
            style = "--" if comp in ("norm", "bias", "embedding", "other") else "-"
            (line,) = ax.plot(xs, ys, style, marker=".", markersize=3, linewidth=1,
                              color=palette[(2 * ci) % 20 + (ci >= 10)])
            handles.setdefault(comp, line)
        if title == "max |w|" and values and min(values) > 0:
            ax.set_yscale("log")
        elif title == "excess kurtosis" and values and max(map(abs, values)) > 50:
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(title, fontsize=10)
        step = max(1, len(labels) // 12)
        ax.set_xticks(range(0, len(labels), step), labels[::step], fontsize=7)
        ax.grid(alpha=0.3)
        roles = [b["role"] for b in blocks]
        if "encoder" in roles and "decoder" in roles:
            ax.axvline(roles.index("decoder") - 0.5, color="grey", linewidth=0.8)
    for ax in axes[len(stats):]:
        ax.set_visible(False)
    fig.supxlabel("transformer block (E = encoder, D = decoder; index within its stack)")
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=8,
               title="component")
    fig.suptitle(f"{report['model']}: weight statistics per block and component")
    return _png(fig)


def write_outputs(reports: Sequence[dict[str, Any]], out: Path, plots: bool = True
                  ) -> list[Path]:
    """Write ``<slug>.json`` (and plots) for each report, plus ``cumulative.png``."""
    written = []
    for rep in reports:
        s = rep["slug"]
        written.append(atomic_write_json(out / f"{s}.json", rep))
        if plots:
            written.append(atomic_write_bytes(out / f"{s}_hist.png", plot_histogram(rep)))
            if rep["by_block"]:
                written.append(atomic_write_bytes(out / f"{s}_blocks.png", plot_blocks(rep)))
    if plots and reports:
        written.append(atomic_write_bytes(out / "cumulative.png", plot_cumulative(reports)))
    return written
