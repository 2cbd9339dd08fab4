"""Adding a recipe is one module: a toy recipe (tests/toy_recipe.py) shows up in the command
line, the sweep, the budget search and the report with no other edit."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import toy_recipe

from compress.cli import recipe_main
from compress.registry import get_recipe
from compress.stats import parameter_counts
from eval.budget import family_of, parse_budget, pick_for_model
from eval.report import read_reports
from eval.report.generate import generate
from eval.run import build_parser
from eval.sweep import load_sweep, run_sweep

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from compress.tiny import tiny_model

    folder = tmp_path_factory.mktemp("models") / "llama"
    model, tok = tiny_model("llama")
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_the_toy_recipe_has_a_command_line(tiny_llama, tmp_path):
    assert get_recipe(toy_recipe.NAME).family == "pruning"
    help_text = build_parser(toy_recipe.NAME).format_help()
    assert "--sparsity" in help_text and "(toy)" in help_text
    out = tmp_path / "out"
    assert recipe_main(toy_recipe.NAME, ["--model", tiny_llama, "--out", str(out),
                                         "--sparsity", "0.5", "--calib-sequences", "0"]) == 0
    from compress.saving import load_compressed

    counts = parameter_counts(load_compressed(out))
    assert counts["nonzero"] < counts["total"]


def test_the_toy_recipe_in_sweep_budget_search_and_report(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    reports = tmp_path / "reports"
    sweep_file = tmp_path / "toy.toml"
    sweep_file.write_text(textwrap.dedent(f"""
        name = "toy"
        models = ["{tiny_llama}"]
        imports = ["toy_recipe"]
        budgets = ["nonzeros=0.5"]
        search_runs = 1
        [defaults]
        quick = true
        threads = 1
        calib_sequences = 4
        reports = "{reports}"
        [[runs]]
        recipe = "identity"
        [[runs]]
        recipe = "{toy_recipe.NAME}"
        sparsity = 0.2
    """))
    sweep = load_sweep(sweep_file)
    assert [family_of(j.pipeline) for j in sweep.jobs] == ["baseline", "pruning"]
    out = run_sweep(sweep, console=_quiet())
    # the budget search turned the toy knob: 0.2 misses nonzeros <= 0.5, 0.99 meets it
    assert out.ran == 3 and out.count("ok") == 3
    runs = read_reports(reports)
    labels = sorted(r["label"] for r in runs)
    assert labels == ["identity", "toy-prune-test(sparsity=0.2)", "toy-prune-test(sparsity=0.99)"]
    (pick,) = [p for p in pick_for_model(runs, parse_budget("nonzeros=0.5"))
               if p.family == "pruning"]
    assert pick.label == "toy-prune-test(sparsity=0.99)"
    text, _ = generate(reports, tmp_path / "report.md")
    assert f"| `{toy_recipe.NAME}` | Zero the smallest-magnitude weights" in text
    assert "`toy-prune-test(sparsity=0.99)`" in text  # the equal-budget table


def _quiet():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"), force_terminal=False)
