"""``recover``: distillation from the dense teacher after a structural step (issue 19).

Tiny models throughout: recover after ``depth`` lowers the held-out KL to the teacher and
uses the block map ``depth`` recorded; a narrower student trains its width projection;
the result has no hooks and reloads with ``from_pretrained``; no teacher is a one-line
error; ``depth`` then ``recover`` runs through ``eval.run``'s pipeline and the report holds
the recovery curve; ``moefy`` then ``recover`` trains the experts and the routers (the
routers not when told); and ``distill`` picks its student's blocks by measured importance
unless told to spread them.
"""

from __future__ import annotations

import copy

import pytest
import torch

from compress import Context, UserError, compress, make_config
from compress.api import leftover_attachments
from compress.arch import iter_blocks
from compress.calibration import CalibrationSpec
from compress.distill.student import BLOCK_MAP_ATTR
from compress.tiny import sample_inputs, tiny_model

TEXTS = ["The quick brown fox jumps over the lazy dog. Compression makes models smaller.",
         "The capital of France is Paris, and the capital of Italy is Rome.",
         "Numbers like 1, 2, 3, 10, 100 and 2026 appear in news text.",
         "Pruning removes weights; quantization rounds them; distillation trains a student."] * 8
LABELLED = [(t, i % 3) for i, t in enumerate(TEXTS)]
SPEC = CalibrationSpec(sequences=4, seq_len=16)
#: settings sized for seconds.
QUICK = dict(seq_len=16, batch_size=4, eval_samples=8, eval_every=5, warmup=0.0)


@pytest.fixture(autouse=True)
def _held_out_from_tiny_data(monkeypatch):
    """Held-out rows from the tiny texts, not the zoo's validation splits."""
    import compress.distill.data as dd

    monkeypatch.setattr(dd, "held_out_rows", lambda task: (
        LABELLED if task == "classification" else TEXTS)[:8])


def llama(layers=4, width=32, seed=0, identity=None):
    """A tiny llama whose blocks matter (weights x3: random blocks of std 0.02 barely
    change their input), optionally with block ``identity`` made an exact identity."""
    model, tok = tiny_model("llama", seed=seed, width=width, num_hidden_layers=layers)
    with torch.no_grad():
        for block in iter_blocks(model):
            for name, lin in block.linears.items():
                lin.weight.mul_(3.0)
                if block.index == identity and name in ("attn_o", "ffn_out"):
                    lin.weight.zero_()
    return model, tok


def context(tok, dense=None, data=TEXTS, task="causal-lm"):
    teacher = None if dense is None else (lambda: copy.deepcopy(dense))
    return Context(tokenizer=tok, calibration=data, train=data, task=task, calib=SPEC,
                   teacher=teacher)


def recover_cfg(**kw):
    return make_config("recover", **(QUICK | kw))


def test_recover_after_depth_lowers_held_out_kl_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = llama()
    dense = copy.deepcopy(model)
    ctx = context(tok, dense)
    student = compress(model, make_config("depth", blocks=2), ctx)
    out = compress(student, recover_cfg(steps=30, lr=3e-3), ctx)
    info = ctx.info["recover"]
    curve = info["recovery_curve"]
    assert [p["step"] for p in curve] == [0, 5, 10, 15, 20, 25, 30]
    tokens = [p["tokens"] for p in curve]
    assert tokens[0] == 0 and tokens == sorted(tokens) and tokens[-1] == info["tokens_seen"] > 0
    assert info["best_eval"]["loss"] < 0.6 * curve[0]["kl"], curve
    assert info["stopped_by"] == "steps" and info["minutes"] > 0 and info["loss_curve"]
    # a plain model: no hooks, no masks; from_pretrained gives the same logits
    assert leftover_attachments(out) == []
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in out.modules())
    out.save_pretrained(tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    x = sample_inputs("llama")
    with torch.inference_mode():
        torch.testing.assert_close(again(**x).logits, out(**x).logits, rtol=0, atol=1e-5)
    assert getattr(again.config, BLOCK_MAP_ATTR) == info["block_maps"]


def test_recover_reads_the_block_map_depth_recorded():
    """Block 1 is an exact identity, so depth drops it and student blocks 0, 1, 2 compute
    exactly what teacher blocks 0, 2, 3 do: the hidden-state loss of the first step is 0
    with the recorded map, and clearly not with the even spread 0, 1, 3."""
    model, tok = llama(identity=1)
    dense = copy.deepcopy(model)
    ctx = context(tok, dense)
    student = compress(model, make_config("depth", blocks=1), ctx)
    assert getattr(student.config, BLOCK_MAP_ATTR) == {"decoder": [0, 2, 3]}
    terms = {}
    for name, recorded in (("recorded", [0, 2, 3]), ("spread", [0, 1, 3])):
        s = copy.deepcopy(student)
        setattr(s.config, BLOCK_MAP_ATTR, {"decoder": recorded})
        compress(s, recover_cfg(steps=1, eval_every=1), ctx)
        assert ctx.info["recover"]["block_maps"] == {"decoder": recorded}
        assert ctx.info["recover"]["block_map_source"] == {"decoder": "recorded by depth"}
        terms[name] = ctx.info["recover"]["loss_curve"][0]
    assert terms["recorded"]["cos"] < 1e-5 and terms["recorded"]["kd"] < 1e-5, terms
    assert terms["spread"]["cos"] > 1e-3, terms


def test_a_narrower_student_trains_its_projection():
    teacher, tok = llama(layers=4, width=32)
    student, _ = llama(layers=2, width=16, seed=1)
    setattr(student.config, BLOCK_MAP_ATTR, {"decoder": [1, 3]})
    keys = set(student.state_dict())
    ctx = context(tok, teacher)
    out = compress(student, recover_cfg(steps=20, lr=3e-3, alpha_kd=0.0), ctx)
    info = ctx.info["recover"]
    assert info["block_maps"] == {"decoder": [1, 3]}
    proj = info["projection"]
    assert (proj["from"], proj["to"], proj["blocks"]) == (16, 32, 2)
    assert proj["weight_change"] > 1e-3
    cos = [p["cos"] for p in info["loss_curve"]]
    assert cos[-1] < 0.8 * cos[0], cos
    assert set(out.state_dict()) == keys  # the projections are not left on the student


def test_an_interrupted_recovery_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Checkpoints hold the student and its width projections: interrupted at step 3 and
    resumed, the student ends bit for bit where an uninterrupted run does."""
    import compress.distill.trainer as trainer

    teacher, tok = llama(layers=4, width=32)
    student0, _ = llama(layers=2, width=16, seed=1)
    setattr(student0.config, BLOCK_MAP_ATTR, {"decoder": [1, 3]})
    real = trainer.train

    def run(ckpt, interrupt=None, resume=False):
        def patched(*a, **k):
            if interrupt is not None:
                k["interrupt_at"] = lambda step: step == interrupt
            return real(*a, **k)

        monkeypatch.setattr(trainer, "train", patched)
        cfg = recover_cfg(steps=6, eval_every=2, lr=3e-3, keep_best=False,
                          checkpoint_dir=str(ckpt), resume=resume)
        return compress(copy.deepcopy(student0), cfg, context(tok, teacher))

    whole = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", interrupt=3)
    resumed = run(tmp_path / "b", resume=True)
    sd = resumed.state_dict()
    for k, v in whole.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_without_a_teacher_recover_is_one_line_error():
    model, tok = llama(layers=2)
    with pytest.raises(UserError) as err:
        compress(model, recover_cfg(steps=1), context(tok))
    assert "\n" not in str(err.value) and "--teacher" in str(err.value)


def test_a_teacher_of_another_model_is_refused():
    model, tok = llama(layers=2)
    other, _ = tiny_model("llama", num_hidden_layers=2, vocab_size=100)
    with pytest.raises(UserError, match="vocab_size"):
        compress(model, recover_cfg(steps=1), context(tok, other))


def test_recover_stops_at_its_token_budget():
    model, tok = llama(layers=2)
    ctx = context(tok, copy.deepcopy(model))
    compress(model, recover_cfg(steps=50, tokens=200), ctx)
    info = ctx.info["recover"]
    # 16-token windows, 4 per step: 64 tokens a step, 4 steps reach 200
    assert info["steps_planned"] == 4 and info["steps_done"] == 4
    assert 200 <= info["tokens_seen"] < 200 + 64


def test_pipeline_depth_then_recover_through_eval_run(tmp_path, monkeypatch):
    from eval.budget import family_of
    from eval.run import run_pipeline

    monkeypatch.setenv("COMPRESS_DENSE_CACHE", str(tmp_path / "dense"))
    model, tok = llama()
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    configs = [make_config("depth", blocks=1),
               recover_cfg(steps=4, eval_every=2, batch_size=2, lr=1e-3)]
    _, report = run_pipeline(str(tmp_path / "m"), configs, quick=True,
                             reports_dir=tmp_path / "r", calibration=SPEC)
    assert report["status"] == "ok", report.get("error")
    rec = report["info"]["recover"]
    assert [p["step"] for p in rec["recovery_curve"]] == [0, 2, 4]
    assert rec["recovery_curve"][-1]["tokens"] == rec["tokens_seen"] > 0
    assert rec["block_maps"]["decoder"] == report["info"]["depth"]["kept"]["decoder"]
    assert family_of(report) == "pruning"  # recovery adds no budget family of its own
    assert [s["recipe"] for s in report["pipeline"]] == ["depth", "recover"]


@pytest.mark.parametrize("train_routers", [True, False])
def test_moefy_then_recover_trains_the_experts_and_routers(train_routers):
    from compress.moe.layer import MoEFFN

    model, tok = tiny_model("bert", classifier=True, initializer_range=0.2)
    dense = copy.deepcopy(model)
    ctx = context(tok, dense, data=LABELLED, task="classification")
    moe_cfg = make_config("moefy", num_experts=4, active_fraction=0.5, router="learned",
                          router_steps=20, partition="weights", timing_rounds=0,
                          calibration_tokens=64)
    student = compress(model, moe_cfg, ctx)
    moes = [m for m in student.modules() if isinstance(m, MoEFFN)]
    assert moes
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    flags = {n: p.requires_grad for n, p in student.named_parameters()}
    out = compress(student, recover_cfg(steps=10, lr=1e-3, train_routers=train_routers), ctx)
    info = ctx.info["recover"]
    assert info["block_maps"] == {"encoder": [0, 1]}
    assert info["block_map_source"] == {"encoder": "identity (same depth)"}
    assert info["routers"]["weights"] > 0 and info["routers"]["trained"] == train_routers
    after = dict(out.named_parameters())
    experts = [n for n in before if n.rsplit(".", 1)[-1] in ("w_in", "w_out")]
    routers = [n for n in before if ".router." in n and n.rsplit(".", 1)[-1] == "weight"]
    assert experts and routers
    assert all(not torch.equal(before[n], after[n]) for n in experts)
    assert all(torch.equal(before[n], after[n]) != train_routers for n in routers)
    assert {n: p.requires_grad for n, p in after.items()} == flags  # as they were
    assert not any(m.router_grad for m in out.modules() if isinstance(m, MoEFFN))
    assert info["best_eval"]["loss"] <= info["initial_eval"]["loss"]
    assert "accuracy" in info["recovery_curve"][0]


@pytest.mark.parametrize("choice,kept", [("importance", [0, 1, 3]), ("spread", [0, 2, 3])])
def test_distill_keeps_the_most_important_blocks_by_default(choice, kept):
    """Block 2 is an exact identity: the measured choice leaves it out, DistilBERT's fixed
    spread for 4 -> 3 keeps it."""
    model, tok = llama(identity=2)
    ctx = context(tok)
    cfg = make_config("distill", student_layers=3, steps=0, layer_choice=choice,
                      **{k: v for k, v in QUICK.items() if k != "eval_every"})
    compress(model, cfg, ctx)
    assert ctx.info["distill"]["layer_maps"] == {"decoder": kept}
    assert ctx.info["distill"]["layer_choice"] == choice
    assert ("importance" in ctx.info["distill"]) == (choice == "importance")


def test_recover_command_line(tmp_path, capsys):
    from compress.recipes.recover import main
    from compress.saving import save_model

    model, tok = llama()
    model.save_pretrained(tmp_path / "dense")
    tok.save_pretrained(tmp_path / "dense")
    ctx = context(tok)
    save_model(compress(model, make_config("depth", blocks=1), ctx), tok, tmp_path / "pruned")
    assert main(["--model", str(tmp_path / "pruned"), "--teacher", str(tmp_path / "dense"),
                 "--out", str(tmp_path / "out"), "--steps", "2", "--seq-len", "16",
                 "--batch-size", "2", "--eval-samples", "4", "--eval-every", "1"]) == 0
    assert (tmp_path / "out" / "recover.json").exists()
    assert "recover:" in capsys.readouterr().out
