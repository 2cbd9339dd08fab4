"""Real quantized backends on tiny models: dynamic-int8, onnx-int8, bitsandbytes, quanto, qlora.

Each: outputs close to fp32, save + reload through ``load_compressed`` gives the same
outputs, sizes reported, clear errors for unsupported combinations.
"""

from __future__ import annotations

import pytest
import torch

from compress import Context, UserError, compress, make_config
from compress.api import leftover_attachments
from compress.saving import FORMAT_FILE, load_compressed, save_model
from compress.stats import parameter_counts
from compress.tiny import sample_inputs, tiny_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Compression makes models smaller and faster, if it is done right.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Numbers like 1, 2, 3, 10, 100 and 2026 appear in news text.",
] * 6

CASES = [("gpt2", {}), ("llama", {}), ("bert", {"classifier": True}), ("bert2bert", {})]


def _model(family, kw):
    model, tok = tiny_model(family, **kw)
    return model, tok, sample_inputs(family)


def _out(model, inputs, inference_mode=True):
    with torch.inference_mode() if inference_mode else torch.no_grad():
        o = model(**inputs)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _close(after, before, rel):
    return float((after - before).abs().max()) <= rel * float(before.abs().max()) + 1e-5


def _round_trip(model, tok, inputs, tmp_path, fmt=None, inference_mode=True, atol=1e-6,
                **load_kwargs):
    expected = _out(model, inputs, inference_mode)
    save_model(model, tok, tmp_path / "m")
    if fmt:
        assert fmt in (tmp_path / "m" / FORMAT_FILE).read_text()
    reloaded = load_compressed(tmp_path / "m", **load_kwargs)
    torch.testing.assert_close(_out(reloaded, inputs, inference_mode), expected, rtol=0, atol=atol)
    return reloaded


@pytest.mark.parametrize("family,kw", CASES, ids=[c[0] for c in CASES])
def test_dynamic_int8_close_to_fp32_and_round_trips(family, kw, tmp_path):
    model, tok, inputs = _model(family, kw)
    before = _out(model, inputs)
    dense = parameter_counts(model)
    ctx = Context(tokenizer=tok)
    out = compress(model, make_config("dynamic-int8"), ctx)
    from torch.ao.nn.quantized.dynamic import Linear as DQLinear

    assert sum(isinstance(m, DQLinear) for m in out.modules()) == ctx.info["quant"]["layers"] > 0
    assert _close(_out(out, inputs), before, 0.05)
    counts = parameter_counts(out)  # honours compress_parameter_counts
    assert counts["total"] == dense["total"] and counts["bytes"] < dense["bytes"]
    if family == "gpt2":
        assert ctx.info["quant"]["conv1d_converted"] == 8
    reloaded = _round_trip(out, tok, inputs, tmp_path, "dynamic-int8")
    assert parameter_counts(reloaded) == counts


@pytest.mark.parametrize("family,kw", CASES + [("t5", {})], ids=[c[0] for c in CASES] + ["t5"])
def test_onnx_int8_close_to_fp32_and_round_trips(family, kw, tmp_path):
    model, tok, inputs = _model(family, kw)
    inputs["attention_mask"][0, :3] = 0  # padded rows must match too
    before = _out(model, inputs)
    ctx = Context(tokenizer=tok)
    out = compress(model, make_config("onnx-int8"), ctx)
    assert _close(_out(out, inputs), before, 0.1 if family != "t5" else 0.2)
    assert not leftover_attachments(out)
    counts = parameter_counts(out)
    assert counts["total"] > 0 and counts["bytes"] == ctx.info["quant"]["packed_bytes"]
    assert next(out.parameters()).device.type == "cpu"
    reloaded = _round_trip(out, tok, inputs, tmp_path, "onnx-int8")
    if reloaded.can_generate():
        gen = reloaded.generate(inputs["input_ids"][:1, :5], max_new_tokens=3)
        assert gen.shape[0] == 1 and gen.shape[1] >= 2


@pytest.mark.parametrize("family,kw", CASES, ids=[c[0] for c in CASES])
def test_onnx_int8_quantizes_every_targeted_linear(family, kw):
    """GPT-2's Conv1D traces to Gemm, which ORT's MatMul quantizer would skip: the
    recipe converts it first, so every targeted weight is stored in int8."""
    from compress.quant.layers import select_targets

    model, tok, _ = _model(family, kw)
    targeted = sum(m.weight.numel() for m in select_targets(model).values())
    ctx = Context(tokenizer=tok)
    compress(model, make_config("onnx-int8"), ctx)
    assert ctx.info["quant"]["int8_weights"] >= targeted


@pytest.mark.parametrize("recipe", ["dynamic-int8", "onnx-int8"])
@pytest.mark.parametrize("family,frag", [("llama", "down_proj"), ("gpt2", "c_proj")])
def test_int8_runtimes_keep_named_and_outlier_linears_in_float(recipe, family, frag, tmp_path):
    from compress.quant.layers import select_targets

    model, tok, inputs = _model(family, {})
    named = {n: m.weight.numel() for n, m in select_targets(model).items()
             if n.split(".")[-1] == frag}
    assert named
    full = Context(tokenizer=tok)
    compress(_model(family, {})[0], make_config(recipe), full)
    ctx = Context(tokenizer=tok)
    out = compress(model, make_config(recipe, skip=frag), ctx)
    q = ctx.info["quant"]
    assert set(q["kept_in_float"]) == set(named)
    if recipe == "dynamic-int8":
        assert q["layers"] == full.info["quant"]["layers"] - len(named)
        for name in named:
            assert type(out.get_submodule(name)) is torch.nn.Linear
        _round_trip(out, tok, inputs, tmp_path, "dynamic-int8")
    else:
        dropped = full.info["quant"]["int8_weights"] - q["int8_weights"]
        assert 0 <= dropped - sum(named.values()) <= len(named)  # + one int8 zero point each
    # a threshold on calibration activations: above every input keeps nothing, below
    # every input would keep everything, which is refused
    cal = Context(tokenizer=tok, calibration=TEXTS)
    compress(_model(family, {})[0], make_config(recipe, outlier_threshold=1e9), cal)
    assert cal.info["quant"]["kept_in_float"] is None
    with pytest.raises(UserError, match="nothing is quantized"):
        compress(_model(family, {})[0], make_config(recipe, outlier_threshold=1e-9),
                 Context(tokenizer=tok, calibration=TEXTS))
    with pytest.raises(UserError, match="matches no quantized linear"):
        compress(_model(family, {})[0], make_config(recipe, skip="no_such_proj"),
                 Context(tokenizer=tok))


@pytest.mark.parametrize("no_vnni", [True, False])
def test_onnx_int8_per_channel_uses_7_bit_weights_where_int16_sums_would_overflow(no_vnni, monkeypatch):
    from compress.quant import onnx as onnx_q

    monkeypatch.setattr(onnx_q, "x86_without_vnni", lambda: no_vnni)
    for per_channel, given, expected in [(True, None, no_vnni), (False, None, False),
                                         (True, False, False), (False, True, True)]:
        model, tok, _ = _model("llama", {})
        ctx = Context(tokenizer=tok)
        compress(model, make_config("onnx-int8", per_channel=per_channel, reduce_range=given), ctx)
        assert ctx.info["quant"]["reduce_range"] is expected
        assert ctx.info["quant"]["weights"].startswith("int7" if expected else "int8")


def test_onnx_int8_loss_matches_the_model_and_rejects_gpu():
    model, tok, inputs = _model("llama", {})
    with torch.inference_mode():
        ref = model(**inputs, labels=inputs["input_ids"]).loss
    out = compress(model, make_config("onnx-int8"), Context(tokenizer=tok))
    loss = out(**inputs, labels=inputs["input_ids"]).loss
    assert abs(float(loss) - float(ref)) < 0.05 * float(ref)
    with pytest.raises(UserError, match="CPU only"):
        out.to("cuda")


@pytest.mark.parametrize("recipe,kw,rel", [
    ("bnb-int8", {}, 0.05),
    ("bnb-4bit", {"quant_type": "nf4"}, 0.5),
    ("bnb-4bit", {"quant_type": "fp4", "double_quant": False}, 0.5),
])
@pytest.mark.parametrize("family", ["gpt2", "llama", "bert2bert"])
def test_bitsandbytes_formats_run_and_round_trip(recipe, kw, rel, family, tmp_path):
    import bitsandbytes as bnb

    model, tok, inputs = _model(family, {})
    before = _out(model, inputs)
    dense = parameter_counts(model)
    ctx = Context(tokenizer=tok)
    out = compress(model, make_config(recipe, **kw), ctx)
    layer = bnb.nn.Linear8bitLt if recipe == "bnb-int8" else bnb.nn.Linear4bit
    assert sum(isinstance(m, layer) for m in out.modules()) == ctx.info["quant"]["layers"] > 0
    assert _close(_out(out, inputs), before, rel)
    info = ctx.info["quant"]
    assert info["device"] == "cpu" and "runs_faster_here" not in info  # measured, not stated
    assert parameter_counts(out)["total"] == dense["total"]
    # from_pretrained puts a bitsandbytes model on the GPU when there is one; ask for the CPU.
    # On CPUs with AVX-512 BF16 bitsandbytes repacks 4-bit weights with bf16 scales when it
    # first runs them, in memory and again after a reload: equal to ~1e-3 of the logits.
    scale = float(before.abs().max())
    _round_trip(out, tok, inputs, tmp_path, device_map="cpu",
                atol=1e-6 if recipe == "bnb-int8" else 1e-3 * scale)


@pytest.mark.parametrize("recipe,bits", [("bnb-4bit", 2), ("bnb-4bit", 3), ("bnb-int8", 4)])
def test_bitsandbytes_rejects_other_bit_widths(recipe, bits):
    with pytest.raises(UserError, match=rf"bits={bits} is not supported.*rtn or gptq") as err:
        make_config(recipe, bits=bits)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kw", [{"weights": "int8"}, {"weights": "int4", "activations": "int8"}],
                         ids=["w8", "w4a8"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_quanto_runs_and_round_trips(kw, family, tmp_path):
    model, tok, inputs = _model(family, {})
    before = _out(model, inputs)
    ctx = Context(tokenizer=tok, calibration=list(TEXTS))
    out = compress(model, make_config("quanto", **kw), ctx)
    int8 = kw["weights"] == "int8"
    assert _close(_out(out, inputs), before, 0.05 if int8 else 0.5)
    torch.testing.assert_close(_out(out, inputs, inference_mode=False), _out(out, inputs))
    assert ctx.info["quant"]["packed_bytes"] < ctx.info["quant"]["dense_bytes"]
    _round_trip(out, tok, inputs, tmp_path, "quanto")


def test_quanto_activations_need_calibration():
    model, tok, _ = _model("llama", {})
    with pytest.raises(UserError, match="calibration"):
        compress(model, make_config("quanto", activations="int8"), Context(tokenizer=tok))


def test_qlora_fp32_merge_starts_from_nf4_and_training_lowers_the_loss(tmp_path):
    model, tok, inputs = _model("llama", {})
    nf4, _, _ = _model("llama", {})
    nf4 = compress(nf4, make_config("bnb-4bit"), Context(tokenizer=tok))
    ctx = Context(tokenizer=tok, train=list(TEXTS), task="causal-lm")
    # zero steps: the dequantized NF4 base, exactly what the 4-bit layers compute
    out = compress(model, make_config("qlora", steps=0, merge="fp32"), ctx)
    torch.testing.assert_close(_out(out, inputs), _out(nf4, inputs), rtol=0, atol=1e-5)

    model, tok, inputs = _model("llama", {})
    ctx = Context(tokenizer=tok, train=list(TEXTS) * 4, task="causal-lm")
    out = compress(model, make_config("qlora", steps=12, seq_len=16, lr=1e-2, merge="fp32"), ctx)
    training = ctx.info["quant"]["training"]
    assert training["loss_last"] < training["loss_first"]
    assert not any("lora" in n for n, _ in out.named_parameters())
    _round_trip(out, tok, inputs, tmp_path, device_map="cpu")  # not the GPU, where there is one


def test_qlora_nf4_merge_stays_4bit_and_round_trips(tmp_path):
    import bitsandbytes as bnb

    model, tok, inputs = _model("gpt2", {})
    ctx = Context(tokenizer=tok, train=list(TEXTS) * 4, task="causal-lm")
    out = compress(model, make_config("qlora", steps=2, seq_len=16), ctx)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in out.modules())
    assert not any("lora" in n for n, _ in out.named_parameters())
    # not the GPU, where there is one; bf16 scales after bitsandbytes' AVX-512 repacking
    scale = float(_out(out, inputs).abs().max())
    _round_trip(out, tok, inputs, tmp_path, device_map="cpu", atol=1e-3 * scale)


@pytest.mark.parametrize("name", ["rtn", "gptq", "bnb-int8", "bnb-4bit", "dynamic-int8",
                                  "onnx-int8", "quanto", "qlora"])
def test_recipe_flags_do_not_clash_with_the_command_line(name):
    import argparse

    from compress.cli import add_config_arguments, add_model_arguments
    from compress.registry import get_recipe

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    parser.add_argument("--out")
    add_config_arguments(parser, get_recipe(name).config_cls)  # raises on a clash
    assert get_recipe(name).summary


@pytest.mark.parametrize("family", ["gpt2", "llama", "opt"])
def test_onnx_causal_graph_carries_the_kv_cache_and_generates_like_the_model(family, tmp_path):
    """The exported KV cache: greedy tokens of the fp32 graph, one token per step, equal
    Hugging Face's cached greedy decoding on a left-padded batch; the int8 graph keeps
    the cache through save/reload; ``kv_cache=False`` exports the cache-free graph."""
    from compress.quant import onnx as onnx_q
    from compress.quant.modules import conv1d_to_linear

    model, tok, _ = _model(family, {})
    conv1d_to_linear(model)
    model.eval()
    prompt = torch.randint(5, 400, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(prompt)
    mask[0, :2] = 0
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    prompt[0, :2] = pad
    ref = model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=8,
                         min_new_tokens=8, do_sample=False, pad_token_id=pad)
    fp32 = onnx_q.build(model, "causal-lm", per_channel=False, reduce_range=False, quantize=False)
    n_layers = model.config.num_hidden_layers
    assert len(fp32.cache_shapes) == n_layers
    assert len(fp32.session.get_inputs()) == 3 + 2 * n_layers
    got = fp32.generate(prompt, attention_mask=mask, max_new_tokens=8, eos_token_id=-1)
    assert torch.equal(got, ref)
    # a plain forward (prefill through the cache graph) matches the model's own forward
    with torch.no_grad():
        want = model(input_ids=prompt, attention_mask=mask).logits
    torch.testing.assert_close(fp32(input_ids=prompt, attention_mask=mask).logits, want,
                               rtol=1e-4, atol=1e-4)

    ctx = Context(tokenizer=tok)
    out = compress(model, make_config("onnx-int8"), ctx)
    assert ctx.info["quant"]["kv_cache"] is True
    save_model(out, tok, tmp_path / "m")
    back = load_compressed(tmp_path / "m")
    assert back.cache_shapes == out.cache_shapes
    assert torch.equal(back.generate(prompt, attention_mask=mask, max_new_tokens=4, eos_token_id=-1),
                       out.generate(prompt, attention_mask=mask, max_new_tokens=4, eos_token_id=-1))
    plain = onnx_q.build(model, "causal-lm", per_channel=False, reduce_range=False, quantize=False,
                         kv_cache=False)
    assert plain.cache_shapes is None and len(plain.session.get_inputs()) == 2
    assert torch.equal(plain.generate(prompt, attention_mask=mask, max_new_tokens=8,
                                      eos_token_id=-1), ref)
