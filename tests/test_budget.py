"""Equal-budget picking on synthetic reports, and the knob search's next probe."""

from __future__ import annotations

import pytest
from sweep_helpers import fake_report

from compress.errors import UserError
from eval.budget import (
    Budget,
    Knob,
    family_of,
    markdown_table,
    parse_budget,
    pick,
    pick_for_model,
)
from eval.budget_probe import interpolated_probe, knob_groups, next_probe


def lm_runs():
    """A causal LM: dense ppl 20, 100 MB, 10 M nonzeros, 10 ms."""
    return [
        fake_report(),
        fake_report(
            steps=[("magnitude", {"sparsity": 0.5})], metrics={"ppl_wiki": 25.0}, nonzero=4.9e6
        ),
        fake_report(
            steps=[("magnitude", {"sparsity": 0.9})], metrics={"ppl_wiki": 300.0}, nonzero=1.5e6
        ),
        fake_report(
            steps=[("wanda", {"sparsity": 0.5})], metrics={"ppl_wiki": 22.0}, nonzero=4.9e6
        ),
        fake_report(
            steps=[("structured", {"sparsity": 0.6})],
            metrics={"ppl_wiki": 40.0},
            disk=45e6,
            nonzero=4.5e6,
            latency=5.0,
        ),
        fake_report(
            steps=[("rtn", {"bits": 4})],
            metrics={"ppl_wiki": 21.0},
            info={"quant": {"packed_bytes": 15e6}},
        ),
        fake_report(
            steps=[("dynamic-int8", {})], metrics={"ppl_wiki": 20.5}, disk=30e6, latency=6.0
        ),
        fake_report(
            steps=[("distill", {})], metrics={"ppl_wiki": 30.0}, disk=60e6, nonzero=6e6, latency=6.0
        ),
        fake_report(
            steps=[("wanda", {"sparsity": 0.5}), ("rtn", {"bits": 4})],
            metrics={"ppl_wiki": 23.0},
            nonzero=4.9e6,
            info={"quant": {"packed_bytes": 13e6}},
        ),
        # not comparable or not usable: must never be picked
        fake_report(
            steps=[("magnitude", {"sparsity": 0.7})],
            metrics={"ppl_wiki": 1.0},
            nonzero=1e6,
            quick=True,
        ),
        fake_report(steps=[("wanda", {"sparsity": 0.8})], status="failed", error="boom"),
        fake_report(quick=True, metrics={"ppl_wiki": 99.0}),
    ]


def by_family(picks):
    return {p.family: p for p in picks}


def test_parse_budget_and_errors():
    assert parse_budget("size=0.5") == Budget("size", 0.5)
    assert str(parse_budget("latency = 0.25")) == "latency=0.25"
    with pytest.raises(UserError, match="did you mean 'size'"):
        parse_budget("sise=0.5")
    with pytest.raises(UserError, match="KIND=FRACTION"):
        parse_budget("size")
    with pytest.raises(UserError, match="in \\(0, 1\\]"):
        parse_budget("size=1.5")
    with pytest.raises(UserError, match="not a number"):
        parse_budget("size=half")


def test_family_of_single_and_composite():
    assert family_of([{"recipe": "identity"}]) == "baseline"
    assert family_of([{"recipe": "gptq"}]) == "quantization"
    assert family_of([{"recipe": "wanda"}, {"recipe": "rtn"}]) == "pruning + quantization"
    assert family_of([{"recipe": "rtn"}, {"recipe": "wanda"}]) == "quantization + pruning"
    assert family_of([{"recipe": "magnitude"}, {"recipe": "structured"}]) == "pruning"


def test_size_budget_picks_what_really_shrinks():
    picks = by_family(pick_for_model(lm_runs(), parse_budget("size=0.5")))
    # zeros and simulated rounding do not shrink the file: only structured meets it
    assert picks["pruning"].label == "structured(sparsity=0.6)"
    assert picks["pruning"].ratio == pytest.approx(0.45)
    assert picks["pruning"].n_meeting == 1 and picks["pruning"].n_runs == 4
    assert picks["quantization"].label == "dynamic-int8"
    assert picks["quantization"].value == 20.5
    assert picks["quantization"].retained == pytest.approx(20 / 20.5)
    assert picks["distillation"].chosen is None
    assert picks["distillation"].cheapest_ratio == pytest.approx(0.6)
    assert picks["pruning + quantization"].chosen is None
    assert list(picks)[:3] == ["pruning", "quantization", "distillation"]


def test_nonzeros_budget_picks_best_quality_within_budget():
    picks = by_family(pick_for_model(lm_runs(), parse_budget("nonzeros=0.5")))
    # magnitude 0.5 (25), wanda 0.5 (22), magnitude 0.9 (300), structured (40) meet it:
    # the best perplexity wins; the quick magnitude run at ppl 1.0 is not comparable
    assert picks["pruning"].label == "wanda(sparsity=0.5)"
    assert picks["pruning"].n_meeting == 4
    assert picks["quantization"].chosen is None  # rounding keeps every weight nonzero
    assert picks["pruning + quantization"].value == 23.0


def test_packed_budget_uses_packed_bytes_of_simulated_formats():
    picks = by_family(pick_for_model(lm_runs(), parse_budget("packed=0.2")))
    assert picks["quantization"].label == "rtn(bits=4)"
    assert picks["quantization"].ratio == pytest.approx(0.15)


def test_latency_budget_and_tie_goes_to_cheaper():
    runs = lm_runs() + [
        fake_report(steps=[("distill", {"layers": 2})], metrics={"ppl_wiki": 30.0}, latency=4.0)
    ]
    picks = by_family(pick_for_model(runs, parse_budget("latency=0.6")))
    assert picks["distillation"].label == "distill(layers=2)"  # same quality, cheaper one
    assert picks["distillation"].ratio == pytest.approx(0.4)
    assert picks["quantization"].label == "dynamic-int8"
    assert picks["pruning"].label == "structured(sparsity=0.6)"


def test_latency_budget_reads_the_same_process_ratio_only():
    """No impossible rows: a run meets a latency budget only on its same-process ratio.
    An absolute median from another process (0.6 of dense here) counts for nothing; an
    interval that contains 1.0 is 1.0 (no measurable change)."""
    from eval.budget import cost_ratio

    base = fake_report()
    old = fake_report(steps=[("wanda", {"sparsity": 0.1})], metrics={"ppl_wiki": 20.1}, latency=6.0)
    del old["profile"]["latency_vs_dense"]  # an old report: absolute ms only
    noisy = fake_report(steps=[("rtn", {"bits": 4})], metrics={"ppl_wiki": 20.2}, latency=6.0)
    noisy["profile"]["latency_vs_dense"]["1x128"]["ci95"] = [0.4, 1.1]
    fast = fake_report(steps=[("dynamic-int8", {})], metrics={"ppl_wiki": 20.9}, latency=6.0)
    assert cost_ratio(old, base, "latency") is None
    assert cost_ratio(noisy, base, "latency") == 1.0
    assert cost_ratio(fast, base, "latency") == pytest.approx(0.6)
    assert cost_ratio(base, base, "latency") == 1.0
    picks = by_family(pick_for_model([base, old, noisy, fast], parse_budget("latency=0.75")))
    assert picks["quantization"].label == "dynamic-int8"
    assert picks["pruning"].chosen is None and picks["pruning"].n_runs == 0


def test_higher_is_better_metric_and_models_separate():
    cls = [
        fake_report("clf", task="classification", metrics={"accuracy": 0.80}),
        fake_report(
            "clf",
            [("magnitude", {"sparsity": 0.5})],
            task="classification",
            metrics={"accuracy": 0.70},
            nonzero=5e6,
        ),
        fake_report(
            "clf",
            [("wanda", {"sparsity": 0.5})],
            task="classification",
            metrics={"accuracy": 0.78},
            nonzero=5e6,
        ),
    ]
    result = pick(lm_runs() + cls, parse_budget("nonzeros=0.5"))
    assert list(result) == ["clf", "lm"]
    (p,) = result["clf"]
    assert p.label == "wanda(sparsity=0.5)" and p.retained == pytest.approx(0.78 / 0.8)
    table = markdown_table(result, parse_budget("nonzeros=0.5"))
    assert "| clf | pruning | `wanda(sparsity=0.5)` | 0.500 | accuracy ↑ 0.78 |" in table
    assert "not reached: lowest nonzeros measured is" in table


def test_no_baseline_no_picks():
    runs = [r for r in lm_runs() if r["label"] != "identity"]
    assert pick_for_model(runs, parse_budget("size=0.5")) == []


def test_next_probe_continuous_bisects_toward_the_boundary():
    k = Knob("sparsity", "up", 0.01, 0.99, 0.01)
    assert next_probe(k, []) == 0.99
    assert next_probe(k, [(0.5, False)]) == 0.99
    assert next_probe(k, [(0.5, False), (0.99, False)]) is None  # out of reach
    assert next_probe(k, [(0.5, False), (0.9, True)]) == 0.7
    assert next_probe(k, [(0.5, False), (0.7, True), (0.9, True)]) == 0.6
    assert next_probe(k, [(0.5, False), (0.51, True)]) is None  # resolution reached
    # all tried settings meet it: bisect from the dense end
    assert next_probe(k, [(0.5, True)], fraction=0.5) == 0.26
    assert next_probe(k, [(0.5, True)], fraction=1.0) is None


def test_next_probe_discrete_bits():
    k = Knob("bits", "down", values=(8, 6, 5, 4, 3, 2))
    assert next_probe(k, [(8, False)]) == 2
    assert next_probe(k, [(8, False), (2, True)]) == 5
    assert next_probe(k, [(8, False), (5, False), (2, True)]) == 4
    assert next_probe(k, [(4, False), (3, True)]) is None
    assert next_probe(k, [(2, False)]) is None


def _search(knob, cost, fraction, start, interpolate=True, limit=30):
    """The sweep's search loop on a cost function: probes until neither rule has one."""
    tried = {round(v, 6): cost(v) for v in start}
    for _ in range(limit):
        points = list(tried.items())
        probe = interpolated_probe(knob, points, fraction) if interpolate else None
        if probe is None:
            probe = next_probe(knob, [(v, c <= fraction) for v, c in points], fraction)
        if probe is None:
            return tried
        assert round(probe, 6) not in tried, "a probe repeats a tried setting"
        tried[round(probe, 6)] = cost(probe)
    raise AssertionError("the search did not stop")


def _boundary(knob, tried, fraction):
    meets = [v for v, c in tried.items() if c <= fraction]
    return min(meets, key=knob.order) if meets else None


@pytest.mark.parametrize("name,cost,fraction,start,at_most", [
    # nonzeros: linear in sparsity (only the targeted 90% of the weights are pruned)
    ("nonzeros", lambda s: 1 - 0.9 * s, 0.5, [0.9, 0.95], 2),
    ("nonzeros from one side", lambda s: 1 - 0.9 * s, 0.5, [0.1, 0.3], 2),
    # a convex cost (latency-like: little gain until high sparsity)
    ("convex", lambda s: 1 - 0.8 * s ** 3, 0.6, [0.5, 0.9], 6),
])
def test_interpolated_search_finds_the_boundary_in_fewer_runs(name, cost, fraction, start,
                                                              at_most):
    k = Knob("sparsity", "up", 0.01, 0.99, 0.01)
    fast = _search(k, cost, fraction, start)
    slow = _search(k, cost, fraction, start, interpolate=False)
    # both end at the same boundary: the least compressed setting meeting the budget,
    # with the setting one step less compressed tried and failing
    b = _boundary(k, fast, fraction)
    assert b == _boundary(k, slow, fraction)
    assert cost(b) <= fraction < cost(round(b - 0.01, 6))
    assert round(b - 0.01, 6) in fast
    extra = len(fast) - len(start)
    assert extra <= at_most, (name, sorted(fast))
    assert extra < len(slow) - len(start), (name, sorted(fast), sorted(slow))


def test_interpolated_probe_discrete_bits_and_fallbacks():
    k = Knob("bits", "down", values=(8, 6, 5, 4, 3, 2))

    def packed(b):  # packed bytes: weights at b bits plus fp32 embeddings (20% of dense)
        return 0.2 + 0.8 * b / 32

    # 8 and 6 bits both fail 0.3: the line reaches 0.3 at 4 bits
    assert interpolated_probe(k, [(8, packed(8)), (6, packed(6))], 0.3) == 4
    # a single run gives no line; equal costs give none; the tried setting is not repeated
    assert interpolated_probe(k, [(8, 0.5)], 0.3) is None
    assert interpolated_probe(k, [(8, 0.5), (6, 0.5)], 0.3) is None
    # 4 bits meets 0.31 and the line puts the boundary there: confirm one setting up
    assert interpolated_probe(k, [(8, packed(8)), (4, packed(4))], 0.31) == 5
    # beyond the most compressed setting: left to bisection (which tries it)
    assert interpolated_probe(k, [(8, 0.9), (6, 0.89)], 0.3) is None


def test_knob_groups_skip_patterns_and_composites():
    groups = knob_groups(
        lm_runs()
        + [
            fake_report(steps=[("wanda", {"sparsity": 0.5, "pattern": "2:4"})]),
        ],
        "pruning",
    )
    recipes = sorted((recipe, len(runs)) for (recipe, _), runs in groups.items())
    # the quick and failed runs are still listed here: callers pass comparable runs only
    assert ("wanda", 2) in recipes and ("magnitude", 3) in recipes
    assert all(r != "dynamic-int8" for r, _ in recipes)


def test_unreached_cells_say_why():
    """A family with no run in the budget says what holds its cost up, from its reports."""
    runs = [
        fake_report(),
        # pruning at the knob's end: 60% of the weights were never targeted
        fake_report(steps=[("magnitude", {"sparsity": 0.99})], nonzero=4.1e6,
                    info={"sparsity": {"targeted_params": 4e6}}),
        # a quantizer that targeted 40% of the dense bytes (its rounding made zeros); a MoE
        fake_report(steps=[("rtn", {"bits": 3})], nonzero=8.1e6, disk=100e6,
                    info={"quant": {"target_dense_bytes": 40e6, "dense_bytes": 100e6,
                                    "packed_bytes": 65e6}}),
        fake_report(steps=[("moefy", {})], nonzero=10.1e6, disk=101e6),
    ]
    table = markdown_table(pick(runs, parse_budget("nonzeros=0.3")), parse_budget("nonzeros=0.3"))
    rows = {line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    assert ("not reached: lowest nonzeros measured is 0.410 of dense "
            "(`magnitude(sparsity=0.99)`); at the knob's most compressed setting; "
            "0.60 of the dense weights lie outside") in rows["pruning"]
    assert "removes none" in rows["quantization"] and "outside" not in rows["quantization"]
    assert "this family's runs do not lower nonzeros" in rows["moefication"]
    packed = parse_budget("packed=0.3")
    quant = next(line for line in markdown_table(pick(runs, packed), packed).splitlines()
                 if "| quantization |" in line)
    assert ("lowest packed measured is 0.650 of dense (`rtn(bits=3)`); 0.60 of the dense "
            "weights lie outside the tensors it compresses") in quant
