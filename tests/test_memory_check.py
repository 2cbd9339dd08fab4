"""The memory check with the recipes' own estimates, on a tiny model.

:func:`compress.compress` compares a recipe's declared estimate (its registration,
:mod:`compress.footprint`) with the available memory before the recipe starts. With the
available memory patched (``COMPRESS_AVAILABLE_MEMORY``) just below the estimate plus
headroom, it refuses in one line naming the recipe, what takes the memory and a cheaper
option, and the model is untouched; just above, the recipe runs. How close the estimates
are to real peaks is measured by ``bench/recipe_memory.py`` (reports/bench/recipe_memory.json).
"""

from __future__ import annotations

import pytest
import torch

from compress import compress, make_config
from compress.calibration import CalibrationSpec
from compress.context import Context
from compress.errors import UserError
from compress.footprint import model_facts
from compress.memory import AVAILABLE_ENV, SAFETY
from compress.registry import get_recipe
from compress.tiny import tiny_model

TEXT = ("The committee met on Tuesday to discuss the budget for the coming year, and "
        "after a long debate the members agreed to postpone the decision. ")

CASES = [
    ("wanda", {"sparsity": 0.5}),
    ("sparsegpt", {"sparsity": 0.5}),
    ("gptq", {"bits": 4}),
    ("awq", {"bits": 4, "n_grid": 2}),
    ("structured", {"ffn_ratio": 0.25}),
    ("magnitude", {"sparsity": 0.5, "finetune_steps": 1, "finetune_method": "full",
                   "finetune_batch_size": 2, "finetune_seq_len": 16}),
    ("qlora", {"steps": 1, "batch_size": 2, "seq_len": 16}),
]


def _context(tok) -> Context:
    return Context(tokenizer=tok, calibration=[TEXT * 4] * 8, train=[TEXT * 4] * 8,
                   task="causal-lm", calib=CalibrationSpec(sequences=4, seq_len=32))


@pytest.mark.parametrize(("recipe", "fields"), CASES, ids=[c[0] for c in CASES])
def test_check_refuses_below_the_estimate_and_passes_above(recipe, fields, monkeypatch):
    if recipe == "qlora":
        pytest.importorskip("bitsandbytes")
    model, tok = tiny_model("llama")
    context = _context(tok)
    config = make_config(recipe, **fields)
    need = get_recipe(recipe).memory_need(config, model_facts(model, context))
    assert need.bytes > 0 and need.hint
    before = {k: v.clone() for k, v in model.state_dict().items()}

    monkeypatch.setenv(AVAILABLE_ENV, str(int(need.bytes * SAFETY) - 1))
    with pytest.raises(UserError) as err:
        compress(model, config, context)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"recipe {recipe!r}") and "needs about" in msg, msg
    assert need.hint in msg, msg  # the cheaper option
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "refused after it started"

    monkeypatch.setenv(AVAILABLE_ENV, str(int(need.bytes * SAFETY) + 1))
    out = compress(model, config, context)  # the same estimate, now with room: it runs
    assert isinstance(out, torch.nn.Module)
    changed = out.state_dict()
    assert any(k not in changed or not torch.equal(before[k], changed[k]) for k in before)


def test_the_estimate_grows_with_the_calibration_set():
    """More calibration sequences or longer ones need more memory, and the refusal's
    cheaper option names the calibration flags."""
    model, tok = tiny_model("llama")
    small = _context(tok)
    large = Context(tokenizer=tok, calibration=small.calibration, task="causal-lm",
                    calib=CalibrationSpec(sequences=64, seq_len=256))
    for recipe in ("wanda", "gptq", "sparsegpt", "awq", "owl"):
        est = get_recipe(recipe)
        config = make_config(recipe)
        a = est.memory_need(config, model_facts(model, small))
        b = est.memory_need(config, model_facts(model, large))
        assert b.bytes > a.bytes, recipe
        assert "--calib-sequences" in b.hint, recipe
