"""Bad input gets one clear line; validated configs never crash; same seed, same numbers.

Runs over every registered recipe, so a new recipe is covered the moment it lands.
"""

from __future__ import annotations

import copy
import dataclasses
import typing

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress import Context, UserError, compress
from compress.config import _base_type
from compress.registry import get_recipe, recipe_names
from compress.tiny import sample_inputs, tiny_model

#: recipes that train or export: fewer runtime examples, small step counts.
HEAVY = {"distill", "recover", "qlora", "onnx-int8", "runtime", "gptq", "structured", "moefy", "quanto", "bnb-4bit",
         "bnb-int8", "awq"}
#: int fields whose size sets the run time: kept small in runtime properties.
COSTLY_INT_WORDS = ("step", "sample", "epoch", "len", "iter", "batch", "rank", "experts", "layers",
                    "minutes", "every", "accum", "_r", "hidden")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Compression makes models smaller and faster, if it is done right.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Numbers like 1, 2, 3, 10, 100 and 2026 appear in news text.",
] * 4


def _fields(cls):
    hints = typing.get_type_hints(cls)
    return [(f, *_base_type(hints[f.name])) for f in dataclasses.fields(cls)]


def _any_value(f, tp, optional):
    """Values of every kind, in and out of range, for the rejection property."""
    meta = f.metadata
    options = [st.none()] if optional else []
    if meta.get("choices"):
        options.append(st.sampled_from(list(meta["choices"])))
    if tp is bool:
        options += [st.booleans(), st.sampled_from([0, 1, "yes", None])]
    elif tp is int:
        options += [st.integers(-5, 10**9), st.sampled_from([1.5, "3", True])]
    elif tp is float:
        options += [st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3),
                    st.sampled_from(["0.5", True])]
    elif tp is str:
        options += [st.text(max_size=12), st.sampled_from(["", "attn=0.5,ffn=2", "2:4", "x=y"])]
    else:
        options += [st.none(), st.text(max_size=5), st.integers()]
    return st.one_of(options)


def _valid_value(f, tp, optional, small: bool):
    """Values inside the declared range or choices, for the runtime property."""
    meta = f.metadata
    if meta.get("choices"):
        return st.sampled_from(list(meta["choices"]))
    low, high = meta.get("low"), meta.get("high")
    if tp is bool:
        return st.booleans()
    if tp is int:
        lo = int(low) if low is not None else 0
        if not meta.get("low_inclusive", True):
            lo += 1
        hi = int(high) if high is not None else lo + 64
        if not meta.get("high_inclusive", True):
            hi -= 1
        if small and any(w in f.name for w in COSTLY_INT_WORDS):
            hi = min(hi, lo + 3)
        return st.integers(lo, max(lo, hi))
    if tp is float:
        lo = float(low) if low is not None else -10.0
        hi = float(high) if high is not None else 10.0
        return st.floats(lo, hi, exclude_min=not meta.get("low_inclusive", True),
                         exclude_max=not meta.get("high_inclusive", True), allow_nan=False)
    return st.just(f.default)


def _recipes():
    return recipe_names()


@pytest.mark.parametrize("name", _recipes())
def test_any_field_value_validates_or_names_the_field(name):
    cls = get_recipe(name).config_cls
    fields = _fields(cls)
    names = [f.name for f, *_ in fields]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(fields).flatmap(
        lambda spec: st.tuples(st.just(spec[0].name), _any_value(*spec))))
    def check(item):
        field_name, value = item
        try:
            cls(**{field_name: value})
        except UserError as exc:
            msg = str(exc)
            assert "\n" not in msg
            assert any(n in msg for n in names), f"error does not name a field: {msg}"

    check()


def _context_for(tok):
    # the dense teacher of a recovery step (recover): the tiny llama every test here starts from
    return Context(tokenizer=tok, calibration=list(TEXTS), train=list(TEXTS), task="causal-lm",
                   teacher=lambda: tiny_model("llama")[0])


@pytest.mark.parametrize("name", [n for n in _recipes() if not n.endswith("-test")])
def test_validated_configs_do_not_crash_a_tiny_model(name):
    cls = get_recipe(name).config_cls
    fields = [spec for spec in _fields(cls) if spec[0].name != "seed"]
    base_model, tok = tiny_model("llama")

    strategy = st.fixed_dictionaries(
        {f.name: _valid_value(f, tp, opt, small=True) for f, tp, opt in fields}
    )

    @settings(max_examples=3 if name in HEAVY else 8, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def check(values):
        try:
            config = cls(**values)
        except UserError:
            return  # cross-field rule rejected it, with a clear message
        model = copy.deepcopy(base_model)
        try:
            out = compress(model, config, _context_for(tok))
        except UserError:
            return  # e.g. a target this tiny model cannot reach: a clear one-line error
        with torch.inference_mode():
            logits = out(**sample_inputs("llama")).logits
        assert logits.shape[-1] == base_model.config.vocab_size

    check()


@pytest.mark.parametrize("name", [n for n in _recipes() if not n.endswith("-test")])
def test_same_seed_same_weights_and_outputs(name):
    cls = get_recipe(name).config_cls
    # a few training steps show (non-)determinism as well as a full default run
    kw = {"seed": 7} | ({"steps": 10} if "steps" in {f.name for f in dataclasses.fields(cls)}
                        else {})
    results = []
    for _ in range(2):
        model, tok = tiny_model("llama")
        out = compress(model, cls(**kw), _context_for(tok))
        with torch.inference_mode():
            logits = out(**sample_inputs("llama")).logits
        state = {k: v.detach().clone() for k, v in out.state_dict().items()
                 if isinstance(v, torch.Tensor)}
        results.append((state, logits))
    (s1, l1), (s2, l2) = results
    assert s1.keys() == s2.keys()
    for key in s1:
        assert torch.equal(s1[key], s2[key]), f"{name}: {key} differs between identical runs"
    assert torch.equal(l1, l2)
