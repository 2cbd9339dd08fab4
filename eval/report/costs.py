"""Report sections 7-10: size and runtime of every run, the Pareto plots, the challenges
met (memory, speed, encoder-decoder support, what did not work), how to reproduce."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from compress.registry import find_recipe
from eval.budget import comparable_runs, cost_ratio, family_of, metric, primary_metric
from eval.compare import render
from eval.report.common import SECTIONS, Writer, fmt_mb, fmt_ratio, task_of_runs
from eval.report.schema import dig, fmt_value


def _vs_dense(report: dict[str, Any]) -> str:
    """The run's same-process latency ratio to dense at 1 x 128 with its 95% interval."""
    vs = dig(report, "profile", "latency_vs_dense", "1x128")
    if not isinstance(vs, dict) or vs.get("ratio") is None:
        return "not measured"
    lo, hi = vs.get("ci95") or (None, None)
    span = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""
    return f"{vs['ratio']:.2f}x{span} ({vs.get('verdict', '?')})"


def section_size_runtime(w: Writer, reports: list[dict[str, Any]]) -> None:
    w(f"## 7. {SECTIONS[6]}")
    w()
    w(
        "Every run, with its change against the dense run of the same model (`eval.compare`; "
        "↑ higher is better, ↓ lower is better). *disk*: the saved folder; *nonzero*: nonzero "
        "parameters; *lat*: median forward latency at batch x tokens; *ms/token*: greedy "
        "generation; *peak RSS*: the process's resident memory peak while timing."
    )
    w()
    base = next((r for r in reports if family_of(r) == "baseline" and r["status"] == "ok"), None)
    if base is not None:
        p = base.get("profile", {})
        env = base.get("environment", {})
        w(
            f"Profiler settings: {p.get('threads', env.get('threads', '?'))} threads, "
            f"{p.get('warmup', '?')} warm-up and {p.get('repeats', '?')} timed runs per shape, "
            f"device {p.get('device', '?')}, {p.get('dtype', '?')}; "
            f"machine: {env.get('processor', '?')}, {env.get('cpu_count', '?')} CPUs. "
            "Timings on a shared machine vary by a few percent between runs."
        )
        w()
    rendered = [line.rstrip() for line in render(reports, markdown=True).splitlines()]
    # rich pads the tables with blank full-width lines: keep one blank line between blocks
    w("\n".join(line for i, line in enumerate(rendered) if line or (i > 0 and rendered[i - 1])))
    w()
    packed = [(r, dig(r, "info", "quant")) for r in reports if r.get("status") == "ok"]
    packed = [(r, q) for r, q in packed if isinstance(q, dict) and q.get("packed_bytes")]
    if packed:
        w(
            "Simulated quantization stores float32 on disk; the size its format would take "
            "once packed (codes + scales + zero points + kept outliers):"
        )
        w()
        w("| model | run | format | on disk | packed | latency / dense (same process) |")
        w("|---|---|---|--:|--:|---|")
        for r, q in sorted(packed, key=lambda x: (x[0]["model"]["name"], x[0]["label"])):
            w(
                f"| {r['model']['name']} | `{r['label']}` | {q.get('format', '?')} | "
                f"{fmt_mb(dig(r, 'profile', 'bytes_on_disk'))} | {fmt_mb(q.get('packed_bytes'))} | "
                f"{_vs_dense(r)} |"
            )
        w()


def section_pareto(w: Writer, plots: dict[str, list[Path]], out_dir: Path) -> None:
    w(f"## 8. {SECTIONS[7]}")
    w()
    w(
        "Every successful run of every family: quality kept (the fraction of the dense "
        "model's primary metric, with its 95% interval where the report has one) against "
        "cost / dense, one panel per budget kind. Each family's step line is its front: its "
        "runs that no other run of the family beats on both cost and quality. Runs that keep "
        "under 10% of dense sit in the grey strip at the bottom; runs costing more than 1.1x "
        "dense are drawn at the right edge and named above the panel."
    )
    w()
    if not plots.get("pareto"):
        w("_No plot: no model has a successful identity run with profiled runs._")
        w()
    for png in plots.get("pareto", []):
        w.image(png, out_dir, f"{png.stem.replace('_pareto', '')}: quality against cost")
        w()


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None



def section_challenges(
    w: Writer, reports: list[dict[str, Any]], by_model: dict[str, list[dict[str, Any]]]
) -> None:
    w(f"## 9. {SECTIONS[8]}")
    w()
    _memory(w, reports, by_model)
    _speed(w, by_model)
    _encoder_decoder(w, by_model)
    _failures(w, reports, by_model)


def _memory(
    w: Writer, reports: list[dict[str, Any]], by_model: dict[str, list[dict[str, Any]]]
) -> None:
    w("### Memory")
    w()
    rss = [(r, dig(r, "profile", "peak_rss_bytes")) for r in reports if r["status"] == "ok"]
    rss = [(r, v) for r, v in rss if isinstance(v, (int, float))]
    if rss:
        w("| model | peak RSS, dense | highest peak RSS (run) |")
        w("|---|--:|---|")
        for model, runs in by_model.items():
            base, _ = comparable_runs(runs)
            mine = [(r, v) for r, v in rss if r["model"]["name"] == model]
            if not mine:
                continue
            top = max(mine, key=lambda x: x[1])
            w(
                f"| {model} | {fmt_mb(dig(base, 'profile', 'peak_rss_bytes') if base else None)} | "
                f"{fmt_mb(top[1])} (`{top[0]['label']}`) |"
            )
        w()
    w(
        "Models are loaded in float32 (the decoder's GGUF weights are dequantized), and a "
        "recipe that needs calibration activations holds one layer's inputs at a time. "
        "Loading checks the safetensors headers against the available memory before "
        "anything is read."
    )
    w()


def _speed(w: Writer, by_model: dict[str, list[dict[str, Any]]]) -> None:
    w("### Speed that masks do not buy")
    w()
    rows = []
    for model, runs in by_model.items():
        base, ok = comparable_runs(runs)
        if base is None:
            continue
        groups: dict[str, list[float]] = {}
        for r in ok:
            if family_of(r) == "baseline":
                continue
            ratio = cost_ratio(r, base, "latency")
            if ratio is None:
                continue
            pipe = r["pipeline"]
            kind = _speed_kind(pipe)
            groups.setdefault(kind, []).append(ratio)
        for kind, ratios in sorted(groups.items()):
            rows.append(
                f"| {model} | {kind} | {len(ratios)} | {fmt_ratio(_median(ratios))} | "
                f"{fmt_ratio(min(ratios))} – {fmt_ratio(max(ratios))} |"
            )
    if rows:
        w("Latency (batch 1 x 128) relative to the dense model, by kind of change:")
        w()
        w("| model | kind of run | runs | median latency / dense | range |")
        w("|---|---|--:|--:|---|")
        for row in rows:
            w(row)
        w()
    w(
        "Zeros left in dense tensors cost the same multiply-adds, so unstructured and N:M "
        "sparsity run at dense speed on a CPU (2:4 kernels exist only on recent GPUs); "
        "simulated quantization is float32 arithmetic. Only fewer rows and columns "
        "(structured pruning, a smaller student) or real int8 kernels change the time."
    )
    w()


def _encoder_decoder(w: Writer, by_model: dict[str, list[dict[str, Any]]]) -> None:
    w("### Encoder-decoder support")
    w()
    seq = {m: runs for m, runs in by_model.items() if task_of_runs(runs) == "seq2seq"}
    if not seq:
        w("_No encoder-decoder model in these reports._")
    for model, runs in seq.items():
        ok = sorted({r["label"] for r in runs if r["status"] == "ok"})
        bad = sorted({r["label"] for r in runs if r["status"] != "ok"})
        w(
            f"- **{model}**: {len(ok)} runs succeeded"
            + (f", {len(bad)} failed ({', '.join(f'`{b}`' for b in bad)})" if bad else "")
            + ". Cross-attention is its own component in the architecture table (`cross_q/k/v/o`), "
            "so recipes prune or quantize it like self-attention; generation uses the model's "
            "decoder start token; quality is chrF/BLEU of greedy outputs."
        )
    w()


def _failures(
    w: Writer, reports: list[dict[str, Any]], by_model: dict[str, list[dict[str, Any]]]
) -> None:
    w("### What did not work")
    w()
    failed = [r for r in reports if r["status"] != "ok"]
    if not failed:
        w("Every run in these reports succeeded.")
    else:
        w("| model | run | error |")
        w("|---|---|---|")
        for r in sorted(failed, key=lambda r: (r["model"]["name"], r.get("label", ""))):
            err = (r.get("error") or "").replace("|", "\\|").replace("\n", " ")[:200]
            w(f"| {r['model']['name']} | `{r.get('label')}` | {err} |")
    w()
    worst = []
    for model, runs in by_model.items():
        base, ok = comparable_runs(runs)
        if base is None:
            continue
        name = primary_metric(base)
        base_m = metric(base, name)
        for r in ok:
            m = metric(r, name)
            if m and base_m and base_m["value"]:
                change = m["value"] / base_m["value"]
                lost = change > 2 if not base_m["higher_is_better"] else change < 0.8
                if lost:
                    worst.append((model, r["label"], name, base_m["value"], m["value"]))
    worst.sort(key=lambda x: (x[0], x[4] / x[3] if x[3] else 0))
    if worst:
        w(
            "Runs that lost most of the model's quality (perplexity more than doubled, or "
            "other metrics below 80% of dense):"
        )
        w()
        for model, label, name, dense, value in worst:
            w(f"- {model} `{label}`: {name} {fmt_value(dense)} -> {fmt_value(value)}")
        w()


def _speed_kind(pipeline: list[dict[str, Any]]) -> str:
    recipes = [s["recipe"] for s in pipeline]
    if len(recipes) > 1:
        return "composite"
    recipe = find_recipe(recipes[0])
    config = pipeline[0].get("config", {})
    if recipe is not None:
        family, traits = recipe.fact("family"), recipe.fact("traits")
        if family == "pruning" and not traits.changes_shapes:
            pattern = config.get("pattern")
            return f"{pattern} sparsity (masks)" if pattern else "unstructured sparsity (masks)"
        if family == "quantization" and not traits.trains and traits.runtime_format is False:
            return "simulated quantization"
    return recipes[0]


def section_reproduce(
    w: Writer,
    reports: list[dict[str, Any]],
    manifests: list[dict[str, Any]],
    reports_dir: Path,
    out: Path,
) -> None:
    w(f"## 10. {SECTIONS[9]}")
    w()
    commits = Counter(r.get("git_commit") for r in reports)
    total = sum(r.get("wall_time_s") or 0 for r in reports)
    env = next((r.get("environment") for r in reports if r.get("environment")), {}) or {}
    libs = env.get("libraries") or {}
    w(
        f"{len(reports)} reports ({sum(r['status'] == 'ok' for r in reports)} ok, "
        f"{sum(r['status'] != 'ok' for r in reports)} failed), "
        f"{len({r['model']['name'] for r in reports})} models, total run time "
        f"{total / 60:.1f} min on {env.get('cpu_count', '?')} CPUs "
        f"({env.get('threads', '?')} torch threads). Code at "
        + ", ".join(f"`{(c or 'unknown')[:10]}` ({n} runs)" for c, n in commits.most_common())
        + f"; python {env.get('python', '?')}, torch {libs.get('torch', '?')}, "
        f"transformers {libs.get('transformers', '?')}."
    )
    w()
    for m in manifests:
        w(
            f"- Sweep `{m.get('sweep')}` (`{m.get('file')}`): {len(m.get('jobs', []))} runs"
            + (", quick" if m.get("quick") else "")
            + "."
        )
    if manifests:
        w()
    w("```")
    w("bash scripts/setup.sh")
    files = [m.get("file") for m in manifests if m.get("file")] or ["recipes/default.toml"]
    for f in files:
        w(f".venv/bin/python -m eval.sweep {f}")
    w(f".venv/bin/python -m eval.report {reports_dir.as_posix()}/ -o {out.name}")
    w("```")
    w()

