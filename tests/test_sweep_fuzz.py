"""Fuzzing the sweep file: every input validates, or fails with one line naming the field.

Hypothesis builds sweep files from the schema (``eval.sweep.spec``): every known key,
unknown keys, values of every TOML type in and out of range, pipelines of tables and
strings, grids; plus raw text. ``load_sweep`` must either return a sweep or raise a
one-line :class:`UserError` that names the file and the offending key.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress.errors import UserError
from eval.sweep import load_sweep
from eval.sweep.spec import DEFAULT_KEYS, RUN_KEYS, TOP_KEYS

# --------------------------------------------------------------------------- TOML writer


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict) -> str:
    """TOML for ``doc``: scalars and inline tables first, then ``[defaults]`` and
    ``[[runs]]`` tables (a ``runs`` that is not a list of tables stays inline)."""
    lines, tables = [], []
    for k, v in doc.items():
        if k == "defaults" and isinstance(v, dict):
            tables.append(("[defaults]", v))
        elif k == "runs" and isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            tables.extend(("[[runs]]", r) for r in v)
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    for head, body in tables:
        lines.append(head)
        lines.extend(f"{_key(k)} = {_value(x)}" for k, x in body.items())
    return "\n".join(lines) + "\n"


def test_the_writer_round_trips():
    import tomllib

    doc = {"name": "x", "odd key": [1, 2.5, "s\n\"q\""], "defaults": {"quick": True},
           "runs": [{"recipe": "rtn", "grid": {"bits": [8, 4]}}, {"pipeline": ["rtn"]}]}
    assert tomllib.loads(to_toml(doc)) == doc


# --------------------------------------------------------------------------- strategies

SCALARS = st.one_of(
    st.booleans(), st.integers(-3, 10**6), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["", "0.5", "2:4", "rtn bits=4", "../x", "a/b"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)
RECIPES = st.sampled_from(["identity", "magnitude", "wanda", "rtn", "gptq", "structured",
                           "moefy", "distill", "qlora", "dynamic-int8", "no-such-recipe"])
FIELDS = st.sampled_from(["sparsity", "bits", "pattern", "nsamples", "seq_len", "ffn_ratio",
                          "num_experts", "group_size", "granularity", "steps", "scope",
                          "seed", "unknown_field"])
FIELD_VALUES = st.one_of(
    VALUES, st.floats(0, 1), st.sampled_from([2, 3, 4, 8, 16, 64, 128, "2:4", "group", "row"]))


def _unknown(keys: tuple[str, ...]):
    return st.text(min_size=1, max_size=10).filter(lambda k: k not in keys)


@st.composite
def grids(draw):
    return draw(st.one_of(
        st.dictionaries(st.one_of(FIELDS, st.sampled_from(["rtn.bits", "0.bits", "9.x",
                                                           "wanda.sparsity", "a.b.c"])),
                        st.one_of(st.lists(FIELD_VALUES, max_size=3), VALUES), max_size=2),
        VALUES))


@st.composite
def steps(draw):
    if draw(st.booleans()):
        return draw(st.one_of(st.sampled_from(["rtn bits=4", "wanda sparsity=0.5", "rtn",
                                               "magnitude x", "", "nope k=v"]),
                              st.text(max_size=15)))
    step = {"recipe": draw(st.one_of(RECIPES, VALUES))} if draw(st.booleans()) else {}
    step.update(draw(st.dictionaries(FIELDS, FIELD_VALUES, max_size=2)))
    return step


@st.composite
def runs(draw, model: str):
    run: dict = {}
    if draw(st.integers(0, 9)) > 0:
        if draw(st.booleans()):
            run["recipe"] = draw(st.one_of(RECIPES, VALUES))
        else:
            run["pipeline"] = draw(st.one_of(st.lists(steps(), max_size=3), VALUES))
    for key in draw(st.lists(st.sampled_from(RUN_KEYS[2:]), max_size=3, unique=True)):
        if key in ("grid", "quick_grid"):
            run[key] = draw(grids())
        elif key == "models":
            run[key] = draw(st.one_of(st.just([model]), st.lists(st.sampled_from(
                [model, "minilm-l6", "no-such-model", "/no/such/folder"]), max_size=2), VALUES))
        else:
            run[key] = draw(st.one_of(st.booleans(), VALUES))
    run.update(draw(st.dictionaries(st.one_of(FIELDS, _unknown(RUN_KEYS)), FIELD_VALUES,
                                    max_size=2)))
    return run


@st.composite
def sweep_docs(draw, model: str, reports: str):
    doc: dict = {}
    for key in draw(st.lists(st.sampled_from(TOP_KEYS), max_size=len(TOP_KEYS), unique=True)):
        if key == "models":
            doc[key] = draw(st.one_of(st.just([model]), st.lists(st.sampled_from(
                [model, "minilm-l6", "smollm2-135m", "no-such-model", "owner/name"]),
                max_size=3), VALUES))
        elif key == "runs":
            doc[key] = draw(st.one_of(st.lists(runs(model), min_size=1, max_size=3), VALUES))
        elif key == "defaults":
            d = {}
            for dk in draw(st.lists(st.sampled_from(DEFAULT_KEYS), max_size=5, unique=True)):
                d[dk] = reports if dk == "reports" and draw(st.booleans()) else draw(
                    st.one_of(VALUES, st.sampled_from([1, 2, 0, -1, True, "causal-lm"])))
            d.update(draw(st.dictionaries(_unknown(DEFAULT_KEYS), VALUES, max_size=1)))
            doc[key] = draw(st.one_of(st.just(d), VALUES))
        elif key == "imports":  # never import arbitrary modules: known, missing, odd names
            doc[key] = draw(st.one_of(st.lists(st.sampled_from(
                ["sweep_helpers", "no_such_module_xyz", "", "..x", "compress"]), max_size=2),
                SCALARS))
        elif key == "budgets":
            doc[key] = draw(st.one_of(st.lists(st.one_of(st.sampled_from(
                ["size=0.5", "latency=0.3", "size=2", "nope=0.1", "size="]), SCALARS),
                max_size=2), VALUES))
        else:
            doc[key] = draw(VALUES)
    doc.update(draw(st.dictionaries(_unknown(TOP_KEYS), VALUES, max_size=1)))
    return doc


# --------------------------------------------------------------------------- the property


def _keys_of(obj, out: set[str]) -> set[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.add(str(k))
            _keys_of(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _keys_of(v, out)
    return out


def check_file(path: Path, names: set[str]) -> None:
    try:
        load_sweep(path)
    except UserError as exc:
        msg = str(exc)
        assert "\n" not in msg, msg
        assert msg.startswith(path.name) or str(path) in msg, msg
        named = any(n and n in msg for n in names) or re.search(
            r"runs\[\d+\]|not valid TOML|no \[\[runs\]\]|does not exist", msg)
        assert named, f"error does not name a field: {msg}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from compress.tiny import tiny_model

    model, tok = tiny_model("llama")
    model.config.architectures = ["LlamaForCausalLM"]
    out = tmp_path_factory.mktemp("fuzzmodel") / "llama"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_any_sweep_file_validates_or_names_the_field(tmp_path_factory, model_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    folder = tmp_path_factory.mktemp("fuzz")
    reports = str(folder / "reports")

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(sweep_docs(model_dir, reports))
    def check(doc):
        path = folder / "fuzz.toml"
        path.write_text(to_toml(doc), encoding="utf-8")
        check_file(path, _keys_of(doc, set(TOP_KEYS)))

    check()


def test_any_text_validates_or_names_the_field(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzztext")

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.text(max_size=80), st.sampled_from([
        "name = 'x'\n", "[[runs]]\nrecipe = 1\n", "runs = 5\n", "[defaults]\nthreads = true\n",
        "models = ['minilm-l6']\n[[runs]]\nrecipe = 'rtn'\nbits = 99\n", "\x00", "[a\n"])))
    def check(text):
        path = folder / "text.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        check_file(path, set(TOP_KEYS) | set(DEFAULT_KEYS) | set(RUN_KEYS))

    check()
