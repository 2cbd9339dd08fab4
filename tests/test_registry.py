"""Every recipe's registration carries every fact the sweep, budget search and report need."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from compress import saving
from compress.config import RecipeConfig
from compress.errors import UserError
from compress.registry import FACTS, all_recipes, register_recipe
from compress.traits import BASELINE, FAMILIES, RECOVERY, Knob, Traits
from eval.budget import family_of
from eval.budget_probe import knob_groups
from eval.sweep import check_pipeline

BUILTIN = [r for r in all_recipes() if r.handler.__module__.startswith("compress.recipes.")]


def test_the_builtin_recipes_are_all_found():
    assert len(BUILTIN) >= 14 and {"identity", "wanda", "rtn", "distill", "moefy"} <= {
        r.name for r in BUILTIN
    }


@pytest.mark.parametrize("recipe", BUILTIN, ids=lambda r: r.name)
def test_every_builtin_recipe_declares_every_fact(recipe):
    assert recipe.missing == [], f"{recipe.name} leaves out {recipe.missing} (of {FACTS})"
    assert recipe.family in (*FAMILIES, BASELINE, RECOVERY)
    assert isinstance(recipe.traits, Traits)
    assert all(isinstance(k, Knob) for k in recipe.knobs)
    config = recipe.config_cls()
    # the config-dependent traits answer for the default config
    traits = recipe.traits
    assert isinstance(traits.keeps_zeros_for(config), bool)
    assert isinstance(traits.runtime_format_for(config), bool)
    assert isinstance(traits.calibrates_for(config), bool)
    assert isinstance(traits.divides(config), list)
    assert isinstance(recipe.memory_bytes(config, 4_000_000, 64), int)  # legacy facts
    for fmt in recipe.formats:
        assert fmt in saving._FORMATS, f"{recipe.name} declares unregistered format {fmt!r}"


def test_a_recovery_step_joins_the_family_before_it():
    assert family_of([{"recipe": "depth"}, {"recipe": "recover"}]) == "pruning"
    assert family_of([{"recipe": "moefy"}, {"recipe": "recover"}]) == "moefication"
    assert family_of([{"recipe": "depth"}, {"recipe": "recover"}, {"recipe": "rtn"}]) == \
        "pruning + quantization"
    assert family_of([{"recipe": "recover"}]) == RECOVERY
    assert family_of([{"recipe": "identity"}]) == BASELINE


def test_every_saving_format_belongs_to_a_recipe():
    declared = {fmt for r in BUILTIN for fmt in r.formats}
    assert set(saving._FORMATS) <= declared


def test_a_recipe_without_facts_is_an_error_not_a_default():
    @dataclass(frozen=True)
    class BareConfig(RecipeConfig):
        pass

    @register_recipe("bare-test", BareConfig)
    def bare(model, config, context):
        return model

    with pytest.raises(UserError, match="'bare-test' declares no traits"):
        check_pipeline([BareConfig()])
    with pytest.raises(UserError, match="'bare-test' declares no family"):
        family_of([{"recipe": "bare-test"}])
    report = {"pipeline": [{"recipe": "bare-test", "config": {}}]}
    with pytest.raises(UserError, match="'bare-test' declares no family"):
        knob_groups([report], "pruning")


def test_registration_checks_its_facts():
    @dataclass(frozen=True)
    class KnobConfig(RecipeConfig):
        level: float = 0.5

    with pytest.raises(ValueError, match="knob 'levels'"):
        register_recipe("bad-knob-test", KnobConfig, knobs=(Knob("levels", "up"),))
    with pytest.raises(TypeError, match="traits must be"):
        register_recipe("bad-traits-test", KnobConfig, traits={"trains": True})
    with pytest.raises(ValueError, match="more must be"):
        Knob("level", "sideways")


@pytest.mark.parametrize("recipe", BUILTIN, ids=lambda r: r.name)
def test_calibrating_and_training_recipes_estimate_their_own_memory(recipe):
    """Every recipe that calibrates, trains or copies the model declares an estimate of its
    own (not the generic field-name one), and it is positive on a tiny model."""
    from compress.context import Context
    from compress.footprint import Need, model_facts
    from compress.tiny import tiny_model
    from compress.traits import config_memory

    model, _ = tiny_model("llama")
    facts = model_facts(model, Context(calibration=["some text"] * 8, train=["more"] * 8,
                                       task="causal-lm"))
    config = recipe.config_cls()
    need = recipe.memory_need(config, facts)
    assert isinstance(need, Need) and need.bytes >= 0
    if recipe.family == BASELINE:
        return
    assert recipe.memory is not config_memory, f"{recipe.name} declares no estimate of its own"
    if recipe.traits.calibrates_for(config) or recipe.traits.trains or recipe.name in (
            "bnb-4bit", "bnb-int8", "onnx-int8", "quanto", "dynamic-int8"):
        assert need.bytes > 0 and need.hint, recipe.name
