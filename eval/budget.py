"""Equal-budget comparison: for each family, the best run that fits a cost budget.

A budget is a cost kind and a fraction of the dense model's cost, written
``KIND=FRACTION``::

    size=0.5        bytes on disk (the saved folder) at most half the dense model's
    latency=0.5     forward latency, batch 1 x 128 tokens, at most half the dense model's,
                    as the same-process ratio the profiler measured (``latency_vs_dense``)
    nonzeros=0.5    nonzero parameters at most half
    packed=0.5      bytes the weights take in their packed format: the quantization
                    recipes' ``info.quant.packed_bytes`` where recorded (simulated
                    formats are stored as fp32 on disk), else the weight files on disk

Every cost is the profiler's measurement in the run's report, divided by the same
measurement of that model's dense ``identity`` run (same ``quick`` setting), except
latency: a latency from one process divided by one from another moves by 30-40% on a
shared machine, so the latency cost is the ratio the profiler measured against the dense
model in the run's own process (alternating rounds, :mod:`eval.paired`); a ratio whose 95%
interval contains 1.0 counts as 1.0 (no measurable change), and a report without that
measurement has no latency cost (it meets no latency budget). For each
family (pruning, quantization, distillation, MoEfication, and each composite such as
``pruning + quantization``) :func:`pick` returns the run of best quality among those
whose cost meets the budget, quality being the model's primary metric
(:data:`PRIMARY_METRIC`). This answers "at the same cost, which technique keeps the
most quality?".

>>> b = parse_budget("size=0.5")
>>> (b.kind, b.fraction)
('size', 0.5)
>>> family_of([{"recipe": "wanda"}, {"recipe": "rtn"}])
'pruning + quantization'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.table import Table

from compress.errors import UserError, did_you_mean
from compress.registry import all_recipes, find_recipe
from compress.traits import BASELINE, FAMILIES, RECOVERY, Knob
from eval import protocol
from eval.report import dig, fmt_value, runs_by_model


def recipe_family(name: str) -> str:
    """The family recipe ``name`` declares in its registration.

    A recipe this checkout does not register (a report written by another version of
    the suite) is shown as a family of its own, under its name.
    """
    recipe = find_recipe(name)
    return recipe.fact("family") if recipe is not None else name


def search_families() -> list[str]:
    """The families the budget search visits: :data:`FAMILIES`, then any other family a
    registered recipe declares (by name)."""
    declared = {r.fact("family") for r in all_recipes() if r.knobs}
    return [*FAMILIES, *sorted(declared - set(FAMILIES) - {BASELINE})]


def recipe_knobs(name: str) -> tuple[Knob, ...]:
    """The budget knobs recipe ``name`` declares (none for a recipe not registered here)."""
    recipe = find_recipe(name)
    return recipe.fact("knobs") if recipe is not None else ()

#: the metric that stands for "quality" per task, with the reason it was chosen.
PRIMARY_METRIC: dict[str, tuple[str, str]] = {
    "causal-lm": ("ppl_wiki", "token perplexity on held-out Wikipedia text (lower is better)"),
    "classification": ("accuracy", "3-class tweet sentiment accuracy"),
    "embedding": ("similarity_spearman", "Spearman correlation with human document similarity"),
    "seq2seq": ("chrf", "chrF of restored punctuation and case against the reference"),
}


def _num(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return float(value)
    return None


def latency_ratio(report: dict[str, Any]) -> float | None:
    """Same-process latency / dense at 1 x 128; 1.0 where the interval contains 1.0."""
    vs = dig(report.get("profile", {}), "latency_vs_dense", "1x128")
    if not isinstance(vs, dict) or _num(vs.get("ratio")) is None:
        return None
    lo, hi = (vs.get("ci95") or [None, None])[:2]
    if _num(lo) is not None and _num(hi) is not None and lo <= 1.0 <= hi:
        return 1.0
    return float(vs["ratio"])


def _packed_bytes(report: dict[str, Any]) -> float | None:
    packed = _num(dig(report.get("info", {}), "quant", "packed_bytes"))
    if packed is not None:
        return packed
    profile = report.get("profile", {})
    return _num(profile.get("bytes_on_disk_weights")) or _num(profile.get("bytes_on_disk"))


@dataclass(frozen=True)
class CostKind:
    name: str
    description: str
    get: Callable[[dict[str, Any]], float | None]
    #: True when ``get`` already returns a fraction of the dense cost (measured against
    #: dense in the run's own process), so it is not divided by the baseline's
    relative: bool = False


COSTS: dict[str, CostKind] = {
    "size": CostKind(
        "size",
        "bytes on disk of the saved model folder",
        lambda r: _num(dig(r.get("profile", {}), "bytes_on_disk")),
    ),
    "latency": CostKind(
        "latency",
        "forward latency, batch 1 x 128 tokens, as the same-process ratio to dense "
        "(1.0 where its 95% interval contains 1.0)",
        latency_ratio,
        relative=True,
    ),
    "nonzeros": CostKind(
        "nonzeros",
        "nonzero parameters",
        lambda r: _num(dig(r.get("profile", {}), "params_nonzero")),
    ),
    "packed": CostKind(
        "packed",
        "bytes of the weights in their packed format (quantization's packed_bytes, "
        "else the weight files on disk)",
        _packed_bytes,
    ),
}


@dataclass(frozen=True)
class Budget:
    """A cost kind and the fraction of the dense model's cost allowed."""

    kind: str
    fraction: float

    def __str__(self) -> str:
        return f"{self.kind}={self.fraction:g}"

    @property
    def cost(self) -> CostKind:
        return COSTS[self.kind]


def parse_budget(text: str) -> Budget:
    """``"size=0.5"`` -> ``Budget("size", 0.5)``; bad input is a one-line UserError."""
    if "=" not in text:
        raise UserError(
            f"budget {text!r}: write it as KIND=FRACTION, e.g. size=0.5 (kinds: {', '.join(COSTS)})"
        )
    kind, raw = (part.strip() for part in text.split("=", 1))
    if kind not in COSTS:
        raise did_you_mean("budget kind", kind, COSTS)
    try:
        fraction = float(raw)
    except ValueError:
        raise UserError(f"budget {text!r}: {raw!r} is not a number") from None
    if not 0 < fraction <= 1:
        raise UserError(f"budget {text!r}: the fraction must be in (0, 1] of the dense cost")
    return Budget(kind, fraction)


# --------------------------------------------------------------------------- reports


def recipes_of(report_or_pipeline: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
    pipeline = (
        report_or_pipeline.get("pipeline", [])
        if isinstance(report_or_pipeline, dict)
        else report_or_pipeline
    )
    return [s.get("recipe", "?") for s in pipeline]


def family_of(report_or_pipeline: dict[str, Any] | list[dict[str, Any]]) -> str:
    """``baseline``, one family, or ``a + b`` for a composite (in pipeline order).

    A recovery step (:data:`compress.traits.RECOVERY`, e.g. ``recover``) finishes the
    technique before it and adds no family: ``depth`` then ``recover`` is ``pruning``; a
    pipeline of recovery steps alone is ``recovery``.
    """
    families: list[str] = []
    recovering = False
    for recipe in recipes_of(report_or_pipeline):
        family = recipe_family(recipe)
        recovering = recovering or family == RECOVERY
        if family in (BASELINE, RECOVERY):
            continue
        if not families or families[-1] != family:
            families.append(family)
    if families:
        return " + ".join(families)
    return RECOVERY if recovering else BASELINE


def metric(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    for m in report.get("metrics", []):
        if m.get("name") == name:
            return m
    return None


def primary_metric(report: dict[str, Any]) -> str | None:
    """The primary metric's name for the report's task (or its first metric)."""
    task = report.get("model", {}).get("task")
    if task in PRIMARY_METRIC:
        return PRIMARY_METRIC[task][0]
    metrics = report.get("metrics", [])
    return metrics[0]["name"] if metrics else None


def is_baseline(report: dict[str, Any]) -> bool:
    return family_of(report) == BASELINE


def baseline_of(runs: Iterable[dict[str, Any]], quick: bool | None = None) -> dict[str, Any] | None:
    """The newest ok identity run (full preferred over lean over quick, unless ``quick``
    is given)."""
    candidates = [r for r in runs if is_baseline(r) and r.get("status") == "ok"]
    if quick is not None:
        candidates = [r for r in candidates if bool(r.get("quick")) == quick]
    candidates.sort(key=lambda r: (protocol.RANK[protocol.of_report(r)], r.get("created", "")))
    return candidates[-1] if candidates else None


def comparable_runs(runs: Iterable[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[dict]]:
    """(baseline, ok runs measured with the baseline's protocol: eval.protocol)."""
    runs = list(runs)
    base = baseline_of(runs)
    if base is None:
        return None, []
    proto = protocol.of_report(base)
    return base, [r for r in runs
                  if r.get("status") == "ok" and protocol.of_report(r) == proto]


def cost_ratio(report: dict[str, Any], base: dict[str, Any], kind: str) -> float | None:
    """The run's cost of ``kind`` divided by the baseline's (None where not measured)."""
    get = COSTS[kind].get
    if COSTS[kind].relative:
        return 1.0 if report is base else get(report)
    value, ref = get(report), get(base)
    if value is None or ref is None or ref <= 0:
        return None
    return value / ref


# --------------------------------------------------------------------------- picking


def meets(ratio: float, fraction: float) -> bool:
    """Whether a cost ratio meets a budget: the one rule picking and searching share (a
    relative 1e-9 forgives the rounding of a cost computed to land on the budget)."""
    return ratio <= fraction * (1 + 1e-9)


@dataclass
class Pick:
    """The outcome for one model, family and budget."""

    model: str
    family: str
    budget: Budget
    metric: str | None
    higher_is_better: bool
    baseline_value: float | None
    chosen: dict[str, Any] | None  # the best run meeting the budget
    value: float | None  # its primary metric
    ratio: float | None  # its cost / dense cost
    n_runs: int  # runs of the family with a measured cost and metric
    n_meeting: int
    cheapest: dict[str, Any] | None = None  # when none meets: the lowest-cost run
    cheapest_ratio: float | None = None

    @property
    def label(self) -> str:
        return self.chosen.get("label", "?") if self.chosen else ""

    @property
    def retained(self) -> float | None:
        """Quality kept against dense: value/base (higher is better) or base/value."""
        if self.value is None or not self.baseline_value:
            return None
        if self.higher_is_better:
            return self.value / self.baseline_value
        return self.baseline_value / self.value if self.value else None


def _families_present(runs: list[dict[str, Any]]) -> list[str]:
    present = {family_of(r) for r in runs} - {BASELINE}
    singles = [f for f in FAMILIES if f in present]
    return singles + sorted(present - set(FAMILIES))


def pick_for_model(
    runs: list[dict[str, Any]], budget: Budget, families: Iterable[str] | None = None
) -> list[Pick]:
    """One :class:`Pick` per family present in ``runs`` (one model's reports)."""
    base, candidates = comparable_runs(runs)
    if base is None:
        return []
    model = base["model"]["name"]
    name = primary_metric(base)
    base_metric = metric(base, name) if name else None
    if base_metric is None:
        return []
    hib = bool(base_metric["higher_is_better"])
    picks = []
    for family in families or _families_present(candidates):
        scored = []
        for run in candidates:
            if family_of(run) != family:
                continue
            m = metric(run, name)
            ratio = cost_ratio(run, base, budget.kind)
            if m is None or ratio is None:
                continue
            scored.append((run, float(m["value"]), ratio))
        # a small tolerance: a run at exactly the budget meets it despite float noise
        meeting = [s for s in scored if meets(s[2], budget.fraction)]
        pick = Pick(
            model,
            family,
            budget,
            name,
            hib,
            float(base_metric["value"]),
            None,
            None,
            None,
            len(scored),
            len(meeting),
        )
        if meeting:
            # best quality; ties go to the cheaper run
            best = max(meeting, key=lambda s: ((s[1] if hib else -s[1]), -s[2]))
            pick.chosen, pick.value, pick.ratio = best
        elif scored:
            cheapest = min(scored, key=lambda s: s[2])
            pick.cheapest, pick.cheapest_ratio = cheapest[0], cheapest[2]
        picks.append(pick)
    return picks


def pick(reports: list[dict[str, Any]], budget: Budget) -> dict[str, list[Pick]]:
    """Picks per model (models sorted by name)."""
    return {m: pick_for_model(runs, budget) for m, runs in runs_by_model(reports).items()}


def untouched_share(report: dict[str, Any], kind: str = "size") -> float | None:
    """The share of the dense weights outside the tensors the run compressed, from what
    its recipe recorded: a pruning run's targeted parameters (``info.sparsity``) against
    the model's, a quantizer's targeted bytes (``info.quant``) against the dense bytes
    (not for ``nonzeros``: quantizing removes no weight). None where the run records
    neither."""
    info = report.get("info") or {}
    total = _num(dig(report.get("profile", {}), "params_total"))
    targeted = _num(dig(info, "sparsity", "targeted_params"))
    if targeted is not None and total:
        return max(0.0, 1.0 - targeted / total)
    target_bytes = _num(dig(info, "quant", "target_dense_bytes"))
    dense_bytes = _num(dig(info, "quant", "dense_bytes"))
    if kind != "nonzeros" and target_bytes is not None and dense_bytes:
        return max(0.0, 1.0 - target_bytes / dense_bytes)
    return None


def _at_most_compressed(report: dict[str, Any]) -> bool:
    """Whether the run's first step sits at the most compressed setting of a knob."""
    steps = report.get("pipeline") or []
    if not steps:
        return False
    config = steps[0].get("config") or {}
    return any(
        knob.field in config and _num(config[knob.field]) is not None
        and abs(float(config[knob.field]) - knob.most()) < 1e-9
        for knob in recipe_knobs(steps[0].get("recipe", ""))
    )


def unreached_reason(p: Pick, budget: Budget, code: str = "") -> str:
    """One line on why ``p``'s family has no run within ``budget``, from its runs' reports:
    the lowest cost it reached and, where the reports say, what holds it up (a cost its
    runs do not lower; the share of the weights outside what it compresses; a knob
    already at its most compressed setting)."""
    if p.cheapest is None:
        return "no run with this cost measured"
    x, label = p.cheapest_ratio, f"{code}{p.cheapest.get('label')}{code}"
    head = f"not reached: lowest {budget.kind} measured is {x:.3f} of dense ({label})"
    if x >= 0.98:
        return f"{head}; this family's runs do not lower {budget.kind}"
    notes = []
    if budget.kind == "nonzeros" and dig(p.cheapest.get("info") or {}, "quant") is not None:
        notes.append("quantizing rounds weights and removes none (its zeros are rounding's)")
    if _at_most_compressed(p.cheapest):
        notes.append("at the knob's most compressed setting")
    share = untouched_share(p.cheapest, budget.kind)
    if share is not None and share >= budget.fraction / 2:
        notes.append(f"{share:.2f} of the dense weights lie outside the tensors it compresses "
                     "(embeddings, norms, head)")
    return head + ("; " + "; ".join(notes) if notes else "")


#: below this fraction of dense quality a run counts as collapsed (said in its cell).
COLLAPSED_KEPT = 0.10


def markdown_table(picks: dict[str, list[Pick]], budget: Budget) -> str:
    """The equal-budget table as markdown (one row per model and family)."""
    lines = [
        f"| model | family | best run within {budget} | cost / dense | quality | dense | "
        "kept | runs meeting |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for model, rows in picks.items():
        for p in rows:
            arrow = "↑" if p.higher_is_better else "↓"
            dense = f"{fmt_value(p.baseline_value)}"
            if p.chosen is not None:
                kept = f"{p.retained * 100:.1f}%" if p.retained is not None else "–"
                if p.retained is not None and p.retained < COLLAPSED_KEPT:
                    kept += " (collapsed: no run of this family within the budget keeps more)"
                lines.append(
                    f"| {model} | {p.family} | `{p.label}` | {p.ratio:.3f} | "
                    f"{p.metric} {arrow} {fmt_value(p.value)} | {dense} | {kept} | "
                    f"{p.n_meeting} of {p.n_runs} |"
                )
            else:
                why = unreached_reason(p, budget, code="`")
                lines.append(
                    f"| {model} | {p.family} | {why} | – | {p.metric} {arrow} – | {dense} | – | "
                    f"0 of {p.n_runs} |"
                )
    return "\n".join(lines) + "\n"


def rich_table(picks: dict[str, list[Pick]], budget: Budget):
    """The same table for the terminal."""
    table = Table(
        title=f"Equal budget: {budget} ({budget.cost.description})",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
    )
    for col, just in (
        ("model", "left"),
        ("family", "left"),
        ("best run within budget", "left"),
        ("cost/dense", "right"),
        ("quality", "right"),
        ("dense", "right"),
        ("kept", "right"),
        ("meeting", "right"),
    ):
        table.add_column(col, justify=just)
    for model, rows in picks.items():
        for p in rows:
            if p.chosen is not None:
                kept = f"{p.retained * 100:.1f}%" if p.retained is not None else "–"
                table.add_row(
                    model,
                    p.family,
                    p.label,
                    f"{p.ratio:.3f}",
                    f"{p.metric} {fmt_value(p.value)}",
                    fmt_value(p.baseline_value),
                    kept,
                    f"{p.n_meeting}/{p.n_runs}",
                )
            else:
                table.add_row(
                    model,
                    p.family,
                    f"[red]{unreached_reason(p, budget)}[/]",
                    "–",
                    "–",
                    fmt_value(p.baseline_value),
                    "–",
                    f"0/{p.n_runs}",
                )
    return table
