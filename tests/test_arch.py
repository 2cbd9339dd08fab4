"""Architecture discovery: what it finds on tiny models of many families, and that no
recipe or eval module branches on a model family."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import CONFIG_MAPPING

from compress.arch import arch_for, describe, iter_blocks, qkv_rows
from compress.errors import UserError
from compress.tiny import MATRIX_FAMILIES, sample_inputs, tiny_model

ROOT = Path(__file__).resolve().parents[1]

#: quoted strings that equal a transformers model_type but name something else, by file.
NOT_FAMILIES = {
    "compress/zoo.py": {"gpt2", "distilbert"},  # hub alias names of models, not branches
    "compress/corpora.py": {"cvt"},  # a wiki template name
    "eval/report/schema.py": {"git"},  # the command
    "compress/quant/runtime.py": {"bert"},  # ONNX Runtime optimizer's fusion profile name
    # GGUF's tokenizer model id ("gpt2": byte-level BPE), and GGUF's own architecture ids:
    # the format lays tensors out per architecture, and llama.cpp stores q/k rows permuted
    # for these two (a fact of llama.cpp's converter, not of the model: not discoverable)
    "compress/export/gguf.py": {"gpt2", "llama", "mistral"},
}
#: the kind of model ("encoder-decoder") shares its spelling with one model_type.
KINDS = {"encoder-decoder"}


def _source_files():
    for top in ("compress", "eval"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("compress/arch/") or rel == "compress/tiny.py":
                continue  # discovery (and its override table) and the tiny-model builder
            yield rel, path.read_text(encoding="utf-8")


def test_no_module_outside_arch_names_a_model_family():
    families = set(CONFIG_MAPPING.keys()) - KINDS
    found = []
    for rel, text in _source_files():
        allowed = NOT_FAMILIES.get(rel, set())
        for i, line in enumerate(text.splitlines(), 1):
            if re.search(r"model_type\S*\s*(==|!=)\s*[\"']", line) or \
                    re.search(r"model_type\S*\s+(not\s+)?in\s+[(\[{]\s*[\"']", line) or \
                    re.search(r"[\"']\s*(==|!=)\s*\S*model_type", line):
                found.append(f"{rel}:{i}: compares model_type: {line.strip()}")
            for m in re.finditer(r"[\"']([A-Za-z0-9_\-]+)[\"']", line):
                if m.group(1) in families and m.group(1) not in allowed:
                    found.append(f"{rel}:{i}: names family {m.group(1)!r}: {line.strip()}")
    assert not found, "family-specific code outside compress/arch:\n" + "\n".join(found)


@pytest.mark.parametrize("family", list(MATRIX_FAMILIES))
def test_discovery_finds_blocks_attention_and_ffn(family):
    model, _ = tiny_model(family)
    spec = arch_for(model)
    kind = MATRIX_FAMILIES[family][0]
    assert spec.kind == kind
    assert spec.method == "traced"
    blocks = list(iter_blocks(model))
    assert blocks and {b.role for b in blocks} == (
        {"encoder", "decoder"} if kind == "encoder-decoder" else {kind})
    for b in blocks:
        self_attn = b.layout.self_attn
        assert self_attn is not None and self_attn.heads > 0 and self_attn.head_dim > 0
        assert b.layout.ffn is not None or b.layout.experts is not None
        if kind == "encoder-decoder" and b.role == "decoder":
            assert b.layout.cross_attn is not None
    facts = describe(model)
    assert facts["stacks"][0]["blocks"] >= 1


@pytest.mark.parametrize("family,layout", [("gpt2", "concat"), ("phi3", "concat"),
                                           ("gpt_neox", "per-head"), ("bloom", "per-head"),
                                           ("falcon", "concat")])
def test_fused_qkv_row_order_is_measured(family, layout):
    """Zeroing the rows the measured order gives head h's values zeroes exactly head h."""
    model, _ = tiny_model(family)
    spec = arch_for(model)
    block = next(iter_blocks(model))
    a = block.layout.self_attn
    assert a.qkv_layout == layout
    rows = qkv_rows(a.qkv_layout, "v", a.kv_heads - 1, a.heads, a.kv_heads, a.head_dim)
    assert rows.numel() == a.head_dim and spec.family == family


def test_gate_is_the_projection_through_the_activation():
    # Llama computes act(gate_proj(x)) * up_proj(x); discovery must not swap them
    model, _ = tiny_model("llama")
    ffn = next(iter_blocks(model)).layout.ffn
    assert ffn.parts["gate"].endswith("gate_proj") and ffn.parts["in"].endswith("up_proj")
    assert ffn.act_name == "silu" and ffn.path == "mlp"
    # phi3 fuses them; the gate half comes first
    ffn = next(iter_blocks(tiny_model("phi3")[0])).layout.ffn
    assert set(ffn.parts) == {"gate_up", "out"} and ffn.gate_up_order == "gate_first"


def test_split_ffn_and_cross_attention_found_by_trace():
    model, _ = tiny_model("bart")
    dec = [b for b in iter_blocks(model) if b.role == "decoder"][0]
    assert dec.layout.cross_attn.path == "encoder_attn"
    assert dec.layout.ffn.path == "" and dec.layout.ffn.act_path == "activation_fn"


def test_shared_weight_stack_counts_calls():
    model, _ = tiny_model("albert")
    stack = arch_for(model).stacks[0]
    assert stack.n_blocks == 1 and stack.calls_per_block == model.config.num_hidden_layers


def test_native_experts_are_linears_of_the_ffn():
    model, _ = tiny_model("mixtral")
    block = next(iter_blocks(model))
    exp = block.layout.experts
    assert exp.kind == "fused" and exp.n_experts == model.config.num_local_experts
    experts = {c: m for c, m in block.linears.items() if ".e" in c}
    assert len(experts) == 2 * exp.n_experts
    # a view: writing zeros through it reaches the 3-D parameter
    proxy = block.linears["ffn_out.e1"]
    with torch.no_grad():
        proxy.weight.zero_()
    assert block.module.mlp.experts.down_proj[1].abs().sum() == 0
    assert block.module.mlp.experts.down_proj[0].abs().sum() > 0
    assert "router" in block.linears or exp.router is not None


def test_discovery_is_cached_and_refreshed_when_the_model_changes():
    model, _ = tiny_model("llama")
    first = arch_for(model)
    assert arch_for(model) is first
    mlp = model.model.layers[0].mlp  # narrower FFN: a structural change
    mlp.down_proj = torch.nn.Linear(48, 32, bias=False)
    mlp.up_proj = torch.nn.Linear(32, 48, bias=False)
    mlp.gate_proj = torch.nn.Linear(32, 48, bias=False)
    again = arch_for(model)
    assert again is not first and again.layouts["model.layers.0"].ffn.intermediate == 48


def test_config_only_discovery_reads_names():
    from transformers import LlamaConfig

    spec = arch_for(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=64, vocab_size=64))
    assert spec.method == "names" and spec.kind == "decoder"
    lay = next(iter(spec.layouts.values()))
    assert lay.self_attn.heads == 4 and lay.self_attn.kv_heads == 2
    assert set(lay.ffn.parts) == {"gate", "in", "out"}


def test_recurrent_model_is_refused_in_one_line():
    from transformers import MambaConfig, MambaForCausalLM

    model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                         state_size=4, expand=2, conv_kernel=2))
    with pytest.raises(UserError, match="no list of repeated transformer blocks") as err:
        arch_for(model)
    assert "\n" not in str(err.value)


def test_probe_leaves_no_hooks_and_keeps_training_flags():
    model, _ = tiny_model("t5")
    model.train()
    arch_for(model)
    assert all(m.training for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    out = model(**sample_inputs("t5"))
    assert torch.isfinite(out.logits).all()
