"""Every registered recipe on tiny models of many transformers families (see
:mod:`tests.family_matrix`). A slice with one family of each layer kind runs by default;
``COMPRESS_FULL_MATRIX=1`` runs every family (``.ci/run`` does, after the default run):

    COMPRESS_FULL_MATRIX=1 .venv/bin/python -m pytest tests/test_families.py
    .venv/bin/python -m tests.family_matrix        # the table README carries
"""

from __future__ import annotations

import os

import pytest

from compress.registry import all_recipes
from compress.tiny import MATRIX_FAMILIES
from tests.family_matrix import CELL_CONFIG, RESULTS, record, run_cell

#: one family per layer kind: the default run's slice of the matrix.
SLICE = ("gpt2", "llama", "qwen3", "gemma2", "olmo2", "phi3", "gpt_neox", "falcon", "bloom",
         "mixtral", "qwen2_moe", "bert", "albert", "deberta-v2", "modernbert", "t5", "bart",
         "bert2bert", "switch_transformers")


FULL = os.environ.get("COMPRESS_FULL_MATRIX") == "1"


def recipe_names() -> list[str]:
    """The suite's own recipes: test-only ones other test modules register at import
    (``sweep_helpers``, ``toy_recipe``; collected before this module in a full run) have
    no cell."""
    return [r.name for r in all_recipes() if r.handler.__module__.startswith("compress.recipes.")]


@pytest.fixture(scope="module", autouse=True)
def _fresh_results():
    """Each run's table holds exactly that run's cells."""
    RESULTS.unlink(missing_ok=True)
    yield


def _params():
    for family in MATRIX_FAMILIES:
        if FULL or family in SLICE:
            for recipe in recipe_names():
                yield pytest.param(family, recipe, id=f"{family}-{recipe}")


def test_every_recipe_has_a_cell_config():
    missing = sorted(set(recipe_names()) - set(CELL_CONFIG))
    assert not missing, f"recipes without a matrix cell setting in tests/family_matrix.py: {missing}"


@pytest.mark.parametrize("family,recipe", list(_params()))
def test_cell(family, recipe, tmp_path):
    try:
        result = run_cell(family, recipe, tmp_path)
    except Exception as exc:
        record(family, recipe, {"outcome": "failed", "why": f"{type(exc).__name__}: {exc}"[:300]})
        raise
    record(family, recipe, result)


def test_refusals_at_most_five_percent():
    """Over the cells this session ran (the slice, or the whole matrix with -m families)."""
    import json

    if not RESULTS.exists():
        pytest.skip("no cells ran")
    data = json.loads(RESULTS.read_text())
    cells = [o for row in data.values() for o in row.values()]
    refused = sum(o["outcome"] == "refused" for o in cells)
    assert refused <= 0.05 * len(cells), f"{refused} of {len(cells)} cells refused"
