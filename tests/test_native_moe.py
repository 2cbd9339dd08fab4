"""Native mixture-of-experts FFNs (fused 3-D expert tensors) are treated as FFN linears."""

from __future__ import annotations

import torch

from compress import Context, compress, make_config
from compress.arch import iter_blocks, routed_through_proxies
from compress.calibration import CalibrationSpec
from compress.tiny import sample_inputs, tiny_model

TEXTS = ["The quick brown fox jumps over the lazy dog. Compression makes models smaller.",
         "The capital of France is Paris, and the capital of Italy is Rome."] * 4


def _logits(model):
    with torch.inference_mode():
        return model(**sample_inputs("mixtral")).logits


def test_routing_through_the_views_computes_what_the_model_computes():
    model, _ = tiny_model("mixtral", width=64)
    ref = _logits(model)
    with routed_through_proxies(model) as switched:
        assert switched
        got = _logits(model)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(_logits(model), ref)  # the model's own implementation is back


def test_calibration_hooks_see_exactly_the_routed_tokens():
    model, _ = tiny_model("mixtral", width=64)
    block = next(iter_blocks(model))
    seen = {}

    def hook(name):
        def fn(_m, args):
            seen[name] = seen.get(name, 0) + args[0].shape[0]
        return fn

    proxies = {c: m for c, m in block.linears.items() if c.startswith("ffn_gate_up.e")}
    handles = [m.register_forward_pre_hook(hook(c)) for c, m in proxies.items()]
    try:
        with routed_through_proxies(model):
            _logits(model)
    finally:
        for h in handles:
            h.remove()
    batch, length = sample_inputs("mixtral")["input_ids"].shape
    # top-k routing: every token reaches exactly k experts
    assert sum(seen.values()) == batch * length * model.config.num_experts_per_tok


def test_gptq_calibrates_every_routed_expert():
    model, tok = tiny_model("mixtral", width=64)
    ctx = Context(tokenizer=tok, calibration=TEXTS, task="causal-lm", calib=CalibrationSpec(4, 16))
    compress(model, make_config("gptq", bits=4, granularity="group", group_size=16), ctx)
    uncalibrated = ctx.info["quant"].get("uncalibrated_layers") or []
    experts = [n for b in iter_blocks(model) for c, n in b.linear_names.items() if ".e" in c]
    assert experts and len(uncalibrated) < len(experts) / 2
