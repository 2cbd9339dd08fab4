"""The ``runtime`` recipe: ONNX Runtime and OpenVINO graphs with their KV cache, on tiny
models of the three architectures; same outputs and greedy tokens as eager PyTorch in
fp32, int8/int4 close, save and reload."""

from __future__ import annotations

import pytest
import torch

from compress import Context, compress, make_config
from compress.saving import load_compressed, save_model
from compress.tiny import sample_inputs, tiny_model

pytest.importorskip("onnxruntime")

FAMILIES = {
    "llama": ("llama", {}, "causal-lm"),
    "gpt2": ("gpt2", {}, "causal-lm"),
    "bert-cls": ("bert", {"classifier": True}, "classification"),
    "t5": ("t5", {}, "seq2seq"),
    "bert2bert": ("bert2bert", {}, "seq2seq"),
}
ENGINES = ["onnxruntime", "openvino"]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _out(model, x):
    with torch.no_grad():
        out = model(**x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _prompt(tok):
    tok.padding_side = "left"  # decoder-only generation pads on the left
    return tok(["The quick brown fox", "A mixture of"], return_tensors="pt", padding=True)


def _generate(model, tok, prompt):
    with torch.no_grad():
        return model.generate(**prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                              pad_token_id=tok.pad_token_id)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("key", FAMILIES)
def test_fp32_engine_matches_eager_with_its_cache_and_round_trips(key, engine, tmp_path):
    if engine == "openvino":
        pytest.importorskip("openvino")
    family, kw, task = FAMILIES[key]
    model, tok = tiny_model(family, **kw)
    x = sample_inputs(family)
    ref = _out(model, x)
    prompt = _prompt(tok)
    ref_gen = _generate(model, tok, prompt) if task != "classification" else None
    fast = compress(model, make_config("runtime", engine=engine, weights="fp32"),
                    Context(tokenizer=tok, task=task))
    torch.testing.assert_close(_out(fast, x), ref, rtol=1e-4, atol=1e-4)
    if ref_gen is not None:
        assert fast.cache_shapes is not None  # decoding feeds one token per step
        assert torch.equal(_generate(fast, tok, prompt), ref_gen)
    save_model(fast, tok, tmp_path / "m")
    again = load_compressed(tmp_path / "m")
    assert type(again).__name__ == "RuntimeModel" and again.engine == engine
    torch.testing.assert_close(_out(again, x), _out(fast, x))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_quantized_weights_stay_close_and_get_smaller(engine, weights):
    if engine == "openvino":
        pytest.importorskip("nncf")
    model, tok = tiny_model("llama")
    x = sample_inputs("llama")
    ref = _out(model, x)
    ctx = Context(tokenizer=tok, task="causal-lm")
    fp32 = compress(tiny_model("llama")[0], make_config("runtime", engine=engine, weights="fp32"),
                    ctx)
    q = compress(model, make_config("runtime", engine=engine, weights=weights, group_size=16),
                 ctx)
    out = _out(q, x)
    rel = float((out - ref).norm() / ref.norm())
    assert rel < (0.02 if weights == "int8" else 0.15), rel
    assert q.compress_parameter_counts["bytes"] < fp32.compress_parameter_counts["bytes"]
    info = ctx.info["quant"]
    assert info["engine"] == engine and info["weights"] == weights and info["kv_cache"] is True


def test_fusion_is_recorded_for_an_encoder():
    model, tok = tiny_model("bert", classifier=True)
    ctx = Context(tokenizer=tok, task="classification")
    compress(model, make_config("runtime", weights="fp32"), ctx)
    fused = ctx.info["quant"]["fused"]["model"]
    assert fused.get("Attention", 0) == model.config.num_hidden_layers  # eager-attention export
    assert fused.get("SkipLayerNormalization", 0) >= model.config.num_hidden_layers


@pytest.mark.parametrize("key", ["bert-cls", "llama", "t5"])
def test_w8a8_quantizes_activations_stays_close_and_round_trips(key, tmp_path):
    import onnx

    family, kw, task = FAMILIES[key]
    model, tok = tiny_model(family, **kw)
    x = sample_inputs(family)
    ref = _out(model, x)
    ctx = Context(tokenizer=tok, task=task)
    fp32 = compress(tiny_model(family, **kw)[0], make_config("runtime", weights="fp32"), ctx)
    q = compress(model, make_config("runtime", weights="w8a8"), ctx)
    rel = float((_out(q, x) - ref).norm() / ref.norm())
    assert rel < 0.05, rel
    assert q.compress_parameter_counts["bytes"] < fp32.compress_parameter_counts["bytes"]
    ops = {n.op_type for n in onnx.load_from_string(q.graphs["model"]).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention"}, ops  # int8 activations
    if key == "bert-cls":
        assert "QAttention" in ops  # the fused attention is quantized too
    info = ctx.info["quant"]
    assert info["weights"] == "w8a8" and info["w8a8"]["per_channel"] is True
    save_model(q, tok, tmp_path / "m")
    torch.testing.assert_close(_out(load_compressed(tmp_path / "m"), x), _out(q, x))


def test_w8a8_is_refused_on_other_engines_in_one_line():
    from compress.errors import UserError

    model, tok = tiny_model("llama")
    with pytest.raises(UserError, match="w8a8.*onnxruntime") as err:
        compress(model, make_config("runtime", engine="openvino", weights="w8a8"),
                 Context(tokenizer=tok, task="causal-lm"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("family,task", [("llama", "causal-lm"), ("t5", "seq2seq")])
def test_min_new_tokens_holds_back_the_end_of_sequence(family, task):
    """The profiler asks for exactly N new tokens: an engine must not stop early."""
    model, tok = tiny_model(family)
    fast = compress(model, make_config("runtime", weights="fp32"), Context(tokenizer=tok, task=task))
    prompt = _prompt(tok)
    first = _generate(fast, tok, prompt)
    start = prompt["input_ids"].shape[1] if task == "causal-lm" else 1
    eos = int(first[0, start])  # pretend the first generated token ends the sequence
    with torch.no_grad():
        out = fast.generate(**prompt, max_new_tokens=4, min_new_tokens=4, eos_token_id=eos)
    assert out.shape[1] - start == 4
    with torch.no_grad():
        short = fast.generate(**prompt, max_new_tokens=4, eos_token_id=eos)
    assert short.shape[1] - start < 4 or bool((short[:, start:] == eos).any())


def test_llamacpp_engine_matches_eager_quantizes_and_round_trips(tmp_path):
    """llama.cpp on a GGUF file: F32 gives eager's logits and greedy tokens (KV cache in
    fp16, so close, not equal), Q8_0 / Q4_0 files are smaller and close, reload is exact.
    rope_theta is not llama.cpp's default: the GGUF file must carry it."""
    pytest.importorskip("llama_cpp")
    model, tok = tiny_model("llama", rope_theta=1e5)
    x = sample_inputs("llama")
    ref = _out(model, x)
    prompt = _prompt(tok)
    ref_gen = _generate(model, tok, prompt)
    ctx = Context(tokenizer=tok, task="causal-lm")
    f32 = compress(tiny_model("llama", rope_theta=1e5)[0], make_config("runtime", engine="llamacpp",
                                                       weights="fp32"), ctx)
    assert ctx.info["quant"]["gguf_types"] == {"F32": ctx.info["quant"]["gguf_types"]["F32"]}
    torch.testing.assert_close(_out(f32, x), ref, rtol=2e-2, atol=2e-2)
    assert torch.equal(_generate(f32, tok, prompt), ref_gen)  # left-padded rows included
    for weights, bound in (("int8", 0.02), ("int4", 0.15)):
        ctx = Context(tokenizer=tok, task="causal-lm")
        q = compress(tiny_model("llama", rope_theta=1e5)[0], make_config("runtime", engine="llamacpp",
                                                         weights=weights), ctx)
        rel = float((_out(q, x) - ref).norm() / ref.norm())
        assert rel < bound, (weights, rel)
        assert q.nbytes < f32.nbytes
        assert {"Q8_0": "int8", "Q4_0": "int4"}.keys() & ctx.info["quant"]["gguf_types"].keys()
    save_model(q, tok, tmp_path / "m")
    again = load_compressed(tmp_path / "m")
    assert again.engine == "llamacpp"
    torch.testing.assert_close(_out(again, x), _out(q, x))


def test_llamacpp_engine_refuses_an_encoder_in_one_line():
    from compress.errors import UserError

    model, tok = tiny_model("bert", classifier=True)
    with pytest.raises(UserError, match="decoder-only"):
        compress(model, make_config("runtime", engine="llamacpp", weights="int8"),
                 Context(tokenizer=tok, task="classification"))
