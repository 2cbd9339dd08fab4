"""Structured removal of FFN neurons and attention heads on tiny models of every family."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers as tf

from compress import Context, UserError, compress, make_config
from compress.calibration import CalibrationSpec, draw
from compress.pruning import importance as imp
from compress.pruning import surgery
from compress.saving import load_compressed, save_model
from compress.tiny import TINY_FAMILIES, sample_inputs, tiny_model

TEXTS = ["The quick brown fox jumps over the lazy dog. Compression makes models smaller.",
         "The capital of France is Paris, and the capital of Italy is Rome."] * 8
PAIRS = [("the quick brown fox jumps", "The quick brown fox jumps."),
         ("paris is the capital of france", "Paris is the capital of France.")] * 8
TASK = {"bert": "embedding", "gpt2": "causal-lm", "llama": "causal-lm", "opt": "causal-lm",
        "t5": "seq2seq", "bart": "seq2seq", "bert2bert": "seq2seq"}
SPEC = CalibrationSpec(sequences=4, seq_len=16)


def context(family, tok):
    data = PAIRS if TASK[family] == "seq2seq" else TEXTS
    return Context(tokenizer=tok, calibration=data, train=data, task=TASK[family], calib=SPEC)


def outputs(model, family):
    with torch.inference_mode():
        out = model(**sample_inputs(family))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _roles(model):
    return {b.role for b in surgery.ffn_blocks(model)}


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("importance", ["magnitude", "activation", "taylor"])
def test_removed_equals_masked_and_round_trips(family, importance, tmp_path):
    if importance == "taylor" and TASK[family] == "embedding":
        pytest.skip("a bare encoder has no loss")
    model, tok = tiny_model(family)
    ctx = context(family, tok)
    batches = draw(tok, ctx.calibration, TASK[family], SPEC).batches(2)
    scores = {"magnitude": lambda: imp.magnitude_scores(model),
              "activation": lambda: imp.activation_scores(model, batches),
              "taylor": lambda: imp.taylor_scores(model, batches, TASK[family])}[importance]()
    units = {u.block.role: imp.removal_units(u, "query")
             for u in surgery.attention_units(model)}
    width = {b.role: b.linears["ffn_out"].weight.shape[0 if b.conv1d else 1]
             for b in surgery.ffn_blocks(model)}
    ffn = {r: n // 2 for r, n in width.items()}  # half the neurons go
    heads = {r: n // 2 for r, n in units.items()}
    sel = imp.select(model, scores, ffn, heads)
    masked = copy.deepcopy(model)
    surgery.mask_selection(masked, sel)
    params_before = sum(p.numel() for p in model.parameters())
    surgery.apply_selection(model, sel)
    assert sum(p.numel() for p in model.parameters()) < params_before
    for b in surgery.ffn_blocks(model):
        assert b.linears["ffn_out"].weight.shape[0 if b.conv1d else 1] == width[b.role] // 2
    torch.testing.assert_close(outputs(model, family), outputs(masked, family),
                               rtol=1e-4, atol=1e-5)
    save_model(model, tok, tmp_path / "m")
    again = load_compressed(tmp_path / "m")
    torch.testing.assert_close(outputs(again, family), outputs(model, family), rtol=0, atol=0)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items(),
                                  strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_ffn_removal_reloads_with_plain_from_pretrained(family, tmp_path):
    model, tok = tiny_model(family)
    ctx = context(family, tok)
    out = compress(model, make_config("structured", ffn_ratio=0.5), ctx)
    info = ctx.info["structured"]
    assert all(v["after"] == v["before"] // 2 and v["removed_fraction"] == 0.5
               for v in info["ffn"].values())
    assert info["reload"] == "from_pretrained"
    out.config.architectures = [type(out).__name__]
    out.save_pretrained(tmp_path / "m")
    cls = getattr(tf, type(out).__name__)
    again = cls.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(outputs(again.eval(), family), outputs(out, family),
                               rtol=0, atol=0)


def test_llama_heads_and_gqa_recorded_in_config(tmp_path):
    model, tok = tiny_model("llama")  # 4 heads, 2 KV heads, head_dim 8
    ctx = context("llama", tok)
    compress(model, make_config("structured", ffn_ratio=0.25, heads_ratio=0.5), ctx)
    cfg = model.config
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim) == (48, 2, 2, 8)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.out_features == 16 and attn.k_proj.out_features == 16
    assert attn.num_key_value_groups == 1
    model.save_pretrained(tmp_path / "m")
    again = tf.LlamaForCausalLM.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(outputs(again.eval(), "llama"), outputs(model, "llama"),
                               rtol=0, atol=0)


def test_gqa_group_mode_removes_kv_groups():
    model, tok = tiny_model("llama")
    ref = copy.deepcopy(model)
    scores = imp.magnitude_scores(model)
    sel = imp.select(model, scores, {}, {"decoder": 1}, gqa="group")
    keep_q, keep_kv = next(iter(sel.heads.values()))
    assert len(keep_kv) == 1 and len(keep_q) == 2
    assert (keep_q // 2 == keep_kv[0]).all()  # the kept query heads are the kept group's
    surgery.mask_selection(ref, sel)
    surgery.apply_selection(model, sel)
    assert model.config.num_key_value_heads == 1 and model.config.num_attention_heads == 2
    torch.testing.assert_close(outputs(model, "llama"), outputs(ref, "llama"),
                               rtol=1e-4, atol=1e-5)


def test_t5_heads_shared_across_blocks_with_relative_bias():
    model, tok = tiny_model("t5")
    ref = copy.deepcopy(model)
    batches = draw(tok, PAIRS, "seq2seq", SPEC).batches(2)
    sel = imp.select(model, imp.activation_scores(model, batches), {},
                         {"encoder": 2, "decoder": 2})
    enc_self = [v[0].tolist() for k, v in sel.heads.items()
                if k.startswith("encoder.") and "SelfAttention" in k]
    assert len(enc_self) == 2 and enc_self[0] == enc_self[1]
    surgery.mask_selection(ref, sel)
    surgery.apply_selection(model, sel)
    bias = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias
    assert bias.weight.shape[1] == 2 and model.config.num_heads == 2
    torch.testing.assert_close(outputs(model, "t5"), outputs(ref, "t5"), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "gpt2", "bart"])
def test_heads_outside_config_use_the_structured_loader(family, tmp_path):
    model, tok = tiny_model(family)
    ctx = context(family, tok)
    compress(model, make_config("structured", ffn_ratio=0.5, heads_ratio=0.25,
                                importance="magnitude"), ctx)
    assert ctx.info["structured"]["reload"].startswith("compress.saving.load_compressed")
    save_model(model, tok, tmp_path / "m")
    marker = json.loads((tmp_path / "m" / "compress_format.json").read_text())
    assert marker["format"] == "structured-heads"
    again = load_compressed(tmp_path / "m")
    torch.testing.assert_close(outputs(again, family), outputs(model, family), rtol=0, atol=0)


def test_iterative_structured_with_finetuning_reaches_the_target():
    model, tok = tiny_model("gpt2")
    ctx = context("gpt2", tok)
    compress(model, make_config("structured", ffn_ratio=0.5, iterative_steps=2,
                                finetune_steps=2, finetune_seq_len=16, importance="magnitude"),
             ctx)
    assert model.config.n_inner == 64
    steps = ctx.info["pruning_steps"]
    removed = [s["removed"]["ffn"]["decoder"] for s in steps]
    assert sum(removed) == 64 and all(r > 0 for r in removed)
    assert all("finetune" in s for s in steps)


def test_structured_errors():
    model, tok = tiny_model("llama")
    with pytest.raises(UserError, match="heads_ratio=0.1 removes no head"):
        compress(model, make_config("structured", heads_ratio=0.1, importance="magnitude"),
                 context("llama", tok))
    with pytest.raises(UserError, match="heads_ratio=0.9 would remove every"):
        compress(model, make_config("structured", heads_ratio=0.9, importance="magnitude"),
                 context("llama", tok))
    with pytest.raises(UserError, match="all 0: nothing to remove"):
        make_config("structured", ffn_ratio=0.0)
    with pytest.raises(UserError, match="rewind"):
        make_config("structured", rewind=True, finetune_steps=1)
    bert, btok = tiny_model("bert")
    with pytest.raises(UserError, match="taylor needs a loss"):
        compress(bert, make_config("structured", importance="taylor"),
                 context("bert", btok))
