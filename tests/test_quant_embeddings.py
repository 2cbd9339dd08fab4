"""Embedding tables and the LM head on the int8 / int4 grid (the ``embeddings`` option of
rtn and gptq): bytes saved, tied tensors once, saved models reload exactly, quality kept."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from compress import Context, compress, make_config
from compress.quant.embeddings import embedding_spec, embedding_targets, plan_bytes
from compress.quant.grid import unique_parameters
from compress.saving import load_compressed, save_model
from compress.tiny import sample_inputs, tiny_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Compression makes models smaller and faster, if it is done right.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
] * 3


def _out(model, family):
    with torch.inference_mode():
        o = model(**sample_inputs(family))
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _run(family, recipe="rtn", model=None, **options):
    model, tok = (model, tiny_model(family)[1]) if model is not None else tiny_model(family)
    ctx = Context(tokenizer=tok, calibration=list(TEXTS))
    bits = options.pop("bits", 8)
    out = compress(model, make_config(recipe, bits=bits, granularity="channel", **options), ctx)
    return out, tok, ctx.info["quant"]


def _packed_table_bytes(rows, cols, bits):
    """int8: symmetric, fp16 scale per row; int4: asymmetric, + a 4-bit zero per row."""
    zeros = math.ceil(rows * bits / 8) if bits == 4 else 0
    return math.ceil(rows * cols * bits / 8) + 2 * rows + zeros


@pytest.mark.parametrize("family", ["llama", "bert", "bart"])
@pytest.mark.parametrize("choice,bits", [("int8", 8), ("int4", 4)])
def test_packed_bytes_drop_by_the_tables_fp32_bytes_minus_their_packed_bytes(family, choice,
                                                                             bits):
    base, _ = tiny_model(family)
    _, _, plain = _run(family, model=copy.deepcopy(base))
    tables = embedding_targets(base)
    assert tables, family
    expected = sum(4 * m.weight.numel() - _packed_table_bytes(*m.weight.shape, bits)
                   for m in tables.values())
    _, _, packed = _run(family, model=copy.deepcopy(base), embeddings=choice)
    assert plain["dense_bytes"] == packed["dense_bytes"]
    assert plain["packed_bytes"] - packed["packed_bytes"] == expected
    assert packed["embedding_tables"] == sorted(tables)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_a_tied_tensor_is_rounded_once_and_counted_once(family):
    base, _ = tiny_model(family)
    shared = base.get_input_embeddings().weight
    holders = [n for n, p in base.named_parameters(remove_duplicate=False) if p is shared]
    assert len(holders) >= 2, holders  # tied to the LM head (and T5's encoder/decoder tables)
    _, _, plain = _run(family, model=copy.deepcopy(base))
    model, _, info = _run(family, model=base, embeddings="int8")
    weight = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is weight  # still one tensor
    # one table for the shared tensor, whatever number of modules hold it
    ptrs = [dict(model.named_modules())[n].weight.data_ptr() for n in info["embedding_tables"]]
    assert len(ptrs) == len(set(ptrs)) and weight.data_ptr() in ptrs
    others = [m for n, m in embedding_targets(tiny_model(family)[0]).items()
              if m.weight.shape != weight.shape]
    expected = 4 * weight.numel() - _packed_table_bytes(*weight.shape, 8) + sum(
        4 * m.weight.numel() - _packed_table_bytes(*m.weight.shape, 8) for m in others)
    assert plain["packed_bytes"] - info["packed_bytes"] == expected
    # int8 per row: at most 255 distinct values in each row
    assert max(len(torch.unique(r)) for r in weight) <= 255
    dense = sum(p.numel() * p.element_size() for _, p in unique_parameters(model))
    assert info["dense_bytes"] == dense


def test_rows_lie_on_their_own_grid_and_zero_stays_zero():
    model, _, _ = _run("llama", embeddings="int4")
    table = model.get_input_embeddings().weight
    for row in table[:8]:
        assert len(torch.unique(row)) <= 16
    assert len(torch.unique(table)) > 16  # one scale per row, not per tensor
    m, _ = tiny_model("bert")
    pad = m.embeddings.word_embeddings.padding_idx
    m.embeddings.word_embeddings.weight.data[pad] = 0.0
    out, _, _ = _run("bert", model=m, embeddings="int4")
    assert torch.equal(out.embeddings.word_embeddings.weight[pad],
                       torch.zeros_like(out.embeddings.word_embeddings.weight[pad]))


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "t5", "bert2bert"])
@pytest.mark.parametrize("recipe", ["rtn", "gptq"])
def test_the_saved_model_reloads_with_the_same_outputs(family, recipe, tmp_path):
    model, tok, info = _run(family, recipe, embeddings="int4")
    assert info["embeddings"] == "int4" and info["embedding_packed_bytes"] > 0
    after = _out(model, family)
    save_model(model, tok, tmp_path / "m")
    reloaded = load_compressed(tmp_path / "m")
    torch.testing.assert_close(_out(reloaded, family), after, rtol=0, atol=0)
    emb = reloaded.get_input_embeddings().weight
    assert max(len(torch.unique(r)) for r in emb[:16]) <= 16


@pytest.mark.parametrize("recipe", ["awq", "hqq"])
def test_the_other_weight_quantizers_take_the_option_too(recipe, tmp_path):
    base, _ = tiny_model("llama")
    _, _, plain = _run("llama", recipe, model=copy.deepcopy(base), bits=4)
    model, tok, info = _run("llama", recipe, model=base, bits=4, embeddings="int8")
    assert plain["packed_bytes"] - info["packed_bytes"] == sum(
        4 * m.weight.numel() - _packed_table_bytes(*m.weight.shape, 8)
        for m in embedding_targets(tiny_model("llama")[0]).values())
    after = _out(model, "llama")
    save_model(model, tok, tmp_path / "m")
    torch.testing.assert_close(_out(load_compressed(tmp_path / "m"), "llama"), after,
                               rtol=0, atol=0)


@pytest.mark.parametrize("family,choice", [("llama", "int8"), ("bert", "int4")])
def test_untied_tables_are_written_as_integer_codes_that_transformers_loads(family, choice,
                                                                            tmp_path):
    """Symmetric 4-bit linears are written packed (compressed-tensors pack-quantized), the
    untied tables as one integer code per weight with a scale per row (int-quantized):
    ``mixed-precision``. Plain ``from_pretrained`` (no suite code) gives the same outputs."""
    import json

    from safetensors import safe_open

    from compress.export import compressed_tensors as ct

    model, tok, info = _run(family, bits=4, scheme="sym", embeddings=choice)
    after = _out(model, family)
    save_model(model, tok, tmp_path / "m")
    qconfig = json.loads((tmp_path / "m" / "config.json").read_text())["quantization_config"]
    assert qconfig["format"] == "mixed-precision"
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        for name in info["embedding_tables"]:
            assert f.get_tensor(f"{name}.weight").dtype == torch.int8, name
            assert f.get_tensor(f"{name}.weight_scale").shape[0] == f.get_tensor(
                f"{name}.weight").shape[0]  # one scale per row
    torch.testing.assert_close(_out(load_compressed(tmp_path / "m"), family), after,
                               rtol=0, atol=0)
    cls = type(model)
    plain = ct.plain(cls.from_pretrained(tmp_path / "m", dtype=torch.float32))
    torch.testing.assert_close(_out(plain.eval(), family), after, rtol=0, atol=0)
    tables = sum(4 * dict(model.named_modules())[n].weight.numel()
                 for n in info["embedding_tables"])
    dense_dir = tmp_path / "dense"
    tiny_model(family)[0].save_pretrained(dense_dir)
    saved = (tmp_path / "m" / "model.safetensors").stat().st_size
    # the tables take a byte per weight on disk (int-quantized), not four
    assert saved < (dense_dir / "model.safetensors").stat().st_size - tables // 2


def test_a_tied_table_stays_a_float_tensor_of_grid_values_on_disk(tmp_path):
    from safetensors import safe_open

    model, tok, info = _run("t5", embeddings="int8")
    after = _out(model, "t5")
    save_model(model, tok, tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("shared.weight").dtype == torch.float32
    reloaded = load_compressed(tmp_path / "m")
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    torch.testing.assert_close(_out(reloaded, "t5"), after, rtol=0, atol=0)


def test_quality_change_is_bounded_and_int8_beats_int4():
    base, _ = tiny_model("llama", width=64)
    dense = _out(base, "llama")
    errs = {}
    for choice in ("int8", "int4"):
        # only the tables change: rtn's linears at 8 bits are the same in both runs
        model, _, _ = _run("llama", model=copy.deepcopy(base), embeddings=choice)
        reference, _, _ = _run("llama", model=copy.deepcopy(base))
        errs[choice] = float((_out(model, "llama") - _out(reference, "llama")).abs().max()
                             / dense.abs().max())
    assert 0 < errs["int8"] < 0.02, errs
    assert errs["int8"] < errs["int4"] < 0.3, errs


def test_fixed_tables_and_tensors_already_quantized_are_left_alone():
    marian, _ = tiny_model("marian")
    names = embedding_targets(marian)
    fixed = [n for n, m in marian.named_modules()
             if isinstance(m, torch.nn.Embedding) and not m.weight.requires_grad]
    assert fixed and not set(fixed) & set(names)  # sinusoidal positions: recomputed on load
    # rtn include_head already put the tied head (= the token table) on the layer grid
    model, _, info = _run("gpt2", include_head=True, embeddings="int8", bits=4)
    assert "lm_head" not in (info["embedding_tables"] or [])
    assert "transformer.wte" not in (info["embedding_tables"] or [])


@pytest.mark.parametrize("family", ["gpt2", "bert2bert"])
def test_the_tables_cost_is_known_before_compressing(family):
    """What the budget search needs: the packed bytes of the tables, without a run."""
    base, _ = tiny_model(family)
    planned = plan_bytes(embedding_targets(base), embedding_spec("int4"))
    _, _, info = _run(family, model=base, embeddings="int4")
    assert sum(b["total"] for b in planned.values()) == info["embedding_packed_bytes"]
    assert sorted(planned) == info["embedding_tables"]


def test_none_changes_nothing():
    base, _ = tiny_model("bert")
    model, _, info = _run("bert", model=copy.deepcopy(base))
    for name, mod in embedding_targets(base).items():
        assert torch.equal(dict(model.named_modules())[name].weight, mod.weight)
    assert info["embeddings"] == "none" and info["embedding_tables"] is None
