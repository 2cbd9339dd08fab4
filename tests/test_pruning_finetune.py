"""compress.finetune: full and LoRA recovery fine-tuning for every task, zeros kept at zero."""

from __future__ import annotations

import copy

import pytest
import torch

from compress import UserError
from compress.api import leftover_attachments
from compress.finetune import finetune, lora_module_names, zero_masks
from compress.tiny import sample_inputs, tiny_model

TEXTS = ["The quick brown fox jumps over the lazy dog. Compression makes models smaller."] * 12
PAIRS = [("the quick brown fox", "The quick brown fox."), ("paris is big", "Paris is big.")] * 6
LABELLED = [("good text here", 1), ("bad text there", 0), ("plain words", 2)] * 4

CASES = [
    ("gpt2", "causal-lm", TEXTS, {}),
    ("llama", "causal-lm", TEXTS, {}),
    ("bert", "classification", LABELLED, {"classifier": True}),
    ("t5", "seq2seq", PAIRS, {}),
    ("bart", "seq2seq", PAIRS, {}),
    ("bert2bert", "seq2seq", PAIRS, {}),
]


def _sparsify(model) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p[:, ::2] = 0
    return zero_masks(model)


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("family,task,data,kw", CASES, ids=[c[0] for c in CASES])
def test_finetune_trains_keeps_zeros_and_leaves_a_plain_model(family, task, data, kw, method):
    model, tok = tiny_model(family, **kw)
    zeros = _sparsify(model)
    before = copy.deepcopy(model)
    info: dict = {}
    out = finetune(model, tok, task, data, steps=4, method=method, batch_size=4, seq_len=16,
                   lr=1e-2, info=info)
    assert out is model
    assert not leftover_attachments(out) and not hasattr(out, "peft_config")
    assert not any("lora" in n for n, _ in out.named_parameters())
    params = dict(out.named_parameters())
    for name, zero in zeros.items():
        assert (params[name][zero] == 0).all(), f"{name}: a pruned weight came back"
    moved = [n for n, p in before.named_parameters() if not torch.equal(p, params[n])]
    assert moved, "fine-tuning changed nothing"
    if method == "lora":  # only the adapted linears move
        adapted = {f"{n}.weight" for n in lora_module_names(out, None)}
        assert set(moved) <= adapted
    assert info["method"] == method and info["steps"] == 4 and info["loss_last"] > 0
    assert all(p.grad is None for p in out.parameters())
    assert not out.training
    with torch.inference_mode():
        out(**sample_inputs(family))


def test_embedding_without_teacher_is_skipped_with_a_reason():
    model, tok = tiny_model("bert")
    info: dict = {}
    before = copy.deepcopy(model)
    finetune(model, tok, "embedding", TEXTS, steps=3, info=info)
    assert "teacher" in info["skipped"]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters(),
                                                 strict=True))


def test_embedding_with_teacher_distils():
    model, tok = tiny_model("bert")
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        model.encoder.layer[0].intermediate.dense.weight.mul_(0.5)
    info: dict = {}
    finetune(model, tok, "embedding", TEXTS, steps=3, method="full", lr=1e-3, seq_len=16,
             teacher=teacher, info=info)
    assert "skipped" not in info and info["steps"] == 3


def test_target_components_limit_lora():
    model, tok = tiny_model("llama")
    before = copy.deepcopy(model)
    finetune(model, tok, "causal-lm", TEXTS, steps=2, method="lora", seq_len=16, lr=1e-2,
             target_components=("ffn_out",))
    moved = {n for n, p in model.named_parameters()
             if not torch.equal(p, dict(before.named_parameters())[n])}
    assert moved and all(n.endswith("mlp.down_proj.weight") for n in moved)


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "qlora"}, "unknown fine-tuning method 'qlora'"),
    ({"target_components": ("ffn_up",)}, "unknown component 'ffn_up'"),
    ({"steps": -1}, "steps >= 0"),
])
def test_bad_arguments_are_clear(kwargs, match):
    model, tok = tiny_model("llama")
    args = {"steps": 1} | kwargs
    with pytest.raises(UserError, match=match):
        finetune(model, tok, "causal-lm", TEXTS, **args)


def test_missing_data_and_bad_pairs_are_clear():
    model, tok = tiny_model("llama")
    with pytest.raises(UserError, match="needs training data"):
        finetune(model, tok, "causal-lm", [], steps=1)
    cls, ctok = tiny_model("bert", classifier=True)
    with pytest.raises(UserError, match="integer label"):
        finetune(cls, ctok, "classification", PAIRS, steps=1)
