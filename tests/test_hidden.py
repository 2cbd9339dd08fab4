"""Hidden-dimension (residual stream) pruning: ``structured hidden_ratio=...`` (issue 19).

Tiny models: the pruned model states its new width in the config and reloads with plain
``from_pretrained`` to the same logits, for a config that names its head size (llama,
T5), one that reads an explicit head size written for it (qwen2) and one that scales its
embeddings by sqrt(hidden) (gemma); channels that carry nothing are the ones removed;
configs that derive the head size from the hidden size (BERT, GPT-2, OPT, BART) lose whole
heads with the channels and reload the same way; configs that derive other sizes from it
are refused in one line.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf

from compress import Context, UserError, compress, make_config
from compress.api import leftover_attachments
from compress.arch import arch_for, iter_blocks
from compress.calibration import CalibrationSpec
from compress.pruning.hidden import (
    activation_importance,
    keep_channels,
    plan_hidden,
    shrink_hidden,
)
from compress.recipes.structured import structured_widths
from compress.tiny import sample_inputs, tiny_model

TEXTS = ["The quick brown fox jumps over the lazy dog. Compression makes models smaller.",
         "The capital of France is Paris, and the capital of Italy is Rome.",
         "Numbers like 1, 2, 3, 10, 100 and 2026 appear in news text.",
         "Pruning removes weights; quantization rounds them; distillation trains a student."] * 4
PAIRS = [("the quick brown fox", "The quick brown fox."),
         ("paris is the capital of france", "Paris is the capital of France.")] * 8
SPEC = CalibrationSpec(sequences=4, seq_len=16)


def _ctx(family: str, tok) -> Context:
    seq2seq = arch_for(tiny_model(family)[0]).kind == "encoder-decoder"
    data = PAIRS if seq2seq else TEXTS
    return Context(tokenizer=tok, calibration=data, train=data,
                   task="seq2seq" if seq2seq else "causal-lm", calib=SPEC)


def _logits(model, family):
    with torch.inference_mode():
        return model.eval()(**sample_inputs(family)).logits


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "phi3", "mixtral", "t5"])
def test_hidden_pruning_reloads_with_plain_transformers(family, tmp_path):
    model, tok = tiny_model(family)
    plan = plan_hidden(model)
    before = sum(p.numel() for p in model.parameters())
    ctx = _ctx(family, tok)
    out = compress(model, make_config("structured", ffn_ratio=0.0, hidden_ratio=0.25), ctx)
    info = ctx.info["structured"]["hidden"]
    assert info == {"before": 32, "after": 24, "removed_fraction": 0.25}
    after = sum(p.numel() for p in out.parameters())
    assert before - after == 8 * plan.per_channel  # every hidden-axis tensor lost 8 channels
    for block in iter_blocks(out):
        for name, lin in block.linears.items():
            assert 24 in tuple(lin.weight.shape), (name, tuple(lin.weight.shape))
    assert leftover_attachments(out) == []
    assert torch.isfinite(_logits(out, family)).all()
    out.save_pretrained(tmp_path / "m")
    cls = tf.AutoModelForSeq2SeqLM if family == "t5" else tf.AutoModelForCausalLM
    again = cls.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(_logits(again, family), _logits(out, family), rtol=0, atol=1e-5)
    if family == "qwen2":  # its config derives head_dim from hidden / heads unless stated
        assert again.config.head_dim == 8 and again.config.hidden_size == 24


def test_channels_that_carry_nothing_go_first():
    """Channels zeroed in the embeddings and in every block's writers (attention o, FFN
    out) stay zero along the whole residual stream: activation importance ranks them
    last, and removing them changes the logits less than removing as many live ones."""
    model, tok = tiny_model("llama", num_hidden_layers=3)
    model.config.tie_word_embeddings = False
    dead = torch.tensor([1, 6, 11, 14, 19, 22, 27, 30])
    with torch.no_grad():
        model.get_input_embeddings().weight[:, dead] = 0
        for block in iter_blocks(model):
            for comp in ("attn_o", "ffn_out"):
                block.linears[comp].weight[dead, :] = 0
    dense = _logits(model, "llama")
    plan = plan_hidden(model)
    from compress.calibration import calibration_batches

    batches = calibration_batches(_ctx("llama", tok), model, recipe="structured")
    score = activation_importance(model, plan, batches)
    assert torch.equal(torch.sort(score).indices[:8].sort().values, dead)
    assert float(score[dead].max()) == 0.0 and float(score.min()) == 0.0

    changes = {}
    live = torch.tensor([0, 2, 3, 4, 5, 7, 8, 9])
    for name, gone in (("dead", dead), ("live", live)):
        m = copy.deepcopy(model)
        keep = torch.tensor([c for c in range(32) if c not in set(gone.tolist())])
        shrink_hidden(m, plan_hidden(m), keep)
        changes[name] = float((_logits(m, "llama") - dense).abs().mean())
    assert changes["dead"] < 0.5 * changes["live"], changes
    assert keep_channels(score, 8).tolist() == [c for c in range(32) if c not in dead.tolist()]

    # through the recipe, which rescales every RMS norm by the removed channels' share of
    # its input energy (here none, so by sqrt(32 / 24)): the same logits as dense
    ctx = _ctx("llama", tok)
    out = compress(copy.deepcopy(model), make_config("structured", ffn_ratio=0.0,
                                                     hidden_ratio=0.25), ctx)
    assert ctx.info["pruning_steps"][0]["norms_rescaled"] == 2 * 3 + 1
    plain = compress(copy.deepcopy(model), make_config(
        "structured", ffn_ratio=0.0, hidden_ratio=0.25, rescale_norms=False),
        _ctx("llama", tok))
    err = float((_logits(out, "llama") - dense).abs().max())
    err_plain = float((_logits(plain, "llama") - dense).abs().max())
    # what is left is the norms' epsilon, which the tiny model's small activations feel
    assert err < 1e-3 * float(dense.abs().max()) + 5e-4 and err < 0.05 * err_plain, (err, err_plain)


def test_a_one_plus_weight_norm_is_rescaled_as_such():
    """Gemma's RMS norm multiplies by (1 + w): its factor goes into that form."""
    from compress.pruning.hidden import _scale_output

    model, _ = tiny_model("gemma")
    norm = next(m for n, m in model.named_modules() if n.endswith("input_layernorm"))
    with torch.no_grad():
        norm.weight.normal_()
        x = torch.randn(2, 32)
        ref = norm(x)
        assert _scale_output(norm, 1.5, 32)
        torch.testing.assert_close(norm(x), 1.5 * ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family,why", [("bloom", "dense_h_to_4h"),  # FFN width = 4 x hidden
                                        ("stablelm", "k_proj")])  # grouped KV, head = hidden / heads
def test_a_config_that_derives_other_sizes_is_refused_in_one_line(family, why):
    model, tok = tiny_model(family)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=why) as err:
        compress(model, make_config("structured", ffn_ratio=0.0, hidden_ratio=0.25),
                 _ctx(family, tok))
    assert "\n" not in str(err.value) and "ffn_ratio" in str(err.value)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snapshot.items())


@pytest.mark.parametrize("family", ["bert", "gpt2", "opt", "bart", "bert2bert", "m2m_100",
                                    "falcon"])
def test_head_size_from_hidden_removes_whole_heads_and_reloads(family, tmp_path):
    """BERT, GPT-2, OPT, BART, bert2bert: head size = hidden / heads. A quarter of the
    channels leave with a quarter of the heads (the head size stays), the config states
    both, and plain ``from_pretrained`` rebuilds the model: same outputs, no private
    loader. M2M100's sinusoidal positions (not saved) are recomputed for the new width
    as a reload computes them; falcon shares one KV head, which stays."""
    model, tok = tiny_model(family)
    plan = plan_hidden(model)
    assert plan.coupled and plan.head_size == 8 and plan.multiple == 8
    ctx = _ctx(family, tok)
    out = compress(model, make_config("structured", ffn_ratio=0.0, hidden_ratio=0.25), ctx)
    info = ctx.info["structured"]
    assert info["hidden"] == {"before": 32, "after": 24, "removed_fraction": 0.25}
    assert info["reload"] == "from_pretrained"
    for geometry in info["heads"].values():
        assert geometry["after"]["heads"] == 3 and geometry["after"]["head_dim"] == 8
        assert geometry["after"]["kv_heads"] == (1 if family == "falcon" else 3)
    assert not hasattr(out.config, "compress_pruned_heads")
    assert leftover_attachments(out) == []
    out.save_pretrained(tmp_path / "m")
    again = type(out).from_pretrained(tmp_path / "m")
    x = sample_inputs(family)
    with torch.inference_mode():
        a, b = (getattr(o, "logits", None) if getattr(o, "logits", None) is not None
                else o.last_hidden_state for o in (out.eval()(**x), again.eval()(**x)))
    assert torch.isfinite(a).all()
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="heads_ratio=0"):
        compress(tiny_model(family)[0], make_config("structured", ffn_ratio=0.0,
                                                     hidden_ratio=0.25, heads_ratio=0.25), ctx)


def test_steps_keep_widths_the_config_accepts_and_recover_projects_them():
    model, tok = tiny_model("llama")  # 4 heads: every width a multiple of 4
    dense = copy.deepcopy(model)
    ctx = _ctx("llama", tok)
    out = compress(model, make_config("structured", ffn_ratio=0.0, hidden_ratio=0.375,
                                      iterative_steps=3), ctx)
    assert out.config.hidden_size == 20
    widths = [s["hidden"] for s in ctx.info["pruning_steps"] if "hidden" in s]
    assert len(widths) >= 2 and widths[-1] == 20 and widths == sorted(widths, reverse=True)
    assert all(w % 4 == 0 for w in widths), widths
    ctx.teacher = lambda: copy.deepcopy(dense)
    compress(out, make_config("recover", steps=4, seq_len=16, batch_size=4, eval_samples=4,
                              eval_every=2, warmup=0.0), ctx)
    proj = ctx.info["recover"]["projection"]
    assert (proj["from"], proj["to"]) == (20, 32)


def test_config_key_and_widths():
    default = make_config("structured")
    assert "hidden_ratio" not in default.to_dict()  # runs recorded before it keep their key
    cfg = make_config("structured", ffn_ratio=0.0, hidden_ratio=0.25)
    assert cfg.to_dict()["hidden_ratio"] == 0.25
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    assert structured_widths(cfg, {"hidden": 576, "ffn": 1536})["hidden"] == 432
    with pytest.raises(UserError, match="taylor"):
        make_config("structured", hidden_ratio=0.25, importance="taylor")


def test_a_second_size_equal_to_the_width_follows_only_when_it_must():
    """OPT builds embedding projections when word_embed_proj_dim differs from the hidden
    size: that attribute follows the width. max_position_embeddings, equal to it here by
    chance, does not: the position table loses hidden channels, not positions."""
    from compress.calibration import calibrates

    cfg = tf.OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                       num_attention_heads=4, max_position_embeddings=32,
                       word_embed_proj_dim=32)
    plan = plan_hidden(tf.OPTForCausalLM(cfg))
    assert [name for _, name in plan.config_attrs] == ["hidden_size", "word_embed_proj_dim"]
    assert plan.axes["model.decoder.embed_positions.weight"] == (1,)
    # norm rescaling reads calibration tokens even when channels are ranked by magnitude
    assert calibrates(make_config("structured", hidden_ratio=0.25, importance="magnitude"))
    assert not calibrates(make_config("structured", hidden_ratio=0.25, importance="magnitude",
                                      rescale_norms=False))


def test_an_unknown_matrix_inside_the_attention_stops_a_coupled_plan():
    """With heads leaving, a head-side axis and a hidden one both shrink by one head size;
    a matrix inside an attention module that discovery does not know (DeBERTa's
    relative-position projections) could be either, so the plan refuses it."""
    from compress.pruning.hidden_plan import _check_unknown_in_attention, _inner_axes

    model, _ = tiny_model("bert")
    inner = _inner_axes(model)
    name = "encoder.layer.0.attention.self.pos_key_proj.weight"
    before = {name: (32, 32), "encoder.layer.0.attention.output.LayerNorm.weight": (32,)}
    after = {name: (24, 24), "encoder.layer.0.attention.output.LayerNorm.weight": (24,)}
    with pytest.raises(UserError, match="pos_key_proj"):
        _check_unknown_in_attention(model, "bert", before, after, inner)
    del before[name], after[name]  # a norm vector alone is a hidden-side norm: accepted
    _check_unknown_in_attention(model, "bert", before, after, inner)


def test_a_probe_that_cannot_run_is_one_line_and_changes_nothing(monkeypatch):
    """Head surgery checks its result on probe inputs; a model those inputs do not fit
    (Whisper's audio encoder takes features, not tokens) gets one line, untouched."""
    import compress.pruning.surgery as surgery

    def broken(model):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    model, tok = tiny_model("bert")
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(surgery, "_probe", broken)
    with pytest.raises(UserError, match="probe forward fails") as err:
        compress(model, make_config("structured", ffn_ratio=0.0, hidden_ratio=0.25),
                 _ctx("bert", tok))
    assert "\n" not in str(err.value)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snapshot.items())
